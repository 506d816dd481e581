//! The body of `market_trades` frames, one trade at a time: a trade that is malformed (a
//! missing or non-text field, a zero or negative amount, an exponent, an unknown side, a
//! non-numeric id, a bad time) is rejected alone, and the rest of its frame still counts.
//!
//! In: the frame's trade events. Out: [`FrameBody::MarketTrades`] with the good trades and a
//! [`RejectedTrade`] for each bad one.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::values::{parse_positive_decimal, parse_time};
use super::{FrameBody, FrameError, count_skipped};
use crate::model::{ProductId, Side, Trade, TradeId, shown};

/// A trade of a frame that was not taken, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedTrade {
    /// The trade's product when it named a valid product id, else `None`.
    pub product_id: Option<ProductId>,
    /// The trade's id as sent when it was text ([`shown`]: escaped and clipped), else empty.
    pub trade_id: String,
    /// What was wrong, naming the field and the value.
    pub reason: String,
}

#[derive(Deserialize)]
pub(super) struct RawTradesEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "super::bounded")]
    trades: Vec<RawTrade<'a>>,
}

/// One element of a `trades` array, read without failing the frame: text fields are kept,
/// and the first field that is not text (or an element that is not an object) is noted.
#[derive(Default)]
struct RawTrade<'a> {
    trade_id: Option<Cow<'a, str>>,
    product_id: Option<Cow<'a, str>>,
    price: Option<Cow<'a, str>>,
    size: Option<Cow<'a, str>>,
    side: Option<Cow<'a, str>>,
    time: Option<Cow<'a, str>>,
    /// The first field that was present but not a string; `"trade"` when the element was not
    /// an object.
    not_text: Option<&'static str>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum TradeField {
    TradeId,
    ProductId,
    Price,
    Size,
    Side,
    Time,
    #[serde(other)]
    Other,
}

/// A JSON value that is kept when it is a string and only noted otherwise.
enum Lenient<'a> {
    Text(Cow<'a, str>),
    NotText,
}

struct LenientVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for LenientVisitor<'a> {
    type Value = Lenient<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Lenient::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Lenient::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Lenient::Text(Cow::Owned(v)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Lenient::NotText)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Lenient::NotText)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Lenient::NotText)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Lenient::NotText)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Lenient::NotText)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Lenient::NotText)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Lenient::NotText)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Lenient::NotText)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Lenient<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor(std::marker::PhantomData))
    }
}

struct RawTradeVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for RawTradeVisitor<'a> {
    type Value = RawTrade<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a trade")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut trade = RawTrade::default();
        while let Some(field) = map.next_key::<TradeField>()? {
            let (slot, name) = match field {
                TradeField::TradeId => (&mut trade.trade_id, "trade_id"),
                TradeField::ProductId => (&mut trade.product_id, "product_id"),
                TradeField::Price => (&mut trade.price, "price"),
                TradeField::Size => (&mut trade.size, "size"),
                TradeField::Side => (&mut trade.side, "side"),
                TradeField::Time => (&mut trade.time, "time"),
                TradeField::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            match map.next_value::<Lenient<'a>>()? {
                Lenient::Text(text) => *slot = Some(text),
                Lenient::NotText => {
                    trade.not_text.get_or_insert(name);
                }
            }
        }
        Ok(trade)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawTrade::not_an_object())
    }
    fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<Self::Value, E> {
        Ok(RawTrade::not_an_object())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(RawTrade::not_an_object())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RawTrade::not_an_object())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(RawTrade::not_an_object())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(RawTrade::not_an_object())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(RawTrade::not_an_object())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(RawTrade::not_an_object())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawTrade<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawTradeVisitor(std::marker::PhantomData))
    }
}

impl RawTrade<'_> {
    fn not_an_object() -> Self {
        RawTrade {
            not_text: Some("trade"),
            ..RawTrade::default()
        }
    }
}

pub(super) fn trades_body(events: Vec<RawTradesEvent<'_>>, received: DateTime<Utc>) -> FrameBody {
    let mut snapshot = false;
    let mut trades = Vec::with_capacity(events.iter().map(|e| e.trades.len()).sum());
    let mut rejected = Vec::new();
    // A frame's trades nearly always name one product: its id is parsed once and shared.
    let mut last_id: Option<ProductId> = None;
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
            // Borrowed text: cloning it costs nothing; it is parsed only for a rejected trade.
            let (product_id, trade_id) = (raw.product_id.clone(), raw.trade_id.clone());
            match trade_from_raw(raw, received, &mut last_id) {
                Ok(trade) => trades.push(trade),
                Err(e) => rejected.push(RejectedTrade {
                    product_id: product_id
                        .as_deref()
                        .and_then(|id| ProductId::parse(id).ok()),
                    trade_id: trade_id.as_deref().map(shown).unwrap_or_default(),
                    reason: e.to_string(),
                }),
            }
        }
    }
    FrameBody::MarketTrades {
        snapshot,
        trades,
        rejected,
    }
}

fn field<'a>(value: Option<Cow<'a, str>>, name: &'static str) -> Result<Cow<'a, str>, FrameError> {
    value.ok_or(FrameError::MissingField {
        channel: "market_trades",
        field: name,
    })
}

/// The trade `raw` describes. `last_id` is the product id of the frame's previous good
/// trade: an equal id is shared rather than parsed and allocated again.
fn trade_from_raw(
    raw: RawTrade<'_>,
    received: DateTime<Utc>,
    last_id: &mut Option<ProductId>,
) -> Result<Trade, FrameError> {
    if let Some(name) = raw.not_text {
        return Err(FrameError::BadValue {
            field: name,
            value: "(not a string)".into(),
        });
    }
    let trade_id = field(raw.trade_id, "trade_id")?;
    let trade_id = trade_id
        .parse::<TradeId>()
        .map_err(|_| FrameError::BadValue {
            field: "trade_id",
            value: trade_id.clone().into_owned(),
        })?;
    let side = match field(raw.side, "side")?.as_ref() {
        "BUY" => Side::Buy,
        "SELL" => Side::Sell,
        other => {
            return Err(FrameError::BadValue {
                field: "side",
                value: other.to_owned(),
            });
        }
    };
    let raw_id = field(raw.product_id, "product_id")?;
    let product_id = match last_id {
        Some(id) if id.as_str() == raw_id.as_ref() => id.clone(),
        _ => ProductId::parse(&raw_id).map_err(|_| FrameError::BadValue {
            field: "product_id",
            value: raw_id.into_owned(),
        })?,
    };
    let trade = Trade {
        product_id,
        trade_id,
        price: parse_positive_decimal("price", &field(raw.price, "price")?)?,
        size: parse_positive_decimal("size", &field(raw.size, "size")?)?,
        side,
        time: parse_time("time", &field(raw.time, "time")?)?,
        received,
    };
    *last_id = Some(trade.product_id.clone());
    Ok(trade)
}
