//! Parser for Coinbase's public REST answers the service uses: the products list and
//! product candles ([`products`], [`candles`]), and the error answer.
//!
//! In: the body of `GET /market/products` or `GET /market/products/{id}/candles`. Out:
//! [`Product`](crate::model::Product)s and [`Candle`](crate::model::Candle)s with exact
//! decimals, or a [`FrameError`](super::FrameError) naming the bad field. In a products list
//! one malformed product costs only that product ([`ProductList`]). REST candles carry no
//! `product_id` (the caller knows it) and come newest first.

mod candles;
mod products;

use serde::Deserialize;

pub use candles::parse_candles;
pub use products::{
    ISSUES_KEPT, MAX_PRODUCTS, ProductIssue, ProductList, parse_product, parse_products,
};

/// An error answer: `{"error":"INVALID_ARGUMENT","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct RestError {
    pub error: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_details: Option<String>,
}

/// Parses an error answer, if the body is one.
pub fn parse_error(body: &[u8]) -> Option<RestError> {
    serde_json::from_slice(body).ok()
}
