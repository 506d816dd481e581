//! OHLCV aggregates of the simulator's own trades (its ground truth for REST candles).
//!
//! In: trades as generated. Out: one-minute aggregates and merges of them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use spot_canvas_model::{Trade, TradeId};

/// OHLCV of one minute (or a merge of minutes), with the order keys of its first and last
/// trade so late trades land correctly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub start: i64,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub trades: u64,
    pub(super) first: (DateTime<Utc>, TradeId),
    pub(super) last: (DateTime<Utc>, TradeId),
}

impl Aggregate {
    pub(super) fn from_trade(start: i64, t: &Trade) -> Self {
        Aggregate {
            start,
            open: t.price,
            high: t.price,
            low: t.price,
            close: t.price,
            volume: t.size,
            trades: 1,
            first: t.order_key(),
            last: t.order_key(),
        }
    }

    pub(super) fn add(&mut self, t: &Trade) {
        let key = t.order_key();
        if key < self.first {
            self.first = key;
            self.open = t.price;
        }
        if key > self.last {
            self.last = key;
            self.close = t.price;
        }
        self.high = self.high.max(t.price);
        self.low = self.low.min(t.price);
        self.volume += t.size;
        self.trades += 1;
    }

    pub(super) fn merge(&mut self, other: &Aggregate) {
        if other.first < self.first {
            self.first = other.first;
            self.open = other.open;
        }
        if other.last > self.last {
            self.last = other.last;
            self.close = other.close;
        }
        self.high = self.high.max(other.high);
        self.low = self.low.min(other.low);
        self.volume += other.volume;
        self.trades += other.trades;
    }
}
