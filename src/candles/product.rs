//! The state the engine holds for one product: its candles per granularity, the trade ids it
//! applied (for deduplication), Coinbase's recent 5-minute candles and which minutes are
//! whole ([`Coverage`]).
//!
//! In: checked changes from the aggregator and backfills. Out: one [`CandleUpdate`] per
//! changed ("dirty") candle ([`ProductCandles::emit_dirty`]) and the 5-minute cross-checks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashSet;

use super::coverage::Coverage;
use super::crosscheck::{CrossCheck, Verdict, compare};
use super::tally::{Sums, Tally};
use crate::model::{Candle, CandleUpdate, Granularity, ProductId, TradeId};

/// One candle as the engine holds it.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    /// Bucket start, Unix seconds.
    pub(crate) start: i64,
    pub(crate) tally: Tally,
    pub(crate) revision: u32,
    pub(crate) complete: bool,
    /// Changed since its last emitted update.
    pub(crate) dirty: bool,
    /// A one-minute candle taken whole from REST: it takes no more trades.
    pub(crate) backfilled: bool,
}

impl Slot {
    /// Merges a tally (of one trade or of several) whose sums were checked.
    pub(crate) fn merge(&mut self, tally: &Tally, sums: Sums) {
        self.tally.merge_with(tally, sums);
        if self.complete && !self.dirty {
            // Late trades for a complete candle: a new revision, still complete.
            self.revision = self.revision.saturating_add(1);
        }
        self.dirty = true;
    }

    /// A new candle of `tally` starting at `start`: complete at once when its bucket (of
    /// `seconds`) is already past its grace at `now_ms`.
    fn new(start: i64, tally: Tally, seconds: i64, now_ms: i64, grace_ms: i64) -> Slot {
        Slot {
            start,
            tally,
            revision: 0,
            complete: now_ms >= (start + seconds) * 1000 + grace_ms,
            dirty: true,
            backfilled: false,
        }
    }
}

/// Where a tally goes in one granularity: an existing slot, or a new one at an index.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Place {
    Held(usize, Sums),
    New(usize),
}

/// The candles of one product.
#[derive(Debug)]
pub(crate) struct ProductCandles {
    /// Per granularity (index = `Granularity::index`), slots ordered by start. One-minute
    /// slots are held for the whole current day, so any larger candle of the day can be
    /// recomputed from its minutes after a backfill.
    pub(crate) slots: [Vec<Slot>; 8],
    /// Per granularity, the earliest start of a dirty slot (`i64::MAX`: none).
    pub(crate) dirty_from: [i64; 8],
    /// End of the newest backfilled minute (`i64::MIN`: none).
    pub(crate) backfilled_until: i64,
    /// Trade ids applied, for deduplication, by the start of their 1-minute bucket.
    pub(crate) seen: FxHashSet<TradeId>,
    pub(crate) seen_by_minute: BTreeMap<i64, Vec<TradeId>>,
    /// Coinbase's latest `candles`-channel candle of each recent 5-minute bucket, with when it
    /// was received.
    pub(crate) exchange: Vec<(Candle, DateTime<Utc>)>,
    /// Which minutes are whole, for the cross-check.
    pub(crate) coverage: Coverage,
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
            coverage: Coverage::default(),
        }
    }
}

impl ProductCandles {
    pub(crate) fn touch(&mut self, g: Granularity, start: i64) {
        let from = &mut self.dirty_from[g.index()];
        *from = (*from).min(start);
    }

    /// Whether the minute starting at `minute` was replaced by a REST candle.
    pub(crate) fn is_backfilled(&self, minute: i64) -> bool {
        minute < self.backfilled_until
            && self.slots[Granularity::OneMinute.index()]
                .binary_search_by_key(&minute, |s| s.start)
                .is_ok_and(|i| self.slots[Granularity::OneMinute.index()][i].backfilled)
    }

    /// Where the tally of trades of the minute starting at `minute` (one trade's, or a run's)
    /// goes in every granularity, with the checked sums of each slot it joins; `None` when
    /// one of them would overflow. Nothing changes, so a tally that cannot be added leaves
    /// every candle as it was.
    pub(crate) fn plan_tally(&self, tally: &Tally, minute: i64) -> Option<[Place; 8]> {
        if !super::tally::within_limit(tally.volume) {
            return None;
        }
        let mut places = [Place::New(0); 8];
        for g in Granularity::ALL {
            let start = g.bucket_start_secs(minute);
            let slots = &self.slots[g.index()];
            // Nearly every trade lands in the newest bucket: search from the back.
            places[g.index()] = match slots.iter().rposition(|s| s.start <= start) {
                Some(i) if slots[i].start == start => {
                    Place::Held(i, slots[i].tally.sums_with_tally(tally)?)
                }
                position => Place::New(position.map_or(0, |i| i + 1)),
            };
        }
        Some(places)
    }

