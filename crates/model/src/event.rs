//! What the feed hands the candle engine: the contract between the two stages, kept here so
//! the engine imports nothing from the feed.

use chrono::{DateTime, Utc};

use super::{Candle, ProductId, Trade};

/// What the feed hands downstream.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    /// The trades of one frame.
    Trades(TradeBatch),
    /// Coinbase's own 5-minute candles (`candles` channel), for cross-checks.
    ExchangeCandles {
        connection: usize,
        received: DateTime<Utc>,
        candles: Vec<Candle>,
    },
    /// A heartbeat: the connection is alive; `time` is the exchange's envelope time.
    Heartbeat {
        connection: usize,
        time: Option<DateTime<Utc>>,
    },
    /// `products` were subscribed for the first time (a connection's first subscribe, or
    /// products added later): their trades before `at` were not seen.
    Subscribed {
        connection: usize,
        products: Vec<ProductId>,
        at: DateTime<Utc>,
    },
    /// `products` are no longer ingested (delisted, disabled or refused): what is held for
    /// them can be forgotten.
    Unsubscribed { products: Vec<ProductId> },
    /// A connection came back after a close or silence: trades of `products` between
    /// `disconnected_at` and now may be missing.
    Reconnected {
        connection: usize,
        products: Vec<ProductId>,
        disconnected_at: DateTime<Utc>,
        reconnected_at: DateTime<Utc>,
    },
    /// Frames may be missing on a connection between the frame received at `since` and the
    /// one received at `at`: a `sequence_num` jump (`got > expected`), a sequence going
    /// backwards (`got < expected`, a new sequence), or a refused subscribe of some of its
    /// products (`got == expected`: the others are subscribed again). It resubscribes.
    Gap {
        connection: usize,
        products: Vec<ProductId>,
        expected: u64,
        got: u64,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    },
}

/// The trades of one `market_trades` frame, as sent (snapshots newest first).
#[derive(Debug, Clone, PartialEq)]
pub struct TradeBatch {
    pub connection: usize,
    pub snapshot: bool,
    pub received: DateTime<Utc>,
    pub trades: Vec<Trade>,
}
