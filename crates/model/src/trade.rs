//! Trades as the feed hands them to the candle engine: exact decimals, exchange time and
//! receive time, and a total order by (exchange time, numeric trade id).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::ProductId;

/// Coinbase trade id. Coinbase sends it as a decimal string that counts up per product;
/// it is compared as a number, so `"999" < "1000"`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct TradeId(pub u64);

/// A trade id that is not a decimal number fitting in 64 bits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trade id {0:?} is not a non-negative integer below 2^64")]
pub struct BadTradeId(pub String);

impl FromStr for TradeId {
    type Err = BadTradeId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `u64::from_str` accepts a leading '+', Coinbase never sends one: insist on digits.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadTradeId(s.to_owned()));
        }
        s.parse::<u64>()
            .map(TradeId)
            .map_err(|_| BadTradeId(s.to_owned()))
    }
}

impl fmt::Display for TradeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The maker's side, as Coinbase reports it on `market_trades`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    /// The taker (aggressor) side: the opposite of the maker side Coinbase sends. A trade
    /// whose maker sold was a taker buy.
    pub const fn taker(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }
}

/// One executed trade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    pub product_id: ProductId,
    pub trade_id: TradeId,
    pub price: Decimal,
    pub size: Decimal,
    /// Maker side as sent by Coinbase.
    pub side: Side,
    /// Exchange time of the trade.
    pub time: DateTime<Utc>,
    /// When the frame carrying the trade was read from the socket.
    pub received: DateTime<Utc>,
}

impl Trade {
    /// The key trades are ordered by within a product: exchange time, then numeric id.
    pub fn order_key(&self) -> (DateTime<Utc>, TradeId) {
        (self.time, self.trade_id)
    }

    /// Orders two trades of one product as candles see them.
    pub fn cmp_order(&self, other: &Trade) -> Ordering {
        self.order_key().cmp(&other.order_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trade_ids_compare_as_numbers() {
        let a: TradeId = "999".parse().expect("999");
        let b: TradeId = "1000".parse().expect("1000");
        assert!(a < b);
        assert_eq!("000000000".parse::<TradeId>(), Ok(TradeId(0)));
    }

    #[test]
    fn malformed_trade_ids_are_rejected() {
        for bad in ["", "+1", "-1", "1a", "18446744073709551616", " 1"] {
            assert!(bad.parse::<TradeId>().is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(
            "18446744073709551615".parse::<TradeId>(),
            Ok(TradeId(u64::MAX))
        );
    }

    #[test]
    fn taker_side_is_opposite_of_maker_side() {
        assert_eq!(Side::Buy.taker(), Side::Sell);
        assert_eq!(Side::Sell.taker(), Side::Buy);
    }
}
