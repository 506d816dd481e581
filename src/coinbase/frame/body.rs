//! The bodies of `candles`, `heartbeats` and `subscriptions` frames.
//!
//! In: a frame's events of that channel. Out: its [`FrameBody`].

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use super::values::{parse_decimal, parse_unix_seconds};
use super::{FrameBody, FrameError, count_skipped};
use crate::model::{Candle, Granularity};

#[derive(Deserialize)]
pub(super) struct RawCandlesEvent<'a> {
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

pub(super) fn candles_body(events: Vec<RawCandlesEvent<'_>>) -> Result<FrameBody, FrameError> {
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
