//! The simulator's frames, in the exact shape production Coinbase sends: key order, string
//! amounts, Go's times ([`crate::go_time`]), and no `client_id`.
//!
//! In: trades, five-minute aggregates of the markets, heartbeat counters, subscriptions. Out:
//! the frames' JSON text.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use spot_canvas_model::Trade;

use crate::go_time::{go_time, go_time_string};
use crate::market::Aggregate;

#[derive(Serialize)]
struct Envelope<'a, E> {
    channel: &'a str,
    timestamp: String,
    sequence_num: u64,
    events: E,
}

#[derive(Serialize)]
struct TradesEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    trades: &'a [WireTrade],
}

/// One trade as it goes on the wire: every field as text, so a fault can put anything there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WireTrade {
    pub product_id: String,
    pub trade_id: String,
    pub price: String,
    pub size: String,
    pub time: String,
    pub side: String,
}

impl WireTrade {
    pub fn of(t: &Trade) -> WireTrade {
        WireTrade {
            product_id: t.product_id.to_string(),
            trade_id: t.trade_id.to_string(),
            price: t.price.to_string(),
            size: t.size.to_string(),
            time: go_time(t.time),
            side: t.side.as_str().to_owned(),
        }
    }
}

#[derive(Serialize)]
struct CandlesEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    candles: Vec<WireCandle<'a>>,
}

#[derive(Serialize)]
struct WireCandle<'a> {
    start: String,
    high: String,
    low: String,
    open: String,
    close: String,
    volume: String,
    product_id: &'a str,
}

#[derive(Serialize)]
struct HeartbeatEvent {
    current_time: String,
    heartbeat_counter: u64,
}

#[derive(Serialize)]
struct SubscriptionsEvent<'a> {
    subscriptions: &'a BTreeMap<String, Vec<String>>,
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail; fall back to an empty object regardless.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

/// A `market_trades` frame; `trades` newest first.
pub fn market_trades(now: DateTime<Utc>, seq: u64, snapshot: bool, trades: &[Trade]) -> String {
    let wire: Vec<WireTrade> = trades.iter().map(WireTrade::of).collect();
    market_trades_wire(now, seq, snapshot, &wire)
}

/// A `market_trades` frame of trades already in wire form (one or several products).
pub fn market_trades_wire(
    now: DateTime<Utc>,
    seq: u64,
    snapshot: bool,
    trades: &[WireTrade],
) -> String {
    let event = TradesEvent {
        kind: if snapshot { "snapshot" } else { "update" },
        trades,
    };
    to_json(&Envelope {
        channel: "market_trades",
        timestamp: go_time(now),
        sequence_num: seq,
        events: [event],
    })
}

/// A `candles` frame of five-minute candles.
pub fn candles(
    now: DateTime<Utc>,
    seq: u64,
    snapshot: bool,
    candles: &[(&str, Aggregate)],
) -> String {
    let event = CandlesEvent {
        kind: if snapshot { "snapshot" } else { "update" },
        candles: candles
            .iter()
            .map(|(product_id, a)| WireCandle {
                start: a.start.to_string(),
                high: a.high.to_string(),
                low: a.low.to_string(),
                open: a.open.to_string(),
                close: a.close.to_string(),
                volume: a.volume.to_string(),
                product_id,
            })
            .collect(),
    };
    to_json(&Envelope {
        channel: "candles",
        timestamp: go_time(now),
        sequence_num: seq,
        events: [event],
    })
}

/// A `heartbeats` frame.
pub fn heartbeat(now: DateTime<Utc>, seq: u64, since_start: TimeDelta, counter: u64) -> String {
    to_json(&Envelope {
        channel: "heartbeats",
        timestamp: go_time(now),
        sequence_num: seq,
        events: [HeartbeatEvent {
            current_time: go_time_string(now, since_start),
            heartbeat_counter: counter,
        }],
    })
}

/// A `subscriptions` acknowledgement listing the connection's cumulative subscriptions.
pub fn subscriptions(
    now: DateTime<Utc>,
    seq: u64,
    subscriptions: &BTreeMap<String, Vec<String>>,
) -> String {
    to_json(&Envelope {
        channel: "subscriptions",
        timestamp: go_time(now),
        sequence_num: seq,
        events: [SubscriptionsEvent { subscriptions }],
    })
}

/// Coinbase's flat error frame.
pub fn error(message: &str) -> String {
    to_json(&serde_json::json!({ "type": "error", "message": message }))
}
