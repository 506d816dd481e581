//! The candle engine's pure core: the candles of the products one shard owns.
//!
//! In: batches of trades (with the clock's current time), clock ticks, Coinbase's 5-minute
//! candles and the feed's notices. Out: one [`CandleUpdate`] per candle a batch or tick
//! changed, and the cross-checks done. No I/O and no `.await`: the async shell in
//! `candles::shard` moves data in and out. Backfills are merged in [`super::backfill`].
//!
//! Semantics (design.md, "Candle semantics"): buckets `[start, start + g)` by exchange time
//! aligned to the UTC epoch; open/close are the first/last trade by (time, numeric trade id),
//! whatever the arrival order; a candle completes when the clock passes its end plus the grace
//! period; a trade for a complete candle within the revision window re-emits it, complete,
//! with revision + 1; a trade id already applied changes nothing.
//!
//! Rejected, counted and logged (at most once a minute per product and reason), applied to no
//! granularity so every granularity stays the aggregation of the same trades:
//! - a trade whose 1-minute bucket ended longer ago than the revision window (too late);
//! - a trade stamped more than [`Timing::max_ahead`] after the clock (from the future);
//! - a trade that would overflow a sum (volume, buy volume, trade count) of any candle it
//!   belongs to. Every candle it would join is checked before any changes.
//!
//! The trade ids of a minute are forgotten exactly when its trades become too late, so a
//! repeated trade is either ignored as a duplicate or rejected as too late: never applied
//! twice.

use chrono::{DateTime, TimeDelta, Utc};
use rustc_hash::FxHashMap;

use super::coverage::FeedNotice;
use super::crosscheck::CrossCheck;
use super::limiter::LogLimiter;
use super::product::ProductCandles;
use super::run::Run;
use super::tally::Tally;
use crate::model::{Candle, CandleUpdate, Granularity, ProductId, Trade};

/// Timing of completion and revisions.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A candle completes when the clock passes its end plus this.
    pub grace: TimeDelta,
    /// Trades whose 1-minute bucket ended at most this long ago still revise candles.
    pub revision_window: TimeDelta,
    /// Trades stamped more than this after the engine's clock are rejected: Coinbase stamps
    /// a trade before we receive it, so only a wrong stamp (or a clock far behind) gets
    /// here, and its candles would stay the newest of their keys for good. 5 s leaves room
    /// for a host clock a few seconds behind Coinbase's without letting a bad stamp through.
    pub max_ahead: TimeDelta,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            grace: TimeDelta::seconds(2),
            revision_window: TimeDelta::minutes(5),
            max_ahead: TimeDelta::seconds(5),
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
    /// Trades stamped more than [`Timing::max_ahead`] after the clock.
    pub rejected_future: u64,
    /// Trades that would overflow a sum of a candle.
    pub rejected_overflow: u64,
}

/// Sizes of everything the aggregator holds (for memory checks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub products: usize,
    /// Candles of every granularity.
    pub candles: usize,
    /// Trade ids held for deduplication.
    pub trade_ids: usize,
    /// Minutes those ids are filed under (and ids filed: equal to `trade_ids`).
    pub id_minutes: usize,
    pub ids_filed: usize,
    /// Coinbase 5-minute candles waiting for ours.
    pub exchange_candles: usize,
    /// Missing and backfilled windows held for the cross-check.
    pub windows: usize,
    /// Keys of the log limiters.
    pub log_keys: usize,
}

/// Log limiters, one per reason.
#[derive(Debug, Default)]
pub(crate) struct Limiters {
    too_late: LogLimiter,
    future: LogLimiter,
    pub(crate) overflow: LogLimiter,
}

/// The candles of the products one shard owns.
#[derive(Debug)]
pub struct Aggregator {
    pub(crate) timing: Timing,
    /// Fx hashing: keys are `ProductId`s of products the feed subscribed (trades of any other
    /// product are dropped at the connection), and this is the hot path.
    pub(crate) products: FxHashMap<ProductId, ProductCandles>,
    /// Cross-checks done since the last [`Aggregator::take_checks`].
    checks: Vec<CrossCheck>,
    /// Unsubscribed products and when they are forgotten (Unix seconds): once every open
    /// candle of theirs has ended and been completed.
    leaving: FxHashMap<ProductId, i64>,
    pub(crate) limiters: Limiters,
    /// The run being gathered, kept between batches for its buffer.
    run: Run,
}

impl Aggregator {
    pub fn new(timing: Timing) -> Self {
        Aggregator {
            timing,
            products: FxHashMap::default(),
            checks: Vec::new(),
            leaving: FxHashMap::default(),
            limiters: Limiters::default(),
            run: Run::default(),
        }
    }

