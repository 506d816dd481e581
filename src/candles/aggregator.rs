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
//!
//! Backfill: REST one-minute candles replace whole minutes of a window whose trades may be
//! missing; such a minute takes no more trades (REST already holds them), its trade count and
//! buy volume are unknown (and so are those of every candle containing it), and every larger
//! candle over the window is recomputed from its minutes with a higher revision. The minutes
//! of the current day are held for that. Completed 5-minute candles are compared with
//! Coinbase's `candles` channel ([`super::crosscheck`]).

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};

use super::crosscheck::{CrossCheck, compare};
use super::tally::Tally;
use crate::model::{Candle, CandleUpdate, Granularity, Trade, TradeId, Version};
use chrono::{DateTime, TimeDelta, Utc};

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
    /// Trades for minutes already replaced by Coinbase's REST candles (which hold them).
    pub superseded: u64,
}

/// Coinbase's one-minute candles for a window of minutes whose trades may be missing, with
/// what the engine needs to recompute the larger candles around them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backfill {
    pub product_id: String,
    /// First replaced minute (Unix seconds; rounded down to the minute).
    pub from: i64,
    /// End of the replaced minutes (exclusive; rounded up to the minute).
    pub to: i64,
    /// REST one-minute candles of `[from, to)`: each replaces our minute whole. A minute REST
    /// has no candle for keeps what the engine has.
    pub minutes: Vec<Candle>,
    /// Stored one-minute candles of the larger buckets the window touches, outside the
    /// window: used for minutes the engine does not hold itself.
    pub context: Vec<Candle>,
    /// Stored revisions of the candles the window touches (every granularity): recomputed
    /// candles go out with a higher one, so they replace what is stored.
    pub stored: Vec<(Granularity, i64, u32)>,
}

/// What a backfill changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillOutcome {
    /// Minutes replaced by REST candles.
    pub replaced: u64,
    /// Minutes of the window REST had no candle for where the engine has trades (kept).
    pub kept: u64,
    /// Larger candles recomputed from their minutes.
    pub recomputed: u64,
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
    /// A one-minute candle taken whole from REST: it takes no more trades.
    backfilled: bool,
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
#[derive(Debug)]
struct ProductCandles {
    /// Per granularity (index = `Granularity::index`), slots ordered by start. One-minute
    /// slots are held for the whole current day, so any larger candle of the day can be
    /// recomputed from its minutes after a backfill.
    slots: [Vec<Slot>; 8],
    /// Per granularity, the earliest start of a dirty slot (`i64::MAX`: none).
    dirty_from: [i64; 8],
    /// End of the newest backfilled minute (`i64::MIN`: none).
    backfilled_until: i64,
    /// Trade ids applied, for deduplication, by the start of their 1-minute bucket.
    seen: FxHashSet<TradeId>,
    seen_by_minute: BTreeMap<i64, Vec<TradeId>>,
    /// Coinbase's latest `candles`-channel candle of each recent 5-minute bucket, with when it
    /// was received.
    exchange: Vec<(Candle, DateTime<Utc>)>,
}

impl Default for ProductCandles {
    fn default() -> Self {
        ProductCandles {
            slots: Default::default(),
            dirty_from: [i64::MAX; 8],
            backfilled_until: i64::MIN,
            seen: FxHashSet::default(),
            seen_by_minute: BTreeMap::new(),
            exchange: Vec::new(),
        }
    }
}

impl ProductCandles {
    fn touch(&mut self, g: Granularity, start: i64) {
        let from = &mut self.dirty_from[g.index()];
        *from = (*from).min(start);
    }

    /// Whether the minute starting at `minute` was replaced by a REST candle.
    fn is_backfilled(&self, minute: i64) -> bool {
        minute < self.backfilled_until
            && self.slots[Granularity::OneMinute.index()]
                .binary_search_by_key(&minute, |s| s.start)
                .is_ok_and(|i| self.slots[Granularity::OneMinute.index()][i].backfilled)
    }
}

/// The candles of the products one shard owns.
#[derive(Debug)]
pub struct Aggregator {
    timing: Timing,
    /// Fx hashing: keys come from Coinbase, not from an adversary, and this is the hot path.
    products: FxHashMap<String, ProductCandles>,
    /// Cross-checks done since the last [`Aggregator::take_checks`].
    checks: Vec<CrossCheck>,
}

