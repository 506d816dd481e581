//! Product candles, as `GET /market/products/{id}/candles` answers them.
//!
//! In: the body, the product and granularity asked for (REST candles carry no `product_id`).
//! Out: [`Candle`]s newest first with exact decimals, or a [`FrameError`] naming the bad
//! field.

use std::borrow::Cow;

use serde::Deserialize;

use crate::coinbase::frame::{FrameError, parse_decimal, parse_unix_seconds};
use crate::model::{Candle, Granularity, ProductId};

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
    product_id: &ProductId,
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
                product_id: product_id.clone(),
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
