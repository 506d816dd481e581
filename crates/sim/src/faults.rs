//! Fault injection: faults armed through the admin API (`POST /sim/faults`) or the command
//! line (`--fault JSON`, repeatable), applied by the WebSocket connections they target.
//!
//! A fault targets every connection (open now and opened later, each once), the next
//! connection to see it, or one connection by id. It fires once the targeted connection has
//! sent `after_frames` more frames after seeing it.
//!
//! The JSON is the [`FaultRequest`]: `{"scope": "all"|"next"|<connection id>, "after_frames":
//! n, "kind": "<kind>", ...fields of the kind}`, for example
//! `{"kind":"bad_trade","defect":"zero_price"}`, `{"kind":"absurd_size"}`,
//! `{"kind":"future_trade"}`, `{"kind":"refuse_subscribe","product_id":"ETH-USD"}` or
//! `{"kind":"rewind_sequence","count":5}`.
//!
//! Trades a fault adds to a frame (malformed, absurd, future, or of a product never listed) are
//! **not** exchange trades:
//! they are left out of the trade log, the snapshots and the REST candles, and recorded in the
//! [`InjectedLog`] instead (`GET /sim/injected-trades`), so a test aggregates the trade log
//! and gets exactly the normal trades. Each takes a trade id of its product's own sequence,
//! so it never collides with a real trade.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Close with this code (1000 normal, 1001 going away, ...).
    Close { code: u16 },
    /// Drop the TCP connection without a close frame (the client sees 1006).
    Drop,
    /// Stop sending while keeping the socket open, for `secs` (forever when absent). Frames
    /// that would have been sent meanwhile are lost, as their sequence numbers show.
    Stall {
        #[serde(default)]
        secs: Option<u64>,
    },
    /// Send no `heartbeats` frames for `secs` (forever when absent) while the other channels
    /// go on: a connection whose heartbeats stop.
    MuteHeartbeats {
        #[serde(default)]
        secs: Option<u64>,
    },
    /// Skip `count` sequence numbers.
    SkipSequence { count: u64 },
    /// Send one malformed (truncated) frame. It names no `sequence_num`, so it takes none.
    Malformed,
    /// Send one `heartbeats` frame that takes the next `sequence_num` but whose
    /// `heartbeat_counter` is not a number: well-formed JSON with a bad body, as a client must
    /// count without taking it for a gap.
    BadHeartbeat,
    /// Send one frame of `bytes` bytes.
    Oversized { bytes: usize },
    /// Send the next trades update twice (same trade ids).
    Duplicate,
    /// Put one malformed trade among the trades of the next `market_trades` update frame.
    BadTrade { defect: TradeDefect },
    /// Put one trade of an absurd size (by default `Decimal::MAX`,
    /// `79228162514264337593543950335`) among the trades of the next update frame.
    AbsurdSize {
        #[serde(default)]
        size: Option<String>,
    },
    /// Put one trade stamped far in the future (by default `2100-01-01T00:00:00Z`) among the
    /// trades of the next update frame.
    FutureTrade {
        #[serde(default)]
        time: Option<String>,
    },
    /// Put one trade of a product that was never listed nor subscribed (by default
    /// [`UNLISTED_PRODUCT`]; any string, odd ids too) among the trades of the next
    /// `market_trades` update frame.
    UnlistedTrade {
        #[serde(default)]
        product_id: Option<String>,
    },
    /// From now on, refuse every subscribe of this connection that names `product_id` with an
    /// error frame, as Coinbase does for an unknown or delisted product (the whole subscribe
    /// message is refused).
    RefuseSubscribe { product_id: String },
    /// The next frame's `sequence_num` is `count` lower than it should be (at least 0); the
    /// counter goes on from there.
    RewindSequence { count: u64 },
}

/// What is wrong with a [`FaultKind::BadTrade`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TradeDefect {
    /// `"price": "0"`.
    ZeroPrice,
    /// A size below zero, e.g. `"size": "-0.5"`.
    NegativeSize,
    /// A price in exponent notation, `"price": "1e5"`.
    Exponent,
    /// `"side": "HOLD"`.
    UnknownSide,
    /// A trade id that is not a number, e.g. `"trade_id": "x123"`.
    NonNumericId,
    /// `"price": ""`.
    EmptyPrice,
}

impl TradeDefect {
    pub const ALL: [TradeDefect; 6] = [
        TradeDefect::ZeroPrice,
        TradeDefect::NegativeSize,
        TradeDefect::Exponent,
        TradeDefect::UnknownSide,
        TradeDefect::NonNumericId,
        TradeDefect::EmptyPrice,
    ];
}

/// The default size of [`FaultKind::AbsurdSize`]: `Decimal::MAX`.
pub const ABSURD_SIZE: &str = "79228162514264337593543950335";
/// The default product of [`FaultKind::UnlistedTrade`]: never listed.
pub const UNLISTED_PRODUCT: &str = "GHOST-USD";
/// The default time of [`FaultKind::FutureTrade`].
pub const FUTURE_TIME: &str = "2100-01-01T00:00:00Z";

