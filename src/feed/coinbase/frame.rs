//! Parser for frames of Coinbase's Advanced Trade market-data WebSocket.
//!
//! In: the raw bytes of one text frame and the time it was read. Out: a [`Frame`] with exact
//! decimals and parsed times, or a [`FrameError`] that says what was wrong. Unknown channels
//! and event types are counted and skipped, never an error: Coinbase may add them at any time.
//! Tolerant where production differs from the docs: `client_id` may be absent,
//! `heartbeat_counter` may be a number or a string, `current_time` is Go's time format and is
//! kept as text.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::{Candle, Granularity, Side, Trade, TradeId};

/// One parsed frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Per-connection counter across all channels; absent on error frames.
    pub sequence_num: Option<u64>,
    /// The envelope's send time; absent on error frames.
    pub timestamp: Option<DateTime<Utc>>,
    pub body: FrameBody,
}

/// What a frame carries.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameBody {
    /// `market_trades`: a snapshot (last 100 trades per product, newest first) or an update.
    MarketTrades {
        /// At least one event of the frame was a snapshot.
        snapshot: bool,
        trades: Vec<Trade>,
    },
    /// `candles`: Coinbase's own 5-minute candles (no trade count, no buy volume).
    Candles { candles: Vec<Candle> },
    /// `heartbeats`.
    Heartbeat {
        counter: u64,
        /// Go's `time.String()` text, kept verbatim.
        current_time: String,
    },
    /// `subscriptions`: the connection's cumulative subscriptions, channel → product ids.
    Subscriptions {
        subscriptions: BTreeMap<String, Vec<String>>,
    },
    /// A flat `{"type":"error","message":...}` frame.
    Error { message: String },
    /// A channel the service does not consume (`l2_data`, `ticker`, ...): skipped.
    Skipped { channel: String },
}

/// Why a frame could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("frame has neither a `channel` nor a `type` field")]
    NoChannel,
    #[error("{channel} frame is missing `{field}`")]
    MissingField {
        channel: &'static str,
        field: &'static str,
    },
    #[error("field `{field}` is not an exact decimal: {value:?}")]
    BadDecimal { field: &'static str, value: String },
    #[error("field `{field}` is not an RFC 3339 time: {value:?}")]
    BadTime { field: &'static str, value: String },
    #[error("field `{field}` is not valid: {value:?}")]
    BadValue { field: &'static str, value: String },
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(default)]
    sequence_num: Option<u64>,
    #[serde(borrow, default)]
    events: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawTradesEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    trades: Vec<RawTrade<'a>>,
}

#[derive(Deserialize)]
struct RawTrade<'a> {
    #[serde(borrow)]
    trade_id: Cow<'a, str>,
    #[serde(borrow)]
    product_id: Cow<'a, str>,
    #[serde(borrow)]
    price: Cow<'a, str>,
    #[serde(borrow)]
    size: Cow<'a, str>,
    #[serde(borrow)]
    side: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawCandlesEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    candles: Vec<RawWsCandle<'a>>,
}

