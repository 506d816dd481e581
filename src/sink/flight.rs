//! One flush under way: spawned as its own task (a panic or a hang costs the flush, not the
//! sink) and awaited until its deadline.
//!
//! In: the rows of a flush and the flush function. Out: how the flush ended ([`Outcome`]); a
//! successful one says how many rows were refused ([`Flushed`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Rows;

/// What a successful flush says: how many of its rows the destination refused for their
/// content (left out for good; the rest were written).
pub trait Flushed: Send + 'static {
    fn refused(&self) -> u64;
}

/// A flush that writes all its rows or fails.
impl Flushed for () {
    fn refused(&self) -> u64 {
        0
    }
}

/// A flush that may leave out rows the destination refused: their number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused(pub u64);

impl Flushed for Refused {
    fn refused(&self) -> u64 {
        self.0
    }
}

/// A flush under way: its rows, its task (aborted if dropped) and its deadline.
pub(super) struct InFlight<O> {
    pub(super) rows: Rows,
    pub(super) task: JoinHandle<Result<O, String>>,
    pub(super) deadline: Instant,
}

/// How a flush ended.
pub(super) enum Outcome {
    /// Written, but for this many rows refused for their content.
    Written(u64),
    Failed(String),
    TimedOut,
    Panicked(String),
}

/// Spawns a flush of `rows`. A flush function that panics while building its future counts as
/// a panicked flush, like one whose task panics.
pub(super) fn start_flush<F, Fut, O>(flush: &F, rows: Rows, timeout: Duration) -> InFlight<O>
where
    F: Fn(Rows) -> Fut,
    Fut: Future<Output = Result<O, String>> + Send + 'static,
    O: Flushed,
{
    let task = match std::panic::catch_unwind(AssertUnwindSafe(|| flush(rows.clone()))) {
        Ok(future) => tokio::spawn(future),
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            tokio::spawn(async move { std::panic::panic_any(message) })
        }
    };
    InFlight {
        rows,
        task,
        deadline: Instant::now() + timeout,
    }
}

/// Waits for the flush under way to end or to run out of time.
pub(super) async fn finished<O: Flushed>(flight: Option<&mut InFlight<O>>) -> Outcome {
    let Some(flight) = flight else {
        return std::future::pending().await;
    };
    match tokio::time::timeout_at(flight.deadline, &mut flight.task).await {
        Err(_elapsed) => Outcome::TimedOut,
        Ok(Ok(Ok(flushed))) => Outcome::Written(flushed.refused()),
        Ok(Ok(Err(e))) => Outcome::Failed(e),
        Ok(Err(e)) if e.is_panic() => Outcome::Panicked(panic_message(e.into_panic().as_ref())),
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
    }
}

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
