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
    #[error("frame is not UTF-8 (invalid byte at {0})")]
    Utf8(usize),
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

/// A frame's envelope. When `channel` comes before `events` (as Coinbase sends them), the
/// events are parsed straight into the channel's type in the same pass; otherwise they are
/// kept raw and parsed once the channel is known.
#[derive(Default)]
struct RawFrame<'a> {
    channel: Option<Cow<'a, str>>,
    kind: Option<Cow<'a, str>>,
    message: Option<Cow<'a, str>>,
    timestamp: Option<Cow<'a, str>>,
    sequence_num: Option<u64>,
    events: Option<RawEvents<'a>>,
}

enum RawEvents<'a> {
    Trades(Vec<RawTradesEvent<'a>>),
    Candles(Vec<RawCandlesEvent<'a>>),
    Heartbeats(Vec<RawHeartbeatEvent<'a>>),
    Subscriptions(Vec<RawSubscriptionsEvent>),
    Skipped,
    Raw(&'a RawValue),
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Channel,
    Type,
    Message,
    Timestamp,
    SequenceNum,
    Events,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Deserialize<'de> for RawFrame<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FrameVisitor;

        impl<'de> serde::de::Visitor<'de> for FrameVisitor {
            type Value = RawFrame<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a Coinbase frame object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut frame = RawFrame::default();
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Channel => {
                            frame.channel = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
                        }
                        Field::Type => {
                            frame.kind = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0)
                        }
                        Field::Message => {
                            frame.message = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
                        }
                        Field::Timestamp => {
                            frame.timestamp = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
                        }
                        Field::SequenceNum => frame.sequence_num = map.next_value()?,
                        Field::Events => {
                            frame.events = Some(match frame.channel.as_deref() {
                                Some("market_trades") => RawEvents::Trades(map.next_value()?),
                                Some("candles") => RawEvents::Candles(map.next_value()?),
                                Some("heartbeats") => RawEvents::Heartbeats(map.next_value()?),
                                Some("subscriptions") => {
                                    RawEvents::Subscriptions(map.next_value()?)
                                }
                                Some(_) => {
                                    map.next_value::<serde::de::IgnoredAny>()?;
                                    RawEvents::Skipped
                                }
                                None => RawEvents::Raw(map.next_value()?),
                            });
                        }
                        Field::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(frame)
            }
        }

        deserializer.deserialize_map(FrameVisitor)
    }
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
    // One UTF-8 check of the whole frame is cheaper than one per string.
    let text = std::str::from_utf8(bytes).map_err(|e| FrameError::Utf8(e.valid_up_to()))?;
    let raw: RawFrame<'_> = serde_json::from_str(text)?;
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
            let events = events_of("market_trades", raw.events, |e| match e {
                RawEvents::Trades(events) => Some(events),
                _ => None,
            })?;
            trades_body(events, received)?
        }
        "candles" => {
            let events = events_of("candles", raw.events, |e| match e {
                RawEvents::Candles(events) => Some(events),
                _ => None,
            })?;
            candles_body(events)?
        }
        "heartbeats" => {
            let events = events_of("heartbeats", raw.events, |e| match e {
                RawEvents::Heartbeats(events) => Some(events),
                _ => None,
            })?;
            heartbeat_body(events)?
        }
        "subscriptions" => {
            let events = events_of("subscriptions", raw.events, |e| match e {
                RawEvents::Subscriptions(events) => Some(events),
                _ => None,
            })?;
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

/// The events of a `channel` frame: parsed in the envelope's pass, or now from the raw text
/// when `events` came before `channel`.
fn events_of<'a, T: Deserialize<'a>>(
    channel: &'static str,
    events: Option<RawEvents<'a>>,
    typed: impl FnOnce(RawEvents<'a>) -> Option<Vec<T>>,
) -> Result<Vec<T>, FrameError> {
    let missing = FrameError::MissingField {
        channel,
        field: "events",
    };
    match events {
        None => Err(missing),
        Some(RawEvents::Raw(raw)) => Ok(serde_json::from_str(raw.get())?),
        Some(events) => typed(events).ok_or(missing),
    }
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

/// Parses an RFC 3339 time such as `2026-09-30T02:39:59.4104Z`. Coinbase's UTC form takes a
/// fast path; anything else (offsets, leap seconds, lower case) goes through chrono.
pub fn parse_time(field: &'static str, value: &str) -> Result<DateTime<Utc>, FrameError> {
    if let Some(time) = parse_utc_fast(value.as_bytes()) {
        return Ok(time);
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| FrameError::BadTime {
            field,
            value: value.to_owned(),
        })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` with 1 to 9 fraction digits; `None` for anything else.
fn parse_utc_fast(b: &[u8]) -> Option<DateTime<Utc>> {
    fn digits(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    }
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])? as i32;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let rest = &b[19..];
    let nanos = match rest {
        [b'Z'] => 0,
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            digits(fraction)? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(year, month, day)?;
    let time = chrono::NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(date.and_time(time).and_utc())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_time_path_agrees_with_chrono() {
        for text in [
            "2026-09-30T02:39:59.4104Z",
            "2026-09-30T02:39:59Z",
            "2026-09-30T02:39:53.788655130Z",
            "2024-02-29T23:59:59.999999999Z",
            "2000-01-01T00:00:00.1Z",
        ] {
            let chrono = DateTime::parse_from_rfc3339(text)
                .expect("valid")
                .with_timezone(&Utc);
            assert_eq!(parse_utc_fast(text.as_bytes()), Some(chrono), "{text}");
        }
        for slow in [
            "2026-09-30T02:39:59+00:00",
            "2026-09-30t02:39:59z",
            "2026-12-31T23:59:60Z",
            "2026-09-30T02:39:59.1234567890Z",
        ] {
            assert_eq!(parse_utc_fast(slow.as_bytes()), None, "{slow}");
        }
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-09-30T24:00:00Z",
        ] {
            assert!(parse_time("time", bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_time("time", "2026-09-30T04:39:59+02:00").expect("offset"),
            parse_time("time", "2026-09-30T02:39:59Z").expect("utc")
        );
    }
}