#[derive(Deserialize)]
struct RawWsCandle<'a> {
    #[serde(borrow)]
    start: Cow<'a, str>,
    #[serde(borrow)]
    high: Cow<'a, str>,
    #[serde(borrow)]
    low: Cow<'a, str>,
    #[serde(borrow)]
    open: Cow<'a, str>,
    #[serde(borrow)]
    close: Cow<'a, str>,
    #[serde(borrow)]
    volume: Cow<'a, str>,
    #[serde(borrow)]
    product_id: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawHeartbeatEvent<'a> {
    #[serde(borrow, default)]
    current_time: Option<Cow<'a, str>>,
    heartbeat_counter: NumberOrString<'a>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString<'a> {
    Number(u64),
    #[serde(borrow)]
    String(Cow<'a, str>),
}

#[derive(Deserialize)]
struct RawSubscriptionsEvent {
    subscriptions: BTreeMap<String, Vec<String>>,
}

/// Parses one frame read at `received`.
pub fn parse_frame(bytes: &[u8], received: DateTime<Utc>) -> Result<Frame, FrameError> {
    let raw: RawFrame<'_> = serde_json::from_slice(bytes)?;
    let Some(channel) = raw.channel.as_deref() else {
        return match raw.kind.as_deref() {
            Some("error") => Ok(Frame {
                sequence_num: raw.sequence_num,
                timestamp: None,
                body: FrameBody::Error {
                    message: raw.message.map(Cow::into_owned).unwrap_or_default(),
                },
            }),
            Some(other) => {
                count_skipped("type", other);
                Ok(Frame {
                    sequence_num: raw.sequence_num,
                    timestamp: None,
                    body: FrameBody::Skipped {
                        channel: other.to_owned(),
                    },
                })
            }
            None => Err(FrameError::NoChannel),
        };
    };
    let timestamp = raw
        .timestamp
        .as_deref()
        .map(|t| parse_time("timestamp", t))
        .transpose()?;
    let body = match channel {
        "market_trades" => {
            let events = events_of::<RawTradesEvent<'_>>("market_trades", raw.events)?;
            trades_body(events, received)?
        }
        "candles" => {
            let events = events_of::<RawCandlesEvent<'_>>("candles", raw.events)?;
            candles_body(events)?
        }
        "heartbeats" => {
            let events = events_of::<RawHeartbeatEvent<'_>>("heartbeats", raw.events)?;
            heartbeat_body(events)?
        }
        "subscriptions" => {
            let events = events_of::<RawSubscriptionsEvent>("subscriptions", raw.events)?;
            let mut subscriptions = BTreeMap::new();
            for event in events {
                subscriptions.extend(event.subscriptions);
            }
            FrameBody::Subscriptions { subscriptions }
        }
        other => {
            count_skipped("channel", other);
            FrameBody::Skipped {
                channel: other.to_owned(),
            }
        }
    };
    let sequence_num = match (&body, raw.sequence_num) {
        (FrameBody::Skipped { .. }, seq) => seq,
        (_, Some(seq)) => Some(seq),
        (_, None) => {
            return Err(FrameError::MissingField {
                channel: channel_name(&body),
                field: "sequence_num",
            });
        }
    };
    Ok(Frame {
        sequence_num,
        timestamp,
        body,
    })
}

fn channel_name(body: &FrameBody) -> &'static str {
    match body {
        FrameBody::MarketTrades { .. } => "market_trades",
        FrameBody::Candles { .. } => "candles",
        FrameBody::Heartbeat { .. } => "heartbeats",
        FrameBody::Subscriptions { .. } => "subscriptions",
        FrameBody::Error { .. } => "error",
        FrameBody::Skipped { .. } => "skipped",
    }
}

fn count_skipped(what: &'static str, name: &str) {
    metrics::counter!("spot_canvas_feed_skipped_total", "what" => what).increment(1);
    tracing::trace!(what, name, "skipping unsupported frame part");
}

fn events_of<'a, T: Deserialize<'a>>(
    channel: &'static str,
    events: Option<&'a RawValue>,
) -> Result<Vec<T>, FrameError> {
    let events = events.ok_or(FrameError::MissingField {
        channel,
        field: "events",
    })?;
    Ok(serde_json::from_str(events.get())?)
}

fn trades_body(
    events: Vec<RawTradesEvent<'_>>,
    received: DateTime<Utc>,
) -> Result<FrameBody, FrameError> {
    let mut snapshot = false;
    let mut trades = Vec::with_capacity(events.iter().map(|e| e.trades.len()).sum());
    for event in events {
        match event.kind.as_ref() {
            "snapshot" => snapshot = true,
            "update" => {}
            other => {
                count_skipped("event_type", other);
                continue;
            }
        }
        for raw in event.trades {
            trades.push(trade_from_raw(raw, received)?);
        }
    }
    Ok(FrameBody::MarketTrades { snapshot, trades })
}

