//! The reconciler's bookkeeping, free of any runtime: which windows wait, which products are
//! busy, when the next window is due, which products the next cross-check round compares.
//!
//! In: feed notices ([`Scheduler::on_notice`]), the clock's time (passed in), finished
//! windows ([`Scheduler::on_done`]) and cross-check results ([`Scheduler::on_checked`]).
//! Out: the windows to start now ([`Scheduler::take_ready`]), when to look again
//! ([`Scheduler::next_due`]) and the products of a cross-check round
//! ([`Scheduler::check_round`]). The async loop in `mod.rs` only moves these between
//! channels, tasks and timers.
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
mod tests {
    use super::super::windows::WindowKind;
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn rules() -> Rules {
        Rules {
            backfill: true,
            concurrency: 2,
            grace: TimeDelta::seconds(2),
            settle: Duration::from_secs(5),
        }
    }

    fn gap(products: &[&str], since: &str, at: &str) -> FeedEvent {
        FeedEvent::Gap {
            connection: 1,
            products: products
                .iter()
                .map(|p| ProductId::parse(p).expect("an id"))
                .collect(),
            expected: 5,
            got: 9,
            since: t(&format!("2026-11-23T{since}Z")),
            at: t(&format!("2026-11-23T{at}Z")),
        }
    }

    fn subscribed(products: &[&str], at: &str) -> FeedEvent {
        FeedEvent::Subscribed {
            connection: 1,
            products: products
                .iter()
                .map(|p| ProductId::parse(p).expect("an id"))
                .collect(),
            at: t(at),
        }
    }

