//! The bodies of `candles`, `heartbeats` and `subscriptions` frames.
//!
//! In: a frame's events of that channel. Out: its [`FrameBody`]. A malformed candle (a missing
//! or non-text field, a value that is not an exact decimal, a bad start) costs only that
//! candle: it is listed as a [`RejectedCandle`] beside the frame's good candles.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::values::{parse_decimal, parse_unix_seconds};
use super::{FrameBody, FrameError, count_skipped};
use crate::model::{Candle, Granularity, ProductId};

#[derive(Deserialize)]
pub(super) struct RawCandlesEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    /// Kept raw so that each candle is parsed on its own: one bad candle cannot fail the
    /// frame.
    #[serde(borrow, default, deserialize_with = "super::bounded")]
    candles: Vec<&'a RawValue>,
}

/// A candle of a `candles` frame that was not taken, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedCandle {
    /// The candle's product when it named a valid product id, else `None`.
    pub product_id: Option<ProductId>,
    /// What was wrong, naming the field and the value.
    pub reason: String,
}

/// Only the product of a candle that failed, for its [`RejectedCandle`].
#[derive(Deserialize)]
struct CandleProduct<'a> {
    #[serde(borrow)]
    product_id: Cow<'a, str>,
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
pub(super) struct RawHeartbeatEvent<'a> {
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
pub(super) struct RawSubscriptionsEvent {
    pub(super) subscriptions: BTreeMap<String, Vec<String>>,
}

pub(super) fn candles_body(events: Vec<RawCandlesEvent<'_>>) -> FrameBody {
    let mut candles = Vec::new();
    let mut rejected = Vec::new();
    for event in events {
        if !matches!(event.kind.as_ref(), "snapshot" | "update") {
            count_skipped("event_type", &event.kind);
            continue;
        }
        for raw in event.candles {
            match candle_from_raw(raw) {
                Ok(candle) => candles.push(candle),
                Err(e) => rejected.push(RejectedCandle {
                    product_id: serde_json::from_str::<CandleProduct<'_>>(raw.get())
                        .ok()
                        .and_then(|c| ProductId::parse(&c.product_id).ok()),
                    reason: e.to_string(),
                }),
            }
        }
    }
    FrameBody::Candles { candles, rejected }
}

fn candle_from_raw(raw: &RawValue) -> Result<Candle, FrameError> {
    let raw: RawWsCandle<'_> = serde_json::from_str(raw.get())?;
    let product_id = ProductId::parse(&raw.product_id).map_err(|_| FrameError::BadValue {
        field: "product_id",
        value: raw.product_id.clone().into_owned(),
    })?;
    Ok(Candle {
        product_id,
        granularity: Granularity::FiveMinutes,
        start: parse_unix_seconds("start", &raw.start)?,
        open: parse_decimal("open", &raw.open)?,
        high: parse_decimal("high", &raw.high)?,
        low: parse_decimal("low", &raw.low)?,
        close: parse_decimal("close", &raw.close)?,
        volume: parse_decimal("volume", &raw.volume)?,
        buy_volume: None,
        trade_count: None,
    })
}

pub(super) fn heartbeat_body(events: Vec<RawHeartbeatEvent<'_>>) -> Result<FrameBody, FrameError> {
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