    /// Merges `tally` where [`ProductCandles::plan_tally`] placed it. Its trade ids were
    /// recorded as they were taken ([`ProductCandles::see`]).
    pub(crate) fn commit_tally(
        &mut self,
        tally: &Tally,
        minute: i64,
        places: [Place; 8],
        now_ms: i64,
        grace_ms: i64,
    ) {
        for g in Granularity::ALL {
            let start = g.bucket_start_secs(minute);
            let slots = &mut self.slots[g.index()];
            match places[g.index()] {
                Place::Held(i, sums) => slots[i].merge(tally, sums),
                Place::New(at) => slots.insert(
                    at,
                    Slot::new(start, tally.clone(), g.seconds(), now_ms, grace_ms),
                ),
            }
            self.touch(g, start);
        }
    }

    /// Records `id`, of the minute starting at `minute`, as applied.
    pub(crate) fn see(&mut self, id: TradeId, minute: i64) {
        self.seen.insert(id);
        match self.seen_by_minute.last_entry() {
            Some(mut last) if *last.key() == minute => last.get_mut().push(id),
            _ => self.seen_by_minute.entry(minute).or_default().push(id),
        }
    }

    /// Takes back the last `ids` recorded by [`ProductCandles::see`], all of the minute
    /// starting at `minute` and recorded in this order, last.
    pub(crate) fn unsee(&mut self, ids: impl Iterator<Item = TradeId>, minute: i64) {
        let filed = self.seen_by_minute.get_mut(&minute);
        let mut count = 0;
        for id in ids {
            self.seen.remove(&id);
            count += 1;
        }
        if let Some(filed) = filed {
            filed.truncate(filed.len().saturating_sub(count));
            if filed.is_empty() {
                self.seen_by_minute.remove(&minute);
            }
        }
    }

    /// Forgets the trade ids of the minutes before `first_kept` (Unix seconds).
    pub(crate) fn forget_ids_before(&mut self, first_kept: i64) {
        while let Some(entry) = self.seen_by_minute.first_entry() {
            if *entry.key() >= first_kept {
                break;
            }
            for id in entry.remove() {
                self.seen.remove(&id);
            }
        }
    }

    /// Compares our completed 5-minute candle starting at `start` with the last one Coinbase
    /// sent for that bucket, if it sent one. A candle with a minute not held whole is not
    /// comparable: the comparison is counted as such, not judged.
    pub(crate) fn cross_check(&mut self, product_id: &ProductId, start: i64) -> Option<CrossCheck> {
        let g = Granularity::FiveMinutes;
        let i = self
            .exchange
            .iter()
            .position(|(c, _)| c.start.timestamp() == start)?;
        let (theirs, received) = self.exchange.remove(i);
        let slot = self.slots[g.index()]
            .binary_search_by_key(&start, |s| s.start)
            .ok()?;
        let ours = self.slots[g.index()][slot]
            .tally
            .candle(product_id, g, start);
        let whole = (0..5).all(|m| self.coverage.minute_whole(start + 60 * m));
        let verdict = if whole {
            let theirs_final = received.timestamp() >= start + g.seconds();
            compare(&ours, &theirs, theirs_final)
        } else {
            Verdict::NotComparable
        };
        Some(CrossCheck {
            ours,
            theirs,
            verdict,
        })
    }

    /// Appends an update for every dirty candle to `out` and marks them clean.
    pub(crate) fn emit_dirty(&mut self, product_id: &ProductId, out: &mut Vec<CandleUpdate>) {
        for g in Granularity::ALL {
            let from = std::mem::replace(&mut self.dirty_from[g.index()], i64::MAX);
            if from == i64::MAX {
                continue;
            }
            let slots = &mut self.slots[g.index()];
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
                    counted_trades: t.trade_count,
                    last_trade_id: t.last.1,
                    last_trade_time: t.last.0,
                    last_received: t.last_received,
                });
            }
        }
    }
}
