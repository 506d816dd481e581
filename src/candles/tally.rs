//! OHLCV tallies: the running sums of a set of trades (or of whole candles) that merge in any
//! order, and their conversion to [`Candle`]s.
//!
//! In: trades and candles (REST or stored minutes). Out: merged tallies and the candles they
//! describe. A tally built from a candle without a trade count (a REST candle) is `partial`:
//! its trade count and buy volume are unknown, and so are those of every merge it is part of.
//! Every sum is checked: an addition that would overflow changes nothing and says so.
//!
//! Sums are kept at most [`SUM_LIMIT`], far below `Decimal::MAX`: one absurd trade (a size
//! near `Decimal::MAX`) could otherwise take a candle's whole range, and every normal trade
//! after it would overflow. Below the limit a sum of sizes with up to 8 decimals is exact
//! (10^28 < 2^96), and no real market comes near it.

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;

use crate::model::{Candle, Granularity, ProductId, Side, Trade, TradeId};

/// OHLCV and counts of a set of trades, with the order keys of its first and last trade so
/// trades and partial tallies merge in any order.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    pub(crate) open: Decimal,
    pub(crate) high: Decimal,
    pub(crate) low: Decimal,
    pub(crate) close: Decimal,
    pub(crate) volume: Decimal,
    /// Buy volume of the trades known one by one.
    pub(crate) buy_volume: Decimal,
    /// Trades known one by one.
    pub(crate) trade_count: u64,
    /// Part of this tally comes from a candle whose trade count is unknown.
    pub(crate) partial: bool,
    pub(crate) first: (DateTime<Utc>, TradeId),
    pub(crate) last: (DateTime<Utc>, TradeId),
    pub(crate) last_received: DateTime<Utc>,
}

/// The largest volume a candle may sum to (10^20): a trade that would pass it is rejected.
pub(crate) const SUM_LIMIT: Decimal =
    Decimal::from_parts(1_661_992_960, 1_808_227_885, 5, false, 0);

/// `a + b` when it is exact: `Decimal` rounds a sum whose digits do not fit its 96-bit
/// mantissa (the result then has a smaller scale than the larger operand's), and that would
/// silently lose digits of exchange input.
pub(crate) fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    if b.is_zero() && b.scale() <= a.scale() {
        return Some(a);
    }
    a.checked_add(b)
        .filter(|sum| sum.scale() >= a.scale().max(b.scale()))
}

/// Whether `volume` is within [`SUM_LIMIT`].
pub(crate) fn within_limit(volume: Decimal) -> bool {
    volume <= SUM_LIMIT
}

/// The sums of a tally with one more trade, checked before anything changes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sums {
    volume: Decimal,
    buy_volume: Decimal,
    trade_count: u64,
}

impl Tally {
    pub(crate) fn of(t: &Trade) -> Tally {
        Tally {
            open: t.price,
            high: t.price,
            low: t.price,
            close: t.price,
            volume: t.size,
            buy_volume: if t.side.taker() == Side::Buy {
                t.size
            } else {
                Decimal::ZERO
            },
            trade_count: 1,
            partial: false,
            first: t.order_key(),
            last: t.order_key(),
            last_received: t.received,
        }
    }

    /// A whole candle as a tally. Its first and last trades are placed at the first and last
    /// instant of its bucket, so it merges in the right order with candles of other buckets.
    pub(crate) fn of_candle(c: &Candle, received: DateTime<Utc>) -> Tally {
        let end = c.end() - TimeDelta::nanoseconds(1);
        let known = c.trade_count.zip(c.buy_volume);
        Tally {
            open: c.open,
            high: c.high,
            low: c.low,
            close: c.close,
            volume: c.volume,
            buy_volume: known.map_or(Decimal::ZERO, |(_, buy)| buy),
            trade_count: known.map_or(0, |(count, _)| count),
            partial: known.is_none(),
            first: (c.start, TradeId(0)),
            last: (end, TradeId(0)),
            last_received: received,
        }
    }

    /// The sums after adding `t`, or `None` when one would overflow. Nothing changes: the
    /// caller checks every tally a trade goes to before it changes any ([`Tally::add`]).
    pub(crate) fn sums_with(&self, t: &Trade) -> Option<Sums> {
        let buy = if t.side.taker() == Side::Buy {
            t.size
        } else {
            Decimal::ZERO
        };
        let volume = exact_add(self.volume, t.size).filter(|v| within_limit(*v))?;
        Some(Sums {
            volume,
            buy_volume: exact_add(self.buy_volume, buy)?,
            trade_count: self.trade_count.checked_add(1)?,
        })
    }