/// One trade a fault added to a frame, as sent (all fields as on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InjectedTrade {
    /// The connection that sent it.
    pub connection: u64,
    /// `bad_trade:<defect>`, `absurd_size`, `future_trade` or `unlisted_trade`.
    pub fault: String,
    pub product_id: String,
    pub trade_id: String,
    pub price: String,
    pub size: String,
    pub side: String,
    pub time: String,
}

/// Every trade faults added to frames, in the order sent.
#[derive(Debug, Default)]
pub struct InjectedLog {
    trades: Mutex<Vec<InjectedTrade>>,
}

impl InjectedLog {
    pub fn record(&self, trade: InjectedTrade) {
        self.trades
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(trade);
    }

    pub fn all(&self) -> Vec<InjectedTrade> {
        self.trades
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Which connections a fault targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scope {
    Named(ScopeName),
    Connection(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeName {
    All,
    Next,
}

impl Default for Scope {
    fn default() -> Self {
        Scope::Named(ScopeName::All)
    }
}

/// A fault as requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRequest {
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub after_frames: u64,
    #[serde(flatten)]
    pub kind: FaultKind,
}

#[derive(Debug)]
struct Armed {
    id: u64,
    request: FaultRequest,
    claimed: bool,
}

/// The faults armed so far.
#[derive(Debug, Default)]
pub struct FaultBoard {
    armed: Mutex<Vec<Armed>>,
    /// Bumped on every arm, so connections poll the board only when it changed.
    generation: AtomicU64,
}

impl FaultBoard {
    /// Arms a fault; returns its id.
    pub fn arm(&self, request: FaultRequest) -> u64 {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let id = armed.len() as u64 + 1;
        armed.push(Armed {
            id,
            request,
            claimed: false,
        });
        self.generation.fetch_add(1, Ordering::Release);
        id
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Faults for connection `conn` with an id above `seen`, claiming `next` faults. Returns
    /// them with the highest id looked at.
    pub fn take_new(&self, conn: u64, seen: u64) -> (Vec<FaultRequest>, u64) {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut last = seen;
        for fault in armed.iter_mut().filter(|f| f.id > seen) {
            last = fault.id;
            let applies = match fault.request.scope {
                Scope::Named(ScopeName::All) => true,
                Scope::Named(ScopeName::Next) => !std::mem::replace(&mut fault.claimed, true),
                Scope::Connection(id) => id == conn,
            };
            if applies {
                out.push(fault.request.clone());
            }
        }
        (out, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_json() {
        let r: FaultRequest =
            serde_json::from_str(r#"{"scope":"next","after_frames":5,"kind":"close","code":1001}"#)
                .expect("valid");
        assert_eq!(r.scope, Scope::Named(ScopeName::Next));
        assert_eq!(r.kind, FaultKind::Close { code: 1001 });
        let r: FaultRequest = serde_json::from_str(r#"{"scope":3,"kind":"stall"}"#).expect("valid");
        assert_eq!(r.scope, Scope::Connection(3));
        assert_eq!(r.kind, FaultKind::Stall { secs: None });
        assert!(serde_json::from_str::<FaultRequest>(r#"{"kind":"explode"}"#).is_err());
        let r: FaultRequest =
            serde_json::from_str(r#"{"kind":"bad_trade","defect":"non_numeric_id"}"#)
                .expect("valid");
        assert_eq!(
            r.kind,
            FaultKind::BadTrade {
                defect: TradeDefect::NonNumericId
            }
        );
        let r: FaultRequest = serde_json::from_str(r#"{"kind":"absurd_size"}"#).expect("valid");
        assert_eq!(r.kind, FaultKind::AbsurdSize { size: None });
        let r: FaultRequest =
            serde_json::from_str(r#"{"kind":"refuse_subscribe","product_id":"ETH-USD"}"#)
                .expect("valid");
        assert_eq!(
            r.kind,
            FaultKind::RefuseSubscribe {
                product_id: "ETH-USD".into()
            }
        );
        let r: FaultRequest =
            serde_json::from_str(r#"{"kind":"rewind_sequence","count":3}"#).expect("valid");
        assert_eq!(r.kind, FaultKind::RewindSequence { count: 3 });
    }

    #[test]
    fn next_faults_go_to_one_connection_and_all_faults_to_every_one() {
        let board = FaultBoard::default();
        board.arm(FaultRequest {
            scope: Scope::Named(ScopeName::Next),
            after_frames: 0,
            kind: FaultKind::Drop,
        });
        board.arm(FaultRequest {
            scope: Scope::Named(ScopeName::All),
            after_frames: 0,
            kind: FaultKind::Malformed,
        });
        board.arm(FaultRequest {
            scope: Scope::Connection(2),
            after_frames: 0,
            kind: FaultKind::Duplicate,
        });
        let (first, last) = board.take_new(1, 0);
        assert_eq!(first.len(), 2);
        assert_eq!(last, 3);
        let (second, _) = board.take_new(2, 0);
        let kinds: Vec<_> = second.into_iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec![FaultKind::Malformed, FaultKind::Duplicate]);
        assert!(board.take_new(1, last).0.is_empty());
    }
}
