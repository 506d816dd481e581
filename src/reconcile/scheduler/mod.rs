//! The reconciler's bookkeeping, free of any runtime: which windows wait, which products are
//! busy, when the next window is due, which products the next cross-check round compares.
//!
//! In: feed notices ([`Scheduler::on_notice`]), the clock's time (passed in), finished
//! windows ([`Scheduler::on_done`]) and cross-check results ([`Scheduler::on_checked`]).
//! Out: the windows to start now ([`Scheduler::take_ready`]), when to look again
//! ([`Scheduler::next_due`]) and the products of a cross-check round
//! ([`Scheduler::check_round`]). The reconciler's async loop (`reconcile/mod.rs`) only
//! moves these between channels, tasks and timers.
//!
//! Rules: one window per product at a time, at most `concurrency` at once; a waiting window
//! of a product merges with the next one of it (see [`queue`]); a product is cross-checked
//! only while none of its windows waits or runs, `CHECK_PRODUCTS_PER_ROUND` per round in
//! turn; a minute the cross-check found wrong becomes a repair window.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::crosscheck::Checked;
use super::windows::{Job, due, jobs_of, queue, repair};
use crate::model::{FeedEvent, ProductId};

/// Products compared with REST per cross-check round.
pub(crate) const CHECK_PRODUCTS_PER_ROUND: usize = 10;

/// What the scheduler needs of the settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// Whether windows are backfilled at all (a zero horizon turns it off).
    pub(crate) backfill: bool,
    /// Windows fetched at once.
    pub(crate) concurrency: usize,
    /// The engine's grace: a minute is complete this long after its end.
    pub(crate) grace: TimeDelta,
    /// Wait for REST after a window's last minute completes.
    pub(crate) settle: Duration,
}

/// The reconciler's state between events.
#[derive(Debug)]
pub(crate) struct Scheduler {
    rules: Rules,
    /// Windows not started yet, in the order they came.
    pending: Vec<Job>,
    /// Products with a window running.
    busy: BTreeSet<ProductId>,
    /// Every product subscribed so far.
    products: BTreeSet<ProductId>,
    /// Per product, the minutes before this were cross-checked.
    checked_until: BTreeMap<ProductId, i64>,
    /// Where the next cross-check round starts among the products.
    rotation: usize,
    /// Whether a cross-check round runs.
    checking: bool,
}

impl Scheduler {
    pub(crate) fn new(rules: Rules) -> Self {
        Scheduler {
            rules,
            pending: Vec::new(),
            busy: BTreeSet::new(),
            products: BTreeSet::new(),
            checked_until: BTreeMap::new(),
            rotation: 0,
            checking: false,
        }
    }

    /// Takes in a feed notice: its products join the cross-check, its windows wait. Returns
    /// how many windows it queued.
    pub(crate) fn on_notice(&mut self, notice: &FeedEvent) -> u64 {
        match notice {
            FeedEvent::Subscribed { products, .. } => {
                self.products.extend(products.iter().cloned());
            }
            FeedEvent::Unsubscribed { products } => {
                // Delisted: no more cross-checks, and its waiting windows are dropped (a
                // running one ends by itself).
                for product in products {
                    self.products.remove(product);
                    self.checked_until.remove(product);
                }
                self.pending.retain(|job| !products.contains(&job.product));
                return 0;
            }
            _ => {}
        }
        if !self.rules.backfill {
            return 0;
        }
        let jobs = jobs_of(notice);
        let queued = jobs.len() as u64;
        for job in jobs {
            queue(&mut self.pending, job);
        }
        queued
    }

    /// When the earliest window that could start is due; `None` when none could (nothing
    /// waits, its products are busy, or `concurrency` windows run).
    pub(crate) fn next_due(&self) -> Option<DateTime<Utc>> {
        if self.busy.len() >= self.rules.concurrency {
            return None;
        }
        self.pending
            .iter()
            .filter(|j| !self.busy.contains(&j.product))
            .map(|j| self.due(j))
            .min()
    }

    /// The windows to start at `now`: due, of a product not busy, up to `concurrency`
    /// running. Their products are busy until [`Scheduler::on_done`].
    pub(crate) fn take_ready(&mut self, now: DateTime<Utc>) -> Vec<Job> {
        let mut ready = Vec::new();
        while self.busy.len() < self.rules.concurrency {
            let Some(i) = self
                .pending
                .iter()
                .position(|j| !self.busy.contains(&j.product) && self.due(j) <= now)
            else {
                break;
            };
            let job = self.pending.remove(i);
            self.busy.insert(job.product.clone());
            ready.push(job);
        }
        ready
    }

    /// A window of `product` finished (done, given up or failed).
    pub(crate) fn on_done(&mut self, product: &ProductId) {
        self.busy.remove(product);
    }

    /// Picks the next cross-check round: products neither busy nor waiting for a window, in
    /// turn, each with how far it was checked. `None` (and no round) while a round runs or
    /// when no product can be checked.
    pub(crate) fn check_round(&mut self) -> Option<Vec<(ProductId, Option<i64>)>> {
        if self.checking {
            return None;
        }
        let list: Vec<&ProductId> = self
            .products
            .iter()
            .filter(|p| !self.busy.contains(*p) && !self.pending.iter().any(|j| &j.product == *p))
            .collect();
        if list.is_empty() {
            return None;
        }
        let size = CHECK_PRODUCTS_PER_ROUND.min(list.len());
        let round: Vec<(ProductId, Option<i64>)> = (0..size)
            .map(|k| {
                let p = list[(self.rotation + k) % list.len()];
                (p.clone(), self.checked_until.get(p).copied())
            })
            .collect();
        self.rotation = self.rotation.wrapping_add(round.len());
        self.checking = true;
        Some(round)
    }

    /// A cross-check round ended (empty when it failed): the wrong minutes become repair
    /// windows, each product is checked up to where the round got. Returns how many windows
    /// it queued.
    pub(crate) fn on_checked(&mut self, checked: Vec<Checked>) -> u64 {
        self.checking = false;
        let mut queued = 0;
        for c in checked {
            if self.rules.backfill {
                for &minute in &c.wrong {
                    queue(&mut self.pending, repair(&c.product, minute));
                    queued += 1;
                }
            }
            self.checked_until.insert(c.product, c.until);
        }
        queued
    }

    /// Whether a cross-check round runs.
    pub(crate) fn checking(&self) -> bool {
        self.checking
    }

    /// Windows waiting to start.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Windows running (one per busy product).
    pub(crate) fn running(&self) -> usize {
        self.busy.len()
    }

    fn due(&self, job: &Job) -> DateTime<Utc> {
        due(job, self.rules.grace, self.rules.settle)
    }
}

#[cfg(test)]
mod tests;