    /// Adds `t` with the sums [`Tally::sums_with`] computed for it (cannot fail).
    pub(crate) fn add(&mut self, t: &Trade, sums: Sums) {
        let key = t.order_key();
        if key < self.first {
            self.first = key;
            self.open = t.price;
        }
        if key > self.last {
            self.last = key;
            self.close = t.price;
            self.last_received = t.received;
        }
        if t.price > self.high {
            self.high = t.price;
        }
        if t.price < self.low {
            self.low = t.price;
        }
        self.set(sums);
    }

    /// The sums after merging `other` in, or `None` when one would overflow.
    pub(crate) fn sums_with_tally(&self, other: &Tally) -> Option<Sums> {
        Some(Sums {
            volume: exact_add(self.volume, other.volume).filter(|v| within_limit(*v))?,
            buy_volume: exact_add(self.buy_volume, other.buy_volume)?,
            trade_count: self.trade_count.checked_add(other.trade_count)?,
        })
    }

    /// Merges `other` in with the sums [`Tally::sums_with_tally`] computed for it.
    pub(crate) fn merge_with(&mut self, other: &Tally, sums: Sums) {
        if other.first < self.first {
            self.first = other.first;
            self.open = other.open;
        }
        if other.last > self.last {
            self.last = other.last;
            self.close = other.close;
            self.last_received = other.last_received;
        }
        if other.high > self.high {
            self.high = other.high;
        }
        if other.low < self.low {
            self.low = other.low;
        }
        self.set(sums);
        self.partial |= other.partial;
    }

    /// Merges `other` in; `None` (and nothing changed) when a sum would overflow.
    pub(crate) fn merge(&mut self, other: &Tally) -> Option<()> {
        let sums = self.sums_with_tally(other)?;
        self.merge_with(other, sums);
        Some(())
    }

    fn set(&mut self, sums: Sums) {
        self.volume = sums.volume;
        self.buy_volume = sums.buy_volume;
        self.trade_count = sums.trade_count;
    }

    /// The candle of `product_id` at `granularity` this tally describes.
    pub(crate) fn candle(
        &self,
        product_id: &ProductId,
        granularity: Granularity,
        start: i64,
    ) -> Candle {
        Candle {
            product_id: product_id.to_owned(),
            granularity,
            start: DateTime::from_timestamp(start, 0).unwrap_or_default(),
            open: self.open,
            high: self.high,
            low: self.low,
            close: self.close,
            volume: self.volume,
            buy_volume: (!self.partial).then_some(self.buy_volume),
            trade_count: (!self.partial).then_some(self.trade_count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn trade(id: u64, size: Decimal) -> Trade {
        let time = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        Trade {
            product_id: crate::model::ProductId::from_static("BTC-USD"),
            trade_id: TradeId(id),
            price: Decimal::ONE,
            size,
            side: Side::Sell,
            time,
            received: time,
        }
    }

    #[test]
    fn a_sum_that_would_round_is_refused() {
        // 28 significant digits fit; a 29th would make `Decimal` round the sum.
        let a: Decimal = "1234567890.123456789012345678".parse().expect("decimal");
        let b: Decimal = "99999999999.1".parse().expect("decimal");
        assert!(a.checked_add(b).is_some(), "Decimal itself rounds it");
        assert_eq!(exact_add(a, b), None);
        let c: Decimal = "0.000000000000000001".parse().expect("decimal");
        assert_eq!(exact_add(a, c), Some(a + c));
        let mut tally = Tally::of(&trade(1, a));
        assert!(
            tally.sums_with(&trade(2, b)).is_none(),
            "the trade is rejected"
        );
        let sums = tally.sums_with(&trade(3, c)).expect("exact");
        tally.add(&trade(3, c), sums);
        assert_eq!(tally.volume, a + c);
    }

    #[test]
    fn the_sum_limit_is_ten_to_the_twentieth() {
        assert_eq!(
            SUM_LIMIT,
            Decimal::from(10u64.pow(10)) * Decimal::from(10u64.pow(10))
        );
    }

    #[test]
    fn a_sum_past_the_limit_is_refused_and_changes_nothing() {
        let mut tally = Tally::of(&trade(1, Decimal::ONE));
        let absurd = trade(2, Decimal::MAX);
        assert!(
            tally.sums_with(&absurd).is_none(),
            "Decimal::MAX + 1 overflows"
        );
        let just = trade(3, SUM_LIMIT - Decimal::ONE);
        let sums = tally.sums_with(&just).expect("exactly the limit fits");
        tally.add(&just, sums);
        assert_eq!(tally.volume, SUM_LIMIT);
        assert!(tally.sums_with(&trade(4, Decimal::new(1, 8))).is_none());
        let before = tally.clone();
        assert!(tally.merge(&Tally::of(&trade(5, Decimal::ONE))).is_none());
        assert_eq!(
            (tally.volume, tally.trade_count, tally.last),
            (before.volume, before.trade_count, before.last),
            "a refused merge changes nothing"
        );
    }
}