impl Aggregator {
    pub fn new(timing: Timing) -> Self {
        Aggregator {
            timing,
            products: FxHashMap::default(),
            checks: Vec::new(),
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
            if product.is_backfilled(minute) {
                outcome.superseded += 1;
                continue;
            }
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
                                backfilled: false,
                            },
                        );
                    }
                }
                product.touch(g, start);
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
    /// complete updates to `out`, cross-checks completed 5-minute candles with Coinbase's,
    /// and forgets what the revision window (and the current day's minutes) no longer need.
    pub fn tick(&mut self, now: DateTime<Utc>, out: &mut Vec<CandleUpdate>) {
        let grace_ms = self.timing.grace.num_milliseconds();
        let now_ms = now.timestamp_millis();
        let oldest_end = (now - self.timing.revision_window).timestamp();
        let checks = &mut self.checks;
        for (product_id, product) in &mut self.products {
            for g in Granularity::ALL {
                // Incomplete slots are the newest ones: walk back to the first complete one.
                let mut completed: Vec<i64> = Vec::new();
                for slot in product.slots[g.index()].iter_mut().rev() {
                    if slot.complete {
                        break;
                    }
                    if now_ms >= (slot.start + g.seconds()) * 1000 + grace_ms {
                        slot.complete = true;
                        slot.dirty = true;
                        completed.push(slot.start);
                    }
                }
                for &start in &completed {
                    product.touch(g, start);
                }
                if g == Granularity::FiveMinutes {
                    for start in completed {
                        cross_check(product_id, product, start, checks);
                    }
                }
            }
            emit_dirty(product_id, product, out);
            let newest_day = product.slots[Granularity::OneDay.index()]
                .last()
                .map_or(i64::MAX, |s| s.start);
            for g in Granularity::ALL {
                let mut keep_from = oldest_end - g.seconds();
                if g == Granularity::OneMinute {
                    keep_from = keep_from.min(newest_day);
                }
                // Keep the newest candle even when old: the key's current candle.
                let slots = &mut product.slots[g.index()];
                let old = slots
                    .partition_point(|s| s.complete && s.start < keep_from)
                    .min(slots.len().saturating_sub(1));
                slots.drain(..old);
            }
            if let Some(newest) = product.slots[Granularity::FiveMinutes.index()].last() {
                let keep_from = newest.start - Granularity::FiveMinutes.seconds();
                product
                    .exchange
                    .retain(|(c, _)| c.start.timestamp() >= keep_from);
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

    /// Takes Coinbase's 5-minute candles from the `candles` channel, received at `received`:
    /// each is compared with ours when our candle of its bucket completes.
    pub fn exchange_candles(&mut self, candles: &[Candle], received: DateTime<Utc>) {
        for c in candles {
            if c.granularity != Granularity::FiveMinutes {
                continue;
            }
            let product = match self.products.get_mut(c.product_id.as_str()) {
                Some(p) => p,
                None => self.products.entry(c.product_id.clone()).or_default(),
            };
            match product
                .exchange
                .iter_mut()
                .find(|(e, _)| e.start == c.start)
            {
                Some(entry) => *entry = (c.clone(), received),
                None => {
                    product.exchange.push((c.clone(), received));
                    if product.exchange.len() > 4 {
                        product.exchange.remove(0);
                    }
                }
            }
        }
    }

    /// The cross-checks done since the last call.
    pub fn take_checks(&mut self) -> Vec<CrossCheck> {
        std::mem::take(&mut self.checks)
    }

    /// Merges REST one-minute candles for a window of possibly missing trades: each minute of
    /// the window REST has a candle for is replaced whole (and takes no more trades), and
    /// every larger candle the window touches is recomputed from its minutes and re-emitted
    /// with a higher revision. Only minutes complete at `now` are replaced.
    pub fn backfill(
        &mut self,
        backfill: &Backfill,
        now: DateTime<Utc>,
        out: &mut Vec<CandleUpdate>,
    ) -> BackfillOutcome {
        let mut outcome = BackfillOutcome::default();
        let grace_ms = self.timing.grace.num_milliseconds();
        let now_ms = now.timestamp_millis();
        let due = |start: i64, g: Granularity| now_ms >= (start + g.seconds()) * 1000 + grace_ms;
        let minute = Granularity::OneMinute;
        let from = minute.bucket_start_secs(backfill.from);
        // Up to the last complete minute.
        let last_due = minute.bucket_start_secs((now_ms - grace_ms).div_euclid(1000));
        let to = minute
            .bucket_start_secs(backfill.to.saturating_add(59))
            .min(last_due);
        if to <= from {
            return outcome;
        }
        let stored: FxHashMap<(usize, i64), u32> = backfill
            .stored
            .iter()
            .map(|&(g, start, revision)| ((g.index(), start), revision))
            .collect();
        let next_revision = |held: Option<u32>, g: Granularity, start: i64| {
            let stored = stored.get(&(g.index(), start)).copied();
            held.max(stored).map_or(0, |r| r.saturating_add(1))
        };
        let product = self
            .products
            .entry(backfill.product_id.clone())
            .or_default();
        let mut rest: Vec<&Candle> = backfill
            .minutes
            .iter()
            .filter(|c| c.granularity == minute && (from..to).contains(&c.start.timestamp()))
            .collect();
        rest.sort_by_key(|c| c.start);
        rest.dedup_by_key(|c| c.start);
        let minutes = &mut product.slots[minute.index()];
        for c in &rest {
            let start = c.start.timestamp();
            let held = minutes.binary_search_by_key(&start, |s| s.start);
            let slot = Slot {
                start,
                tally: Tally::of_candle(c, now),
                revision: next_revision(held.ok().map(|i| minutes[i].revision), minute, start),
                complete: due(start, minute),
                dirty: true,
                backfilled: true,
            };
            match held {
                Ok(i) => minutes[i] = slot,
                Err(i) => minutes.insert(i, slot),
            }
            outcome.replaced += 1;
        }
        let lo = minutes.partition_point(|s| s.start < from);
        let hi = minutes.partition_point(|s| s.start < to);
        outcome.kept = minutes[lo..hi].iter().filter(|s| !s.backfilled).count() as u64;
        for c in &backfill.context {
            let start = c.start.timestamp();
            if c.granularity != minute || (from..to).contains(&start) {
                continue;
            }
            if let Err(i) = minutes.binary_search_by_key(&start, |s| s.start) {
                minutes.insert(
                    i,
                    Slot {
                        start,
                        tally: Tally::of_candle(c, now),
                        revision: stored.get(&(minute.index(), start)).copied().unwrap_or(0),
                        complete: due(start, minute),
                        dirty: false,
                        backfilled: c.trade_count.is_none(),
                    },
                );
            }
        }
        if let Some(last) = rest.last() {
            product.backfilled_until = product.backfilled_until.max(last.start.timestamp() + 60);
            product.touch(minute, from);
        }
        for g in &Granularity::ALL[1..] {
            let g = *g;
            let mut bucket = g.bucket_start_secs(from);
            while bucket < to {
                let minutes = &product.slots[minute.index()];
                let lo = minutes.partition_point(|s| s.start < bucket);
                let hi = minutes.partition_point(|s| s.start < bucket + g.seconds());
                if let Some((first, rest)) = minutes[lo..hi].split_first() {
                    let mut tally = first.tally.clone();
                    for s in rest {
                        tally.merge(&s.tally);
                    }
                    let slots = &mut product.slots[g.index()];
                    let held = slots.binary_search_by_key(&bucket, |s| s.start);
                    let slot = Slot {
                        start: bucket,
                        tally,
                        revision: next_revision(held.ok().map(|i| slots[i].revision), g, bucket),
                        complete: due(bucket, g),
                        dirty: true,
                        backfilled: false,
                    };
                    match held {
                        Ok(i) => slots[i] = slot,
                        Err(i) => slots.insert(i, slot),
                    }
                    product.touch(g, bucket);
                    outcome.recomputed += 1;
                }
                bucket += g.seconds();
            }
        }
        emit_dirty(&backfill.product_id, product, out);
        outcome
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

/// Compares our completed 5-minute candle starting at `start` with the last one Coinbase
/// sent for that bucket, if it sent one.
fn cross_check(
    product_id: &str,
    product: &mut ProductCandles,
    start: i64,
    checks: &mut Vec<CrossCheck>,
) {
    let g = Granularity::FiveMinutes;
    let Some(i) = product
        .exchange
        .iter()
        .position(|(c, _)| c.start.timestamp() == start)
    else {
        return;
    };
    let (theirs, received) = product.exchange.remove(i);
    let Ok(slot) = product.slots[g.index()].binary_search_by_key(&start, |s| s.start) else {
        return;
    };
    let ours = product.slots[g.index()][slot]
        .tally
        .candle(product_id, g, start);
    let theirs_final = received.timestamp() >= start + g.seconds();
    let verdict = compare(&ours, &theirs, theirs_final);
    checks.push(CrossCheck {
        ours,
        theirs,
        verdict,
    });
}

fn emit_dirty(product_id: &str, product: &mut ProductCandles, out: &mut Vec<CandleUpdate>) {
    for g in Granularity::ALL {
        let from = std::mem::replace(&mut product.dirty_from[g.index()], i64::MAX);
        if from == i64::MAX {
            continue;
        }
        let slots = &mut product.slots[g.index()];
        let begin = slots.partition_point(|s| s.start < from);
        for slot in &mut slots[begin..] {
            if !slot.dirty {
                continue;
            }
            slot.dirty = false;
            let t = &slot.tally;
            out.push(CandleUpdate {
                candle: t.candle(product_id, g, slot.start),
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