fn trade_from_raw(raw: RawTrade<'_>, received: DateTime<Utc>) -> Result<Trade, FrameError> {
    let trade_id = raw
        .trade_id
        .parse::<TradeId>()
        .map_err(|_| FrameError::BadValue {
            field: "trade_id",
            value: raw.trade_id.clone().into_owned(),
        })?;
    let side = match raw.side.as_ref() {
        "BUY" => Side::Buy,
        "SELL" => Side::Sell,
        other => {
            return Err(FrameError::BadValue {
                field: "side",
                value: other.to_owned(),
            });
        }
    };
    if raw.product_id.is_empty() {
        return Err(FrameError::BadValue {
            field: "product_id",
            value: String::new(),
        });
    }
    Ok(Trade {
        product_id: raw.product_id.into_owned(),
        trade_id,
        price: parse_positive_decimal("price", &raw.price)?,
        size: parse_positive_decimal("size", &raw.size)?,
        side,
        time: parse_time("time", &raw.time)?,
        received,
    })
}

fn candles_body(events: Vec<RawCandlesEvent<'_>>) -> Result<FrameBody, FrameError> {
    let mut candles = Vec::new();
    for event in events {
        if !matches!(event.kind.as_ref(), "snapshot" | "update") {
            count_skipped("event_type", &event.kind);
            continue;
        }
        for raw in event.candles {
            let start = parse_unix_seconds("start", &raw.start)?;
            candles.push(Candle {
                product_id: raw.product_id.into_owned(),
                granularity: Granularity::FiveMinutes,
                start,
                open: parse_decimal("open", &raw.open)?,
                high: parse_decimal("high", &raw.high)?,
                low: parse_decimal("low", &raw.low)?,
                close: parse_decimal("close", &raw.close)?,
                volume: parse_decimal("volume", &raw.volume)?,
                buy_volume: None,
                trade_count: None,
            });
        }
    }
    Ok(FrameBody::Candles { candles })
}

fn heartbeat_body(events: Vec<RawHeartbeatEvent<'_>>) -> Result<FrameBody, FrameError> {
    let event = events
        .into_iter()
        .next_back()
        .ok_or(FrameError::MissingField {
            channel: "heartbeats",
            field: "events[0]",
        })?;
    let counter = match event.heartbeat_counter {
        NumberOrString::Number(n) => n,
        NumberOrString::String(s) => s.parse().map_err(|_| FrameError::BadValue {
            field: "heartbeat_counter",
            value: s.into_owned(),
        })?,
    };
    Ok(FrameBody::Heartbeat {
        counter,
        current_time: event.current_time.map(Cow::into_owned).unwrap_or_default(),
    })
}

/// Parses a decimal string exactly: a value that would need rounding to fit is an error,
/// never silently rounded.
pub fn parse_decimal(field: &'static str, value: &str) -> Result<Decimal, FrameError> {
    Decimal::from_str_exact(value).map_err(|_| FrameError::BadDecimal {
        field,
        value: value.to_owned(),
    })
}

fn parse_positive_decimal(field: &'static str, value: &str) -> Result<Decimal, FrameError> {
    let d = parse_decimal(field, value)?;
    if d.is_sign_negative() || d.is_zero() {
        return Err(FrameError::BadValue {
            field,
            value: value.to_owned(),
        });
    }
    Ok(d)
}

/// Parses an RFC 3339 time such as `2026-09-30T02:39:59.4104Z`.
pub fn parse_time(field: &'static str, value: &str) -> Result<DateTime<Utc>, FrameError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| FrameError::BadTime {
            field,
            value: value.to_owned(),
        })
}

/// Parses a string of Unix seconds such as a candle's `start`.
pub fn parse_unix_seconds(field: &'static str, value: &str) -> Result<DateTime<Utc>, FrameError> {
    value
        .parse::<i64>()
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .ok_or_else(|| FrameError::BadTime {
            field,
            value: value.to_owned(),
        })
}
