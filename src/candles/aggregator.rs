//! The candle engine's pure core: the candles of the products one shard owns.
//!
//! In: batches of trades (with the clock's current time) and clock ticks. Out: one
//! [`CandleUpdate`] per candle a batch or tick changed. No I/O and no `.await`: the async shell
//! in `candles::mod` moves data in and out.
//!
//! Semantics (design.md, "Candle semantics"): buckets `[start, start + g)` by exchange time
//! aligned to the UTC epoch; open/close are the first/last trade by (time, numeric trade id),
//! whatever the arrival order; a candle completes when the clock passes its end plus the grace
//! period; a trade for a complete candle within the revision window re-emits it, complete,
//! with revision + 1; a trade whose 1-minute bucket ended longer ago than the window is
//! counted, logged and not applied (to no granularity, so every granularity stays the
//! aggregation of the same trades); a trade id already applied changes nothing.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;

use crate::model::{Candle, CandleUpdate, Granularity, Side, Trade, TradeId, Version};

/// Timing of completion and revisions.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A candle completes when the clock passes its end plus this.
    pub grace: TimeDelta,
    /// Trades whose 1-minute bucket ended at most this long ago still revise candles.
    pub revision_window: TimeDelta,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            grace: TimeDelta::seconds(2),
            revision_window: TimeDelta::minutes(5),
        }
    }
}

/// What a batch did besides updating candles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: u64,
    pub duplicates: u64,
    pub too_late: u64,
}

/// OHLCV and counts of a set of trades, with the order keys of its first and last trade so
/// trades and partial tallies merge in any order.
#[derive(Debug, Clone)]
struct Tally {
    open: Decimal,
    high: Decimal,
    low: Decimal,
    close: Decimal,
    volume: Decimal,
    buy_volume: Decimal,
    trade_count: u64,
    first: (DateTime<Utc>, TradeId),
    last: (DateTime<Utc>, TradeId),
    last_received: DateTime<Utc>,
}

impl Tally {
    fn of(t: &Trade) -> Tally {
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
            first: t.order_key(),
            last: t.order_key(),
            last_received: t.received,
        }
    }

    fn add(&mut self, t: &Trade) {
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
        self.volume += t.size;
        if t.side.taker() == Side::Buy {
            self.buy_volume += t.size;
        }
        self.trade_count += 1;
    }

    fn merge(&mut self, other: &Tally) {
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
        self.volume += other.volume;
        self.buy_volume += other.buy_volume;
        self.trade_count += other.trade_count;
    }
}

/// One candle as the engine holds it.
#[derive(Debug, Clone)]
struct Slot {
    /// Bucket start, Unix seconds.
    start: i64,
    tally: Tally,
    revision: u32,
    complete: bool,
    /// Changed since its last emitted update.
    dirty: bool,
}

impl Slot {
    fn merge(&mut self, partial: &Tally) {
        self.tally.merge(partial);
        if self.complete && !self.dirty {
            // A late trade for a complete candle: a new revision, still complete.
            self.revision += 1;
        }
        self.dirty = true;
    }
}

/// The candles of one product.
#[derive(Debug, Default)]
struct ProductCandles {
    /// Per granularity (index = `Granularity::index`), slots ordered by start.
    slots: [Vec<Slot>; 8],
    /// Trade ids applied, for deduplication, by the start of their 1-minute bucket.
    seen: FxHashSet<TradeId>,
    seen_by_minute: BTreeMap<i64, Vec<TradeId>>,
}

/// The candles of the products one shard owns.
#[derive(Debug)]
pub struct Aggregator {
    timing: Timing,
    /// Fx hashing: keys come from Coinbase, not from an adversary, and this is the hot path.
    products: FxHashMap<String, ProductCandles>,
}

impl Aggregator {
    pub fn new(timing: Timing) -> Self {
        Aggregator {
            timing,
            products: FxHashMap::default(),
        }
    }

