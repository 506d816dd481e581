//! Backfill: REST one-minute candles replace whole minutes of a window whose trades may be
//! missing; such a minute takes no more trades (REST already holds them), its trade count and
//! buy volume are unknown (and so are those of every candle containing it), and every larger
//! candle over the window is recomputed from its minutes with a higher revision. The minutes
//! of the current day are held for that.
//!
//! In: a [`Backfill`] from the reconciler and the clock's time. Out: one [`CandleUpdate`] per
//! replaced minute and recomputed candle, and a [`BackfillOutcome`]. Everything is computed
//! before anything changes: a backfill whose candles would overflow a sum changes nothing
//! and is counted as rejected.

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;

use super::aggregator::Aggregator;
use super::product::Slot;
use super::tally::{Tally, within_limit};
use crate::model::{Candle, CandleUpdate, Granularity, ProductId};

/// Coinbase's one-minute candles for a window of minutes whose trades may be missing, with
/// what the engine needs to recompute the larger candles around them.
#[derive(Debug, Clone, PartialEq)]
pub struct Backfill {
    pub product_id: ProductId,
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
    /// The backfill was not merged: a recomputed candle would overflow a sum.
    pub rejected_overflow: bool,
}

impl Aggregator {
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
        let mut rest: Vec<&Candle> = backfill
            .minutes
            .iter()
            .filter(|c| c.granularity == minute && (from..to).contains(&c.start.timestamp()))
            .collect();
        rest.sort_by_key(|c| c.start);
        rest.dedup_by_key(|c| c.start);
        let product = self.product(&backfill.product_id);
        // The new minutes, built aside: nothing changes until every sum is known to fit.
        let mut minutes = product.slots[minute.index()].clone();
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
        // A REST or stored minute past the sum limit is absurd: no sum is formed from it.
        outcome.rejected_overflow = minutes.iter().any(|s| !within_limit(s.tally.volume));
        let mut recomputed: Vec<(Granularity, Slot)> = Vec::new();
        for g in &Granularity::ALL[1..] {
            let g = *g;
            let mut bucket = g.bucket_start_secs(from);
            while bucket < to {
                let lo = minutes.partition_point(|s| s.start < bucket);
                let hi = minutes.partition_point(|s| s.start < bucket + g.seconds());
                if let Some((first, others)) = minutes[lo..hi].split_first() {
                    let mut tally = first.tally.clone();
                    for s in others {
                        if tally.merge(&s.tally).is_none() {
                            outcome.rejected_overflow = true;
                        }
                    }
                    let slots = &product.slots[g.index()];
                    let held = slots.binary_search_by_key(&bucket, |s| s.start);
                    recomputed.push((
                        g,
                        Slot {
                            start: bucket,
                            tally,
                            revision: next_revision(
                                held.ok().map(|i| slots[i].revision),
                                g,
                                bucket,
                            ),
                            complete: due(bucket, g),
                            dirty: true,
                            backfilled: false,
                        },
                    ));
                }
                bucket += g.seconds();
            }
        }
        if outcome.rejected_overflow {
            tracing::warn!(
                product = %backfill.product_id,
                from = backfill.from,
                to = backfill.to,
                "backfill not merged: its candles would overflow a sum"
            );
            return BackfillOutcome {
                rejected_overflow: true,
                ..BackfillOutcome::default()
            };
        }
        // Commit.
        product.slots[minute.index()] = minutes;
        if let Some(last) = rest.last() {
            product.backfilled_until = product.backfilled_until.max(last.start.timestamp() + 60);
            product.touch(minute, from);
        }
        for (g, slot) in recomputed {
            let slots = &mut product.slots[g.index()];
            let start = slot.start;
            match slots.binary_search_by_key(&start, |s| s.start) {
                Ok(i) => slots[i] = slot,
                Err(i) => slots.insert(i, slot),
            }
            product.touch(g, start);
            outcome.recomputed += 1;
        }
        product.coverage.fill(from, to);
        product.emit_dirty(&backfill.product_id, out);
        outcome
    }
}
