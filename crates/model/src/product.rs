//! Tradable products as the feed discovers them and storage keeps them.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{Currency, ProductId};

/// A Coinbase product (trading pair) with the fields the service uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub product_id: ProductId,
    pub base: Currency,
    pub quote: Currency,
    /// `online`, `delisted`, `offline`, ...
    pub status: String,
    pub product_type: String,
    pub trading_disabled: bool,
    pub base_min_size: Option<Decimal>,
    pub base_max_size: Option<Decimal>,
    pub base_increment: Option<Decimal>,
    pub price_increment: Option<Decimal>,
    /// The product this one is an alias of (`BTC-USDC` is an alias of `BTC-USD`).
    pub alias: Option<ProductId>,
    /// Products that alias this one.
    pub alias_to: Vec<ProductId>,
}

impl Product {
    /// A product the service ingests: an online spot market open for trading that is not an
    /// alias of another product (Coinbase sends `-USDC` aliases the `-USD` product's data).
    pub fn is_ingestible(&self) -> bool {
        self.status.eq_ignore_ascii_case("online")
            && !self.trading_disabled
            && self.product_type.eq_ignore_ascii_case("SPOT")
            && self.alias.is_none()
    }
}
