//! Windows: the spans of one product whose trades may be missing.
//!
//! In: a feed notice (a first subscribe, a reconnect, a sequence gap) or a minute the
//! cross-check found wrong. Out: [`Job`]s, one per product, merged with a waiting window of
//! the same product, and when each can be fetched ([`due`]).
//!
//! A first subscribe at `at` opens a start window (fetched at once; where it begins is decided
//! from the store when it runs) and a start-edge window for the minute of `at`; a reconnect
//! covers `[disconnected_at, reconnected_at]`, a gap `[since, at]`, each reaching back
//! [`WINDOW_MARGIN`] before the last frame received. A window is due once its last minute is
//! complete and REST has settled.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::model::{FeedEvent, Granularity, ProductId};

/// How far before the last frame received a reconnect or gap window begins.
pub(crate) const WINDOW_MARGIN: TimeDelta = TimeDelta::seconds(5);

/// Why a window's trades may be missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// From the stored history (or a day boundary) up to the minute of a first subscribe:
    /// fetched at once.
    Start,
    /// The minute of a first subscribe, once it is complete.
    StartEdge,
    Reconnect,
    Gap,
    /// Minutes the REST cross-check found wrong.
    Repair,
}

/// A window of one product to backfill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    pub(crate) product: ProductId,
    pub(crate) kind: WindowKind,
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
}

/// The windows a feed notice opens, per product.
pub(crate) fn jobs_of(notice: &FeedEvent) -> Vec<Job> {
    let (kind, products, from, to) = match notice {
        FeedEvent::Subscribed { products, at, .. } => {
            // The complete minutes before the subscribe can be fetched now (a chart gets its
            // history at once); the minute of the subscribe once it is over.
            let minute = self::at(Granularity::OneMinute.bucket_start_secs(at.timestamp()));
            return products
                .iter()
                .flat_map(|product| {
                    [
                        Job {
                            product: product.clone(),
                            kind: WindowKind::Start,
                            from: minute,
                            to: minute,
                        },
                        Job {
                            product: product.clone(),
                            kind: WindowKind::StartEdge,
                            from: minute,
                            to: *at,
                        },
                    ]
                })
                .collect();
        }
        FeedEvent::Reconnected {
            products,
            disconnected_at,
            reconnected_at,
            ..
        } => (
            WindowKind::Reconnect,
            products,
            *disconnected_at,
            *reconnected_at,
        ),
        FeedEvent::Gap {
            products,
            since,
            at,
            ..
        } => (WindowKind::Gap, products, *since, *at),
        _ => return Vec::new(),
    };
    // A lost frame carries trades from up to a batch interval before it was sent, which may
    // be before the last frame received (of another product or channel): reach back a little.
    let from = from - WINDOW_MARGIN;
    products
        .iter()
        .map(|product| Job {
            product: product.clone(),
            kind,
            from: from.min(to),
            to,
        })
        .collect()
}

/// The window that takes the one-minute candle starting at `minute` again from REST.
pub(crate) fn repair(product: &ProductId, minute: i64) -> Job {
    Job {
        product: product.to_owned(),
        kind: WindowKind::Repair,
        from: at(minute),
        to: at(minute + 60),
    }
}

/// Adds a job, merging it into a waiting window of the same product (one wider window).
/// A start window stays apart: it decides its own beginning from the store.
pub(crate) fn queue(pending: &mut Vec<Job>, job: Job) {
    let mergeable = |j: &Job| j.product == job.product && j.kind != WindowKind::Start;
    match pending.iter_mut().find(|j| mergeable(j)) {
        Some(waiting) if job.kind != WindowKind::Start => {
            waiting.from = waiting.from.min(job.from);
            waiting.to = waiting.to.max(job.to);
        }
        _ => pending.push(job),
    }
}

/// When a window can be fetched: its last minute complete (after the engine's `grace`), plus
/// `settle` for REST.
pub(crate) fn due(job: &Job, grace: TimeDelta, settle: Duration) -> DateTime<Utc> {
    let settle = TimeDelta::from_std(settle).unwrap_or_default();
    at(ceil_minute(job.to)) + grace + settle
}

/// Unix seconds rounded up to the minute.
pub(crate) fn ceil_minute(t: DateTime<Utc>) -> i64 {
    Granularity::OneMinute.bucket_start_secs(t.timestamp() + 59)
}

/// The instant of Unix seconds `secs`.
pub(crate) fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn notices_open_one_window_per_product() {
        let jobs = jobs_of(&FeedEvent::Reconnected {
            connection: 1,
            products: vec![
                crate::model::ProductId::from_static("A-USD"),
                crate::model::ProductId::from_static("B-USD"),
            ],
            disconnected_at: t("2026-11-23T10:00:30Z"),
            reconnected_at: t("2026-11-23T10:01:40Z"),
        });
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].product, "B-USD");
        assert_eq!(jobs[0].kind, WindowKind::Reconnect);
        let gap = jobs_of(&FeedEvent::Gap {
            connection: 1,
            products: vec![crate::model::ProductId::from_static("A-USD")],
            expected: 5,
            got: 9,
            since: t("2026-11-23T10:00:30Z"),
            at: t("2026-11-23T10:00:31Z"),
        });
        assert_eq!(gap[0].from, t("2026-11-23T10:00:25Z"), "with the margin");
        assert!(
            jobs_of(&FeedEvent::Heartbeat {
                connection: 1,
                time: None
            })
            .is_empty()
        );
    }

    #[test]
    fn a_first_subscribe_opens_a_start_window_now_and_its_minute_later() {
        let jobs = jobs_of(&FeedEvent::Subscribed {
            connection: 1,
            products: vec![crate::model::ProductId::from_static("A-USD")],
            at: t("2026-11-23T10:00:30Z"),
        });
        let kinds: Vec<_> = jobs.iter().map(|j| (j.kind, j.from, j.to)).collect();
        assert_eq!(
            kinds,
            vec![
                (
                    WindowKind::Start,
                    t("2026-11-23T10:00:00Z"),
                    t("2026-11-23T10:00:00Z")
                ),
                (
                    WindowKind::StartEdge,
                    t("2026-11-23T10:00:00Z"),
                    t("2026-11-23T10:00:30Z")
                ),
            ]
        );
        let mut pending = Vec::new();
        for job in jobs {
            queue(&mut pending, job);
        }
        assert_eq!(pending.len(), 2, "a start window is not merged");
    }

    #[test]
    fn a_waiting_window_of_the_same_product_widens_instead_of_doubling() {
        let mut pending = Vec::new();
        let job = |from: &str, to: &str, kind| Job {
            product: crate::model::ProductId::from_static("A-USD"),
            kind,
            from: t(from),
            to: t(to),
        };
        queue(
            &mut pending,
            job(
                "2026-11-23T10:00:00Z",
                "2026-11-23T10:01:00Z",
                WindowKind::Gap,
            ),
        );
        queue(
            &mut pending,
            job(
                "2026-11-23T10:05:00Z",
                "2026-11-23T10:07:00Z",
                WindowKind::Reconnect,
            ),
        );
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].from, pending[0].to),
            (t("2026-11-23T10:00:00Z"), t("2026-11-23T10:07:00Z"))
        );
    }

    #[test]
    fn minutes_round_up_to_the_next_minute_start() {
        assert_eq!(
            ceil_minute(t("2026-11-23T10:01:40Z")),
            t("2026-11-23T10:02:00Z").timestamp()
        );
        assert_eq!(
            ceil_minute(t("2026-11-23T10:02:00Z")),
            t("2026-11-23T10:02:00Z").timestamp()
        );
    }
}