    /// The state of `product_id`, made when missing.
    pub(crate) fn product(&mut self, product_id: &ProductId) -> &mut ProductCandles {
        self.products.entry(product_id.clone()).or_default()
    }

    /// Applies a batch of trades at clock time `now`, appending one update per changed candle
    /// to `out`. Each trade is checked on its own: one rejected trade costs that trade only.
    /// Accepted trades of one product and minute in a row are tallied first and merged
    /// into the granularities at once ([`super::run`]).
    pub fn apply(
        &mut self,
        trades: &[Trade],
        now: DateTime<Utc>,
        out: &mut Vec<CandleUpdate>,
    ) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let oldest_end = (now - self.timing.revision_window).timestamp();
        let latest = now + self.timing.max_ahead;
        let mut touched: Vec<&ProductId> = Vec::new();
        let mut run = std::mem::take(&mut self.run);
        for (index, t) in trades.iter().enumerate() {
            let minute = Granularity::OneMinute.bucket_start_secs(t.time.timestamp());
            if minute + 60 < oldest_end {
                outcome.too_late += 1;
                if let Some(suppressed) = self.limiters.too_late.allow(&t.product_id, now) {
                    tracing::warn!(
                        product = %t.product_id,
                        trade_id = %t.trade_id,
                        time = %t.time,
                        suppressed,
                        "trade older than the revision window, not applied \
                         (one line a minute per product; suppressed: since the last)"
                    );
                }
                continue;
            }
            if t.time > latest {
                outcome.rejected_future += 1;
                if let Some(suppressed) = self.limiters.future.allow(&t.product_id, now) {
                    tracing::warn!(
                        product = %t.product_id,
                        trade_id = %t.trade_id,
                        time = %t.time,
                        clock = %now,
                        suppressed,
                        "trade stamped ahead of the clock, not applied"
                    );
                }
                continue;
            }
            if !run.takes(t, minute, trades) {
                self.merge_run(&mut run, trades, now, &mut outcome, &mut touched);
            }
            // Looked up first: nearly every trade finds its product and needs no allocation.
            let product = match self.products.get_mut(t.product_id.as_str()) {
                Some(p) => p,
                None => self.products.entry(t.product_id.clone()).or_default(),
            };
            if product.is_backfilled(minute) {
                outcome.superseded += 1;
                continue;
            }
            if product.seen.contains(&t.trade_id) {
                outcome.duplicates += 1;
                continue;
            }
            // Recorded now, so a repeat later in the run is a duplicate.
            product.see(t.trade_id, minute);
            run.push(index, t, minute);
        }
        self.merge_run(&mut run, trades, now, &mut outcome, &mut touched);
        self.run = run;
        for product_id in touched {
            if let Some(product) = self.products.get_mut(product_id) {
                product.emit_dirty(product_id, out);
            }
        }
        outcome
    }

    /// Merges the run's tally into its product's candles, or, when a sum would overflow,
    /// applies its trades one by one so only a trade that overflows is rejected; empties
    /// the run.
    fn merge_run<'t>(
        &mut self,
        run: &mut Run,
        trades: &'t [Trade],
        now: DateTime<Utc>,
        outcome: &mut BatchOutcome,
        touched: &mut Vec<&'t ProductId>,
    ) {
        let Some(&first) = run.members.first() else {
            return;
        };
        let product_id = &trades[first].product_id;
        let now_ms = now.timestamp_millis();
        let grace_ms = self.timing.grace.num_milliseconds();
        let Some(product) = self.products.get_mut(product_id) else {
            run.clear();
            return;
        };
        let minute = run.minute;
        let placed = match (&run.tally, run.overflow) {
            (Some(tally), false) => product
                .plan_tally(tally, minute)
                .map(|places| (tally, places)),
            _ => None,
        };
        if let Some((tally, places)) = placed {
            product.commit_tally(tally, minute, places, now_ms, grace_ms);
            outcome.applied += run.members.len() as u64;
        } else {
            product.unsee(run.members.iter().map(|&i| trades[i].trade_id), minute);
            for &i in &run.members {
                let t = &trades[i];
                let one = Tally::of(t);
                let Some(places) = product.plan_tally(&one, minute) else {
                    outcome.rejected_overflow += 1;
                    if let Some(suppressed) = self.limiters.overflow.allow(&t.product_id, now) {
                        tracing::warn!(
                            product = %t.product_id,
                            trade_id = %t.trade_id,
                            price = %t.price,
                            size = %t.size,
                            suppressed,
                            "trade would overflow a candle's sums, not applied"
                        );
                    }
                    continue;
                };
                product.commit_tally(&one, minute, places, now_ms, grace_ms);
                product.see(t.trade_id, minute);
                outcome.applied += 1;
            }
        }
        if !touched.contains(&product_id) {
            touched.push(product_id);
        }
        run.clear();
    }

    /// Takes what the feed said about `product_id`'s trades: which minutes are whole.
    /// [`FeedNotice::Unsubscribed`] has the product forgotten once its open candles have
    /// ended and been completed by the ticks (so no stored candle stays incomplete); a
    /// subscribe before then keeps it.
    pub fn feed_notice(&mut self, product_id: &ProductId, notice: FeedNotice) {
        if notice == FeedNotice::Unsubscribed {
            let Some(product) = self.products.get(product_id) else {
                return;
            };
            let grace = self.timing.grace.num_seconds() + 1;
            let open_until = Granularity::ALL
                .iter()
                .flat_map(|g| {
                    product.slots[g.index()]
                        .iter()
                        .filter(|s| !s.complete)
                        .map(|s| s.start.saturating_add(g.seconds()))
                })
                .max();
            match open_until {
                Some(end) => {
                    self.leaving.insert(product_id.clone(), end + grace);
                }
                None => {
                    self.products.remove(product_id);
                }
            }
            return;
        }
        if matches!(notice, FeedNotice::Subscribed { .. }) {
            self.leaving.remove(product_id);
        }
        self.product(product_id).coverage.note(notice);
    }

    /// Completes the candles whose end plus grace the clock has passed, appending their
    /// complete updates to `out`, cross-checks completed 5-minute candles with Coinbase's,
    /// and forgets what the revision window (and the current day's minutes) no longer need.
    pub fn tick(&mut self, now: DateTime<Utc>, out: &mut Vec<CandleUpdate>) {
        self.tick_products(now, out);
        if !self.leaving.is_empty() {
            // After the completions above: an unsubscribed product whose candles have all
            // ended (and so been completed) is forgotten.
            let now_secs = now.timestamp();
            let products = &mut self.products;
            self.leaving.retain(|product_id, at| {
                let stay = *at > now_secs;
                if !stay {
                    products.remove(product_id);
                }
                stay
            });
        }
    }

    fn tick_products(&mut self, now: DateTime<Utc>, out: &mut Vec<CandleUpdate>) {
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
                    checks.extend(
                        completed
                            .into_iter()
                            .filter_map(|start| product.cross_check(product_id, start)),
                    );
                }
            }
            product.emit_dirty(product_id, out);
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
                    .partition_point(|s| s.start < keep_from && s.complete)
                    .min(slots.len().saturating_sub(1));
                slots.drain(..old);
            }
            if let Some(newest) = product.slots[Granularity::FiveMinutes.index()].last() {
                let keep_from = newest.start - Granularity::FiveMinutes.seconds();
                product
                    .exchange
                    .retain(|(c, _)| c.start.timestamp() >= keep_from);
            }
            // A minute's trades are too late once `minute + 60 < oldest_end`: its ids go then.
            product.forget_ids_before(oldest_end - 60);
            // The cross-check looks at the minutes of 5-minute buckets completing now.
            product
                .coverage
                .forget_before(oldest_end - 2 * Granularity::FiveMinutes.seconds());
        }
        for limiter in [
            &mut self.limiters.too_late,
            &mut self.limiters.future,
            &mut self.limiters.overflow,
        ] {
            for (product, suppressed) in limiter.expire(now) {
                tracing::warn!(product, suppressed, "rejected trades not logged one by one");
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
            // Only products the engine holds: candles never create one (an id the feed did not
            // subscribe must not grow the map).
            let Some(product) = self.products.get_mut(&c.product_id) else {
                continue;
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

    /// Everything held, counted (for memory checks).
    pub fn footprint(&self) -> Footprint {
        let mut f = Footprint {
            products: self.products.len(),
            log_keys: self.limiters.too_late.len()
                + self.limiters.future.len()
                + self.limiters.overflow.len(),
            ..Footprint::default()
        };
        for p in self.products.values() {
            f.candles += p.slots.iter().map(Vec::len).sum::<usize>();
            f.trade_ids += p.seen.len();
            f.id_minutes += p.seen_by_minute.len();
            f.ids_filed += p.seen_by_minute.values().map(Vec::len).sum::<usize>();
            f.exchange_candles += p.exchange.len();
            f.windows += p.coverage.windows();
        }
        f
    }
}