    /// Applies a batch of trades at clock time `now`, appending one update per changed candle
    /// to `out`.
    pub fn apply(
        &mut self,
        trades: &[Trade],
        now: DateTime<Utc>,
        out: &mut Vec<CandleUpdate>,
    ) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let oldest_end = (now - self.timing.revision_window).timestamp();
        // First the batch's trades per product and minute (a frame is nearly always one
        // product and one minute), then each tally merged into the 8 granularities once.
        let mut partials: Vec<(&str, i64, Tally)> = Vec::new();
        for t in trades {
            let minute = Granularity::OneMinute.bucket_start_secs(t.time.timestamp());
            if minute + 60 < oldest_end {
                outcome.too_late += 1;
                tracing::warn!(
                    product = %t.product_id,
                    trade_id = %t.trade_id,
                    time = %t.time,
                    "trade older than the revision window, not applied"
                );
                continue;
            }
            let product = match self.products.get_mut(t.product_id.as_str()) {
                Some(p) => p,
                None => self.products.entry(t.product_id.clone()).or_default(),
            };
            if !product.seen.insert(t.trade_id) {
                outcome.duplicates += 1;
                continue;
            }
            match product.seen_by_minute.last_entry() {
                Some(mut last) if *last.key() == minute => last.get_mut().push(t.trade_id),
                _ => product
                    .seen_by_minute
                    .entry(minute)
                    .or_default()
                    .push(t.trade_id),
            }
            match partials
                .iter_mut()
                .rev()
                .find(|(p, m, _)| *m == minute && *p == t.product_id)
            {
                Some((_, _, tally)) => tally.add(t),
                None => partials.push((&t.product_id, minute, Tally::of(t))),
            }
            outcome.applied += 1;
        }
        let now_ms = now.timestamp_millis();
        let grace_ms = self.timing.grace.num_milliseconds();
        let mut touched: Vec<&str> = Vec::new();
        for (product_id, minute, tally) in &partials {
            let Some(product) = self.products.get_mut(*product_id) else {
                continue;
            };
            for g in Granularity::ALL {
                let start = g.bucket_start_secs(*minute);
                let slots = &mut product.slots[g.index()];
                // Nearly every trade lands in the newest bucket: search from the back.
                match slots.iter().rposition(|s| s.start <= start) {
                    Some(i) if slots[i].start == start => slots[i].merge(tally),
                    position => {
                        let at = position.map_or(0, |i| i + 1);
                        slots.insert(
                            at,
                            Slot {
                                start,
                                tally: tally.clone(),
                                revision: 0,
                                // A new candle in a bucket already past its grace is
                                // complete at once.
                                complete: now_ms >= (start + g.seconds()) * 1000 + grace_ms,
                                dirty: true,
                            },
                        );
                    }
                }
            }
            if !touched.contains(product_id) {
                touched.push(product_id);
            }
        }
        for product_id in touched {
            if let Some(product) = self.products.get_mut(product_id) {
                emit_dirty(product_id, product, out);
            }
        }
        outcome
    }

    /// Completes the candles whose end plus grace the clock has passed, appending their
    /// complete updates to `out`, and forgets what the revision window no longer needs.
    pub fn tick(&mut self, now: DateTime<Utc>, out: &mut Vec<CandleUpdate>) {
        let grace_ms = self.timing.grace.num_milliseconds();
        let now_ms = now.timestamp_millis();
        let oldest_end = (now - self.timing.revision_window).timestamp();
        for (product_id, product) in &mut self.products {
            for g in Granularity::ALL {
                for slot in &mut product.slots[g.index()] {
                    if !slot.complete && now_ms >= (slot.start + g.seconds()) * 1000 + grace_ms {
                        slot.complete = true;
                        slot.dirty = true;
                    }
                }
            }
            emit_dirty(product_id, product, out);
            for g in Granularity::ALL {
                // Keep the newest candle even when old: the key's current candle.
                let slots = &mut product.slots[g.index()];
                let keep_from = slots.len().saturating_sub(1);
                let mut i = 0;
                slots.retain(|s| {
                    let keep = i >= keep_from || !s.complete || s.start + g.seconds() >= oldest_end;
                    i += 1;
                    keep
                });
            }
            let horizon = Granularity::OneMinute.bucket_start_secs(oldest_end) - 60;
            while let Some(entry) = product.seen_by_minute.first_entry() {
                if *entry.key() >= horizon {
                    break;
                }
                for id in entry.remove() {
                    product.seen.remove(&id);
                }
            }
        }
    }

    /// Products with state, and candles and trade ids held (for memory checks).
    pub fn footprint(&self) -> (usize, usize, usize) {
        let candles = self
            .products
            .values()
            .map(|p| p.slots.iter().map(Vec::len).sum::<usize>())
            .sum();
        let ids = self.products.values().map(|p| p.seen.len()).sum();
        (self.products.len(), candles, ids)
    }
}

fn emit_dirty(product_id: &str, product: &mut ProductCandles, out: &mut Vec<CandleUpdate>) {
    for g in Granularity::ALL {
        for slot in &mut product.slots[g.index()] {
            if !slot.dirty {
                continue;
            }
            slot.dirty = false;
            let t = &slot.tally;
            out.push(CandleUpdate {
                candle: Candle {
                    product_id: product_id.to_owned(),
                    granularity: g,
                    start: DateTime::from_timestamp(slot.start, 0).unwrap_or_default(),
                    open: t.open,
                    high: t.high,
                    low: t.low,
                    close: t.close,
                    volume: t.volume,
                    buy_volume: Some(t.buy_volume),
                    trade_count: Some(t.trade_count),
                },
                complete: slot.complete,
                revision: slot.revision,
                version: Version {
                    bucket_start: slot.start,
                    revision: slot.revision,
                    complete: slot.complete,
                    trade_count: t.trade_count,
                    last_trade_id: t.last.1,
                },
                last_trade_time: t.last.0,
                last_received: t.last_received,
            });
        }
    }
}
