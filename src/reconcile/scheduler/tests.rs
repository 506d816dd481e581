//! The scheduler's rules: when a window is due, one per product and at most `concurrency` at
//! once, notices with backfill off, and cross-check rounds in turn with their repairs.

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
