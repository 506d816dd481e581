//! Parser for Coinbase's public REST answers the service uses: the products list and
//! product candles.
//!
//! In: the body of `GET /market/products` or `GET /market/products/{id}/candles`. Out:
//! [`Product`]s and [`Candle`]s with exact decimals, or a [`FrameError`] naming the bad field.
//! REST candles carry no `product_id` (the caller knows it) and come newest first.

use std::borrow::Cow;

use serde::Deserialize;

use super::frame::{FrameError, parse_decimal, parse_unix_seconds};
use crate::model::{Candle, Granularity, Product};

/// An error answer: `{"error":"INVALID_ARGUMENT","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct RestError {
    pub error: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_details: Option<String>,
}

#[derive(Deserialize)]
struct RawProducts<'a> {
    #[serde(borrow)]
    products: Vec<RawProduct<'a>>,
}

#[derive(Deserialize)]
struct RawProduct<'a> {
    #[serde(borrow)]
    product_id: Cow<'a, str>,
    #[serde(borrow, default)]
    base_currency_id: Cow<'a, str>,
    #[serde(borrow, default)]
    quote_currency_id: Cow<'a, str>,
    #[serde(borrow, default)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    product_type: Cow<'a, str>,
    #[serde(default)]
    trading_disabled: bool,
    #[serde(borrow, default)]
    base_min_size: Cow<'a, str>,
    #[serde(borrow, default)]
    base_max_size: Cow<'a, str>,
    #[serde(borrow, default)]
    base_increment: Cow<'a, str>,
    #[serde(borrow, default)]
    price_increment: Cow<'a, str>,
    #[serde(borrow, default)]
    alias: Cow<'a, str>,
    #[serde(default)]
    alias_to: Vec<String>,
}

/// Parses a products list answer.
pub fn parse_products(body: &[u8]) -> Result<Vec<Product>, FrameError> {
    let raw: RawProducts<'_> = serde_json::from_slice(body)?;
    raw.products.into_iter().map(product_from_raw).collect()
}

/// Parses a single product answer (`GET /market/products/{id}`).
pub fn parse_product(body: &[u8]) -> Result<Product, FrameError> {
    product_from_raw(serde_json::from_slice(body)?)
}

fn product_from_raw(raw: RawProduct<'_>) -> Result<Product, FrameError> {
    Ok(Product {
        product_id: raw.product_id.into_owned(),
        base: raw.base_currency_id.into_owned(),
        quote: raw.quote_currency_id.into_owned(),
        status: raw.status.into_owned(),
        product_type: raw.product_type.into_owned(),
        trading_disabled: raw.trading_disabled,
        base_min_size: optional_decimal("base_min_size", &raw.base_min_size)?,
        base_max_size: optional_decimal("base_max_size", &raw.base_max_size)?,
        base_increment: optional_decimal("base_increment", &raw.base_increment)?,
        price_increment: optional_decimal("price_increment", &raw.price_increment)?,
        alias: raw.alias.into_owned(),
        alias_to: raw.alias_to,
    })
}

fn optional_decimal(
    field: &'static str,
    value: &str,
) -> Result<Option<rust_decimal::Decimal>, FrameError> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse_decimal(field, value).map(Some)
    }
}

#[derive(Deserialize)]
struct RawCandles<'a> {
    #[serde(borrow)]
    candles: Vec<RawRestCandle<'a>>,
}

#[derive(Deserialize)]
struct RawRestCandle<'a> {
    #[serde(borrow)]
    start: Cow<'a, str>,
    #[serde(borrow)]
    low: Cow<'a, str>,
    #[serde(borrow)]
    high: Cow<'a, str>,
    #[serde(borrow)]
    open: Cow<'a, str>,
    #[serde(borrow)]
    close: Cow<'a, str>,
    #[serde(borrow)]
    volume: Cow<'a, str>,
}

/// Parses a candles answer for `product_id` at `granularity`, in the order sent (newest
/// first). Trade count and buy volume are unknown on REST candles. A candle whose start is
/// not aligned to the granularity is an error.
pub fn parse_candles(
    body: &[u8],
    product_id: &str,
    granularity: Granularity,
) -> Result<Vec<Candle>, FrameError> {
    let raw: RawCandles<'_> = serde_json::from_slice(body)?;
    raw.candles
        .into_iter()
        .map(|c| {
            let start = parse_unix_seconds("start", &c.start)?;
            if start.timestamp() % granularity.seconds() != 0 {
                return Err(FrameError::BadValue {
                    field: "start",
                    value: c.start.into_owned(),
                });
            }
            Ok(Candle {
                product_id: product_id.to_owned(),
                granularity,
                start,
                open: parse_decimal("open", &c.open)?,
                high: parse_decimal("high", &c.high)?,
                low: parse_decimal("low", &c.low)?,
                close: parse_decimal("close", &c.close)?,
                volume: parse_decimal("volume", &c.volume)?,
                buy_volume: None,
                trade_count: None,
            })
        })
        .collect()
}

/// Parses an error answer, if the body is one.
pub fn parse_error(body: &[u8]) -> Option<RestError> {
    serde_json::from_slice(body).ok()
}
