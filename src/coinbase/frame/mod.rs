//! Parser for frames of Coinbase's Advanced Trade market-data WebSocket.
//!
//! In: the raw bytes of one text frame and the time it was read. Out: a [`Frame`] with exact
//! decimals and parsed times, or a [`FrameError`] that says what was wrong with the frame as a
//! whole. A malformed trade costs only that trade: it is listed as a [`RejectedTrade`] beside
//! the frame's good trades (module `trades`); likewise a malformed candle ([`RejectedCandle`]),
//! and an unreadable envelope `timestamp` costs only the timestamp. When a frame is refused,
//! [`frame_sequence`] still reads its `sequence_num`, so the connection can count the number it
//! took. Unknown channels
//! and event types are counted and skipped, never an error: Coinbase may add them at any time.
//! Tolerant where production differs from the docs: `client_id` may be absent,
//! `heartbeat_counter` may be a number or a string, `current_time` is Go's time format and is
//! kept as text.

mod body;
mod envelope;
mod trades;
mod values;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use self::body::{candles_body, heartbeat_body};
use self::envelope::{RawEvents, RawFrame};
use self::trades::trades_body;
use crate::model::{Candle, Trade};

pub use self::body::RejectedCandle;
pub use self::trades::RejectedTrade;
pub use self::values::{parse_decimal, parse_time, parse_unix_seconds};

/// One parsed frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Per-connection counter across all channels; absent on error frames.
    pub sequence_num: Option<u64>,
    /// The envelope's send time; absent on error frames and when it could not be read (it is
    /// informational only: trades and candles carry their own times).
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
        /// The frame's malformed trades, each left out alone.
        rejected: Vec<RejectedTrade>,
    },
    /// `candles`: Coinbase's own 5-minute candles (no trade count, no buy volume).
    Candles {
        candles: Vec<Candle>,
        /// The frame's malformed candles, each left out alone.
        rejected: Vec<RejectedCandle>,
    },
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
    /// serde's text quotes what it read: shown escaped and clipped.
    #[error("malformed JSON: {}", crate::model::shown(&.0.to_string()))]
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
    #[error(
        "field `{field}` is not an exact decimal: {}",
        crate::model::shown(value)
    )]
    BadDecimal { field: &'static str, value: String },
    #[error(
        "field `{field}` is not an RFC 3339 time: {}",
        crate::model::shown(value)
    )]
    BadTime { field: &'static str, value: String },
    #[error("field `{field}` is not valid: {}", crate::model::shown(value))]
    BadValue { field: &'static str, value: String },
}

/// The `sequence_num` of a frame [`parse_frame`] refused, when the frame is JSON and names
/// one: a frame whose body is malformed still took its number, and the connection must count
/// it so the next frame is not taken for a gap. Only called on that error path, so the frames
/// that parse are read once.
pub fn frame_sequence(bytes: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct SequenceOnly {
        #[serde(default)]
        sequence_num: Option<u64>,
    }
    serde_json::from_slice::<SequenceOnly>(bytes)
        .ok()?
        .sequence_num
}

/// Longest error message kept from an error frame (bytes): enough for every message Coinbase
/// sends (they name a product or a reason), bounded whatever a frame holds.
pub const MAX_ERROR_MESSAGE: usize = 512;

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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
                    message: raw
                        .message
                        .map(|m| clip(&m, MAX_ERROR_MESSAGE).to_owned())
                        .unwrap_or_default(),
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
    // The envelope's time is informational (trades and candles carry their own): one that
    // cannot be read is counted and left out, never a reason to drop the frame's data.
    let timestamp = raw
        .timestamp
        .as_deref()
        .and_then(|t| match parse_time("timestamp", t) {
            Ok(time) => Some(time),
            Err(e) => {
                metrics::counter!("spot_canvas_feed_bad_timestamps_total").increment(1);
                tracing::debug!(error = %e, "frame timestamp unreadable, left out");
                None
            }
        });
    let body = match channel {
        "market_trades" => {
            let events = events_of("market_trades", raw.events, |e| match e {
                RawEvents::Trades(events) => Some(events),
                _ => None,
            })?;
            trades_body(events, received)
        }
        "candles" => {
            let events = events_of("candles", raw.events, |e| match e {
                RawEvents::Candles(events) => Some(events),
                _ => None,
            })?;
            candles_body(events)
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

/// Most elements one event's `trades` or `candles` array may hold (a Coinbase snapshot holds
/// 100 trades): past it the frame is malformed, so no frame sizes the memory by its count.
pub const MAX_EVENT_ELEMENTS: usize = 10_000;

/// An array of at most [`MAX_EVENT_ELEMENTS`] elements (for `deserialize_with`).
fn bounded<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an array of at most {MAX_EVENT_ELEMENTS} elements")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            // Most events hold a few elements: one allocation for them.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(64));
            while let Some(element) = seq.next_element()? {
                if out.len() == MAX_EVENT_ELEMENTS {
                    return Err(serde::de::Error::custom(format!(
                        "more than {MAX_EVENT_ELEMENTS} elements in one event"
                    )));
                }
                out.push(element);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(Bounded(std::marker::PhantomData))
}
