//! Market-data ingestion.
//!
//! In: Coinbase's WebSocket frames (and its REST products list for discovery). Out:
//! [`FeedEvent`]s on one bounded channel: trade batches for the candle engine, Coinbase's own
//! 5-minute candles for the cross-check, heartbeats, and the first subscribes, reconnects and
//! sequence gaps before or during which a window of trades may be missing. Sending waits when
//! the channel is full, so a slow engine slows the socket reads instead of losing trades.

pub mod coinbase;
pub mod health;
pub mod pacer;
pub mod shard;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{CoinbaseCredentials, Config};
use crate::model::{Candle, Trade};

pub use coinbase::manager::Feed;
pub use health::FeedHealth;

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
        products: Vec<String>,
        at: DateTime<Utc>,
    },
    /// A connection came back after a close or silence: trades of `products` between
    /// `disconnected_at` and now may be missing.
    Reconnected {
        connection: usize,
        products: Vec<String>,
        disconnected_at: DateTime<Utc>,
        reconnected_at: DateTime<Utc>,
    },
    /// Frames were lost on a connection (a `sequence_num` jump) between the frame received at
    /// `since` and the one received at `at`; it resubscribes.
    Gap {
        connection: usize,
        products: Vec<String>,
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

/// Reconnection backoff: exponential with jitter, reset after a healthy period.
#[derive(Debug, Clone, Copy)]
pub struct ReconnectPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// A connection up this long counts as healthy: the next failure starts from `base`.
    pub healthy_after: Duration,
}

impl ReconnectPolicy {
    /// Coinbase's production settings: 2 s base, 60 s cap, healthy after 30 s.
    pub const DEFAULT: ReconnectPolicy = ReconnectPolicy {
        base: Duration::from_secs(2),
        cap: Duration::from_secs(60),
        healthy_after: Duration::from_secs(30),
    };

    /// The delay before reconnect attempt `attempt` (0-based): "equal jitter", half fixed and
    /// half random, so delays grow monotonically while spreading reconnects out.
    pub fn delay(&self, attempt: u32, unit_random: f64) -> Duration {
        equal_jitter(self.base, self.cap, attempt, unit_random)
    }
}

/// Exponential backoff with "equal jitter": `base · 2^attempt` capped at `cap`, half of it
/// fixed and half random (`unit_random` in 0..=1). Shared by reconnects and sink retries.
pub fn equal_jitter(base: Duration, cap: Duration, attempt: u32, unit_random: f64) -> Duration {
    let full = base
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(cap);
    let half = full / 2;
    half + half.mul_f64(unit_random.clamp(0.0, 1.0))
}

/// Everything the feed needs to run.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    pub ws_url: String,
    pub rest_url: String,
    /// Explicit products; `None` discovers them from REST.
    pub products: Option<Vec<String>>,
    pub shard_index: u32,
    pub shard_count: u32,
    pub products_per_connection: usize,
    pub credentials: Option<CoinbaseCredentials>,
    pub reconnect: ReconnectPolicy,
    /// No frame for this long means a dead socket.
    pub silence_timeout: Duration,
    /// Least time between two connects (all connections together).
    pub connect_interval: Duration,
    /// Least time between two client messages (all connections together).
    pub message_interval: Duration,
    /// How often the products list is fetched again (discovery mode only).
    pub refresh_interval: Duration,
    /// Largest frame accepted; a bigger one is a protocol error and a reconnect.
    pub max_frame_bytes: usize,
    /// Capacity of the event channel the feed writes to.
    pub channel_capacity: usize,
}

impl FeedSettings {
    /// Settings from the configuration, with the production tunables.
    pub fn from_config(config: &Config) -> Self {
        FeedSettings {
            ws_url: config.coinbase_ws_url.clone(),
            rest_url: config.coinbase_rest_url.clone(),
            products: config.products.clone(),
            shard_index: config.shard_index,
            shard_count: config.shard_count,
            products_per_connection: config.products_per_connection,
            credentials: config.coinbase_credentials.clone(),
            reconnect: ReconnectPolicy::DEFAULT,
            silence_timeout: Duration::from_secs(10),
            // Coinbase allows 8 connects and 8 messages a second per IP: stay clear of both.
            connect_interval: Duration::from_millis(1_100),
            message_interval: Duration::from_millis(150),
            refresh_interval: Duration::from_secs(600),
            max_frame_bytes: 16 << 20,
            channel_capacity: 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_from_the_base_to_the_cap() {
        let p = ReconnectPolicy::DEFAULT;
        assert_eq!(p.delay(0, 1.0), Duration::from_secs(2));
        assert_eq!(p.delay(0, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(1, 1.0), Duration::from_secs(4));
        assert_eq!(p.delay(10, 1.0), Duration::from_secs(60));
        assert_eq!(p.delay(u32::MAX, 0.5), Duration::from_secs(45));
        // Below the cap, the least next delay is the greatest current one.
        for attempt in 0..4 {
            assert!(
                p.delay(attempt + 1, 0.0) >= p.delay(attempt, 1.0),
                "monotonic"
            );
        }
    }
}