    #[test]
    fn a_window_is_due_after_its_last_minute_completes_and_settles() {
        let mut s = Scheduler::new(rules());
        assert_eq!(s.on_notice(&gap(&["A-USD"], "10:00:30", "10:01:40")), 1);
        // The last minute, 10:01, completes at 10:02:00 + 2 s grace; REST settles 5 s later.
        let due = t("2026-11-23T10:02:07Z");
        assert_eq!(s.next_due(), Some(due));
        for early in [
            "2026-11-23T10:01:40Z",
            "2026-11-23T10:02:00Z",
            "2026-11-23T10:02:06Z",
        ] {
            assert!(s.take_ready(t(early)).is_empty(), "not due at {early}");
        }
        assert_eq!(s.pending(), 1);
        let ready = s.take_ready(due);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].kind, WindowKind::Gap);
        assert_eq!(
            (ready[0].from, ready[0].to),
            (t("2026-11-23T10:00:25Z"), t("2026-11-23T10:01:40Z"))
        );
        assert_eq!(
            (s.pending(), s.running()),
            (0, 1),
            "taken: running, not waiting"
        );
        assert_eq!(s.next_due(), None, "nothing waits");
        s.on_done(&crate::model::ProductId::from_static("A-USD"));
        assert_eq!(s.running(), 0);

        // A window ending exactly on a minute is due that minute's grace and settle later.
        let mut s = Scheduler::new(rules());
        s.on_notice(&gap(&["A-USD"], "10:00:30", "10:02:00"));
        assert_eq!(s.next_due(), Some(t("2026-11-23T10:02:07Z")));
    }

    #[test]
    fn a_start_window_is_due_at_once_and_its_minute_when_that_completes() {
        let mut s = Scheduler::new(rules());
        assert_eq!(
            s.on_notice(&subscribed(&["A-USD"], "2026-11-23T10:00:30Z")),
            2
        );
        assert_eq!(s.next_due(), Some(t("2026-11-23T10:00:07Z")), "already due");
        let ready = s.take_ready(t("2026-11-23T10:00:30Z"));
        assert_eq!(
            ready.iter().map(|j| j.kind).collect::<Vec<_>>(),
            vec![WindowKind::Start]
        );
        // The edge waits for the start window of its product, then for its minute.
        assert_eq!(s.next_due(), None, "A-USD is busy");
        s.on_done(&crate::model::ProductId::from_static("A-USD"));
        assert_eq!(s.next_due(), Some(t("2026-11-23T10:01:07Z")));
        assert!(s.take_ready(t("2026-11-23T10:01:06Z")).is_empty());
        assert_eq!(s.take_ready(t("2026-11-23T10:01:07Z")).len(), 1);
    }

    #[test]
    fn one_window_per_product_and_at_most_concurrency_at_once() {
        let mut s = Scheduler::new(rules());
        s.on_notice(&gap(&["A-USD", "B-USD", "C-USD"], "10:00:00", "10:00:30"));
        let now = t("2026-11-23T10:05:00Z");
        let first = s.take_ready(now);
        assert_eq!(
            first.iter().map(|j| j.product.as_str()).collect::<Vec<_>>(),
            ["A-USD", "B-USD"],
            "two at once, in order"
        );
        assert_eq!(s.next_due(), None, "full");
        assert!(s.take_ready(now).is_empty());
        // A new window of a busy product waits for it, even when due and a slot is free.
        s.on_notice(&gap(&["A-USD"], "10:03:00", "10:03:10"));
        s.on_done(&crate::model::ProductId::from_static("B-USD"));
        let next = s.take_ready(now);
        assert_eq!(
            next.iter().map(|j| j.product.as_str()).collect::<Vec<_>>(),
            ["C-USD"],
            "A-USD is still busy"
        );
        assert_eq!(s.next_due(), None, "full again");
        s.on_done(&crate::model::ProductId::from_static("A-USD"));
        assert_eq!(s.next_due(), Some(t("2026-11-23T10:04:07Z")));
        let last = s.take_ready(now);
        assert_eq!(last.len(), 1);
        assert_eq!(
            (last[0].product.as_str(), last[0].from, last[0].to),
            (
                "A-USD",
                t("2026-11-23T10:02:55Z"),
                t("2026-11-23T10:03:10Z")
            )
        );
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn with_backfill_off_notices_queue_nothing_but_products_are_still_checked() {
        let mut s = Scheduler::new(Rules {
            backfill: false,
            ..rules()
        });
        assert_eq!(
            s.on_notice(&subscribed(&["A-USD"], "2026-11-23T10:00:30Z")),
            0
        );
        assert_eq!(s.pending(), 0);
        assert_eq!(s.next_due(), None);
        let round = s.check_round().expect("a round");
        assert_eq!(round, vec![(ProductId::from_static("A-USD"), None)]);
        // A wrong minute is not repaired without backfill.
        let queued = s.on_checked(vec![Checked {
            product: crate::model::ProductId::from_static("A-USD"),
            until: 600,
            wrong: vec![60],
        }]);
        assert_eq!((queued, s.pending()), (0, 0));
    }

    #[test]
    fn cross_check_rounds_take_idle_products_in_turn_and_repair_wrong_minutes() {
        let mut s = Scheduler::new(rules());
        let products: Vec<String> = (0..12).map(|i| format!("P{i:02}-USD")).collect();
        let names: Vec<&str> = products.iter().map(String::as_str).collect();
        s.on_notice(&subscribed(&names, "2026-11-23T10:00:30Z"));
        assert_eq!(s.check_round(), None, "every product has windows waiting");
        // Run every window to the end.
        let mut now = t("2026-11-23T10:00:30Z");
        while s.pending() > 0 {
            for job in s.take_ready(now) {
                s.on_done(&job.product);
            }
            now += TimeDelta::seconds(30);
        }
        let first = s.check_round().expect("a round");
        assert_eq!(first.len(), CHECK_PRODUCTS_PER_ROUND);
        assert_eq!(first[0], (ProductId::from_static("P00-USD"), None));
        assert!(s.checking());
        assert_eq!(s.check_round(), None, "one round at a time");
        let checked = first
            .iter()
            .map(|(p, _)| Checked {
                product: p.clone(),
                until: 6_000,
                wrong: if p == "P03-USD" { vec![5_940] } else { vec![] },
            })
            .collect();
        assert_eq!(s.on_checked(checked), 1);
        assert!(!s.checking());
        assert_eq!(s.pending(), 1);
        // The next round goes on from where the last stopped, past the product under repair,
        // and says how far each was checked.
        let second = s.check_round().expect("a round");
        let second: Vec<_> = second
            .iter()
            .map(|(p, since)| (p.as_str(), *since))
            .collect();
        assert!(!second.iter().any(|(p, _)| *p == "P03-USD"), "{second:?}");
        assert_eq!(second[0], ("P11-USD", None));
        assert_eq!(second[1], ("P00-USD", Some(6_000)));
        s.on_checked(Vec::new());
        // The repair window takes the wrong minute again once it has settled.
        let repair = s.take_ready(t("2026-11-23T12:00:00Z"));
        assert_eq!(repair.len(), 1);
        assert_eq!(
            (
                repair[0].kind,
                repair[0].from.timestamp(),
                repair[0].to.timestamp()
            ),
            (WindowKind::Repair, 5_940, 6_000)
        );
    }
}
