//! The candle engine's core against an aggregation written separately here (it reuses none of
//! the engine's bucket or aggregation code): completion, revisions, duplicates, the window,
//! memory, a property test, and the production recording replayed.

use crate::common;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use spot_canvas::candles::crosscheck::Verdict;
use spot_canvas::candles::{Aggregator, Backfill, FeedNotice, Timing};
use spot_canvas::coinbase::{FrameBody, parse_frame};
use spot_canvas::model::{Candle, CandleUpdate, Granularity, Side, Trade, TradeId};

mod aggregation;
mod backfill;
mod candles;
mod rejects;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    open: Decimal,
    high: Decimal,
    low: Decimal,
    close: Decimal,
    volume: Decimal,
    buy_volume: Decimal,
    count: u64,
}

type Key = (String, Granularity, i64);

/// The straightforward aggregation: unique trades, sorted by (time, numeric id), folded per
/// bucket.
fn aggregate(trades: &[Trade]) -> BTreeMap<Key, Expected> {
    let mut unique: HashMap<(String, u64), &Trade> = HashMap::new();
    for t in trades {
        unique
            .entry((t.product_id.to_string(), t.trade_id.0))
            .or_insert(t);
    }
    let mut sorted: Vec<&Trade> = unique.into_values().collect();
    sorted.sort_by_key(|t| (t.time, t.trade_id.0));
    let mut out: BTreeMap<Key, Expected> = BTreeMap::new();
    for t in sorted {
        let secs = t.time.timestamp();
        for (g, width) in common::WIDTHS {
            let bucket = secs - secs.rem_euclid(width);
            let buy = if t.side == Side::Sell {
                t.size
            } else {
                Decimal::ZERO
            };
            let e = out
                .entry((t.product_id.to_string(), g, bucket))
                .or_insert(Expected {
                    open: t.price,
                    high: t.price,
                    low: t.price,
                    close: t.price,
                    volume: Decimal::ZERO,
                    buy_volume: Decimal::ZERO,
                    count: 0,
                });
            e.high = e.high.max(t.price);
            e.low = e.low.min(t.price);
            e.close = t.price;
            e.volume += t.size;
            e.buy_volume += buy;
            e.count += 1;
        }
    }
    out
}

/// The newest update of every candle, by version.
fn latest(updates: &[CandleUpdate]) -> BTreeMap<Key, CandleUpdate> {
    let mut out: BTreeMap<Key, CandleUpdate> = BTreeMap::new();
    for u in updates {
        let key = (
            u.candle.product_id.to_string(),
            u.candle.granularity,
            u.candle.start.timestamp(),
        );
        match out.get(&key) {
            Some(existing) if existing.version() >= u.version() => {}
            _ => {
                out.insert(key, u.clone());
            }
        }
    }
    out
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn trade(id: u64, time: &str, price: &str, size: &str, side: Side) -> Trade {
    Trade {
        product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
        trade_id: TradeId(id),
        price: price.parse().expect("price"),
        size: size.parse().expect("size"),
        side,
        time: at(time),
        received: at(time),
    }
}

fn one_minute(updates: &[CandleUpdate]) -> Vec<&CandleUpdate> {
    updates
        .iter()
        .filter(|u| u.candle.granularity == Granularity::OneMinute)
        .collect()
}

/// Trades of BTC-USD from `from`, one every 7 seconds for `count` trades, prices wandering.
fn trade_series(from: &str, count: u64) -> Vec<Trade> {
    let start = at(from);
    (0..count)
        .map(|i| {
            let time = start + TimeDelta::seconds(7 * i as i64);
            let price = Decimal::new(100_000 + ((i * 7919) % 997) as i64, 2);
            let side = if i % 3 == 0 { Side::Sell } else { Side::Buy };
            Trade {
                product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
                trade_id: TradeId(1_000 + i),
                price,
                size: Decimal::new(1 + (i % 13) as i64, 3),
                side,
                time,
                received: time,
            }
        })
        .collect()
}

/// The expected one-minute candles of `trades` in `[from, to)` as Coinbase's REST gives them
/// (no trade count, no buy volume), or as stored (with them).
fn minute_candles(trades: &[Trade], from: i64, to: i64, with_counts: bool) -> Vec<Candle> {
    aggregate(trades)
        .into_iter()
        .filter(|((_, g, start), _)| *g == Granularity::OneMinute && (from..to).contains(start))
        .map(|((product_id, granularity, start), e)| Candle {
            product_id: product_id.parse().expect("an id"),
            granularity,
            start: DateTime::from_timestamp(start, 0).expect("start"),
            open: e.open,
            high: e.high,
            low: e.low,
            close: e.close,
            volume: e.volume,
            buy_volume: with_counts.then_some(e.buy_volume),
            trade_count: with_counts.then_some(e.count),
        })
        .collect()
}

/// Feeds `trades` to the engine one per batch at their own time (plus 100 ms), ticking in
/// between.
fn feed(engine: &mut Aggregator, trades: &[Trade], out: &mut Vec<CandleUpdate>) -> u64 {
    let mut superseded = 0;
    for t in trades {
        let now = t.received + TimeDelta::milliseconds(100);
        engine.tick(now, out);
        superseded += engine.apply(std::slice::from_ref(t), now, out).superseded;
    }
    superseded
}
