//! The keeping sink's stop: the rows it could not write handed to its [`Keep`], awaited within
//! a deadline.
//!
//! In: the rows still held at the stop (or a forced stop). Out: the keep's answer, counted in
//! `kept_at_stop` and logged; a keep that fails, panics or overruns costs the rows, logged.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::SinkStats;
use super::flight::panic_message;
use crate::model::CandleUpdate;

/// How long a [`Keep`] may take at an ordinary stop (after the flushes' `stop_timeout`).
pub const KEEP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a [`Keep`] may take at a forced stop (the stop grace is over).
pub const FORCED_KEEP_TIMEOUT: Duration = Duration::from_millis(800);
/// Past its deadline, a [`Keep`] still running is abandoned after this much more.
pub(super) const KEEP_OVERRUN: Duration = Duration::from_millis(500);

/// What a [`Keep`] did with the rows it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    /// Rows of those given that are kept (the rest are lost, and the keep said why in its log).
    pub rows: u64,
    /// Where they went, for the stop's log line (`jetstream`, `file`, `jetstream+file`).
    pub place: String,
}

/// Where [`run_keeping`](super::run_keeping) hands the rows it could not write by its stop
/// (coalesced, each key once): a durable place they are written from after the next start.
/// Called once at most, with a deadline it should finish by, and awaited (abandoned shortly
/// after the deadline); says how many rows it kept and where, or why it could not keep any.
pub type Keep = Box<
    dyn FnOnce(
            Vec<CandleUpdate>,
            Instant,
        ) -> futures_util::future::BoxFuture<'static, Result<Kept, String>>
        + Send,
>;

/// Hands `rows` to `keep` and awaits it, bounded by its deadline (a little more, then it is
/// abandoned), and counts what it kept.
pub(super) async fn keep_at_stop(
    name: &'static str,
    stats: &SinkStats,
    keep: Keep,
    rows: Vec<CandleUpdate>,
    forced: bool,
) {
    let given = rows.len();
    let budget = if forced {
        FORCED_KEEP_TIMEOUT
    } else {
        KEEP_TIMEOUT
    };
    let deadline = Instant::now() + budget;
    let keeping = AssertUnwindSafe(keep(rows, deadline));
    let outcome = tokio::time::timeout_at(
        deadline + KEEP_OVERRUN,
        futures_util::FutureExt::catch_unwind(keeping),
    )
    .await;
    match outcome {
        Ok(Ok(Ok(kept))) => {
            stats.kept_at_stop.fetch_add(kept.rows, Ordering::Relaxed);
            stats.pending.store(0, Ordering::Relaxed);
            tracing::warn!(
                sink = name,
                rows = given,
                kept = kept.rows,
                place = %kept.place,
                "rows not written by the stop are kept for the next start"
            );
        }
        Ok(Ok(Err(e))) => tracing::error!(
            sink = name,
            rows = given,
            error = %e,
            "sink stopped before writing these rows, and cannot keep them"
        ),
        Ok(Err(panic)) => tracing::error!(
            sink = name,
            rows = given,
            error = %panic_message(panic.as_ref()),
            "sink stopped before writing these rows, and keeping them panicked"
        ),
        Err(_elapsed) => tracing::error!(
            sink = name,
            rows = given,
            budget = ?budget,
            "sink stopped before writing these rows, and keeping them took too long"
        ),
    }
}
