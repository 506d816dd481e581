//! A coalescing sink: the shape shared by the database writer and the NATS publisher.
//!
//! In: batches of [`CandleUpdate`]. Out: calls of a flush function with the newest update of
//! every candle received since the last flush, at `max_rows` pending candles or every
//! `flush_interval`, one flush at a time. It keeps receiving while a flush is under way, so
//! it never holds up its sender. A flush that fails, panics, or does not finish within
//! `flush_timeout` (it is then abandoned) is retried with backoff, its rows merged back under
//! any newer update received meanwhile: no row is dropped. Memory is bounded by the number of
//! candles. A flush may leave out rows the destination refused for their content: it says how
//! many ([`Flushed`]), they are counted as `refused`, and the rest count as written.
//!
//! The stop (the input closing) comes in two kinds. [`run`] (the publisher's) flushes
//! everything held, retrying with backoff, before it returns; if it is dropped first (a forced
//! stop), the rows it still held are counted in an error log. [`run_keeping`] (the database
//! writer's) never waits out a backoff once the input has closed: it flushes at once, every
//! flush bounded by `stop_timeout` from the close, and at the first failure (or when that time
//! is up) it hands every row it still holds to its [`Keep`] (a durable place they are written
//! from after the next start), awaits it for at most [`KEEP_TIMEOUT`], and returns. A forced
//! stop (its `force` token cancelled) abandons the flush under way and hands the rows over the
//! same way, with [`FORCED_KEEP_TIMEOUT`]. The keep is an awaited step of the sink, never work
//! done in a drop: a sink dropped while it holds rows only logs how many it loses.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::{CandleUpdate, Granularity};

/// Sink tunables.
#[derive(Debug, Clone, Copy)]
pub struct SinkSettings {
    /// Flush once this many keys are pending.
    pub max_rows: usize,
    /// Flush at least this often when anything is pending.
    pub flush_interval: Duration,
    /// Retry backoff after a failed write: doubles from `retry_base` up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// A flush still running after this long is abandoned and counted as failed; its rows are
    /// retried. Bounds how long a hung database or NATS server can hold the sink (and its stop).
    pub flush_timeout: Duration,
    /// Rows one flush takes at most (the rest wait for the next): a backlog after a long
    /// outage is written in pieces that each fit in `flush_timeout`.
    pub max_flush_rows: usize,
    /// [`run_keeping`] only: how long after its input closes the sink may still flush; what
    /// is not written by then goes to its [`Keep`]. Fits in the service's stop grace.
    pub stop_timeout: Duration,
}

impl Default for SinkSettings {
    fn default() -> Self {
        SinkSettings {
            max_rows: 50,
            flush_interval: Duration::from_millis(100),
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(30),
            max_flush_rows: 20_000,
            stop_timeout: Duration::from_secs(3),
        }
    }
}

/// Counters for `/health` and the benchmarks.
#[derive(Debug, Default)]
pub struct SinkStats {
    received: AtomicU64,
    written_rows: AtomicU64,
    batches: AtomicU64,
    /// Failed flushes of any kind (errors, timeouts, panics).
    failures: AtomicU64,
    /// Of the failures: flushes abandoned after `flush_timeout`.
    timeouts: AtomicU64,
    /// Of the failures: flushes whose task panicked.
    panics: AtomicU64,
    pending: AtomicU64,
    /// Updates dropped for a newer one of the same candle (held or received): with the
    /// written, refused and kept rows, the pending and the in-flight ones, they account for
    /// every update received.
    superseded: AtomicU64,
    /// Rows a flush left out because the destination refused them for their content.
    refused: AtomicU64,
    /// Rows handed to the [`Keep`] at the stop (written after the next start).
    kept_at_stop: AtomicU64,
    /// Rows an earlier run kept at its stop, written at this start.
    recovered: AtomicU64,
    /// Entries of what an earlier run kept that could not be read back (each one lost).
    recovery_lost: AtomicU64,
    /// Batches by size class: 1, 2–9, 10–49, 50–99, 100–999, ≥ 1000 rows.
    batch_sizes: [AtomicU64; 6],
}

/// What `/health` shows of a sink.
#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    pub received: u64,
    pub written_rows: u64,
    pub batches: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub panics: u64,
    pub pending: u64,
    pub superseded: u64,
    pub refused: u64,
    pub kept_at_stop: u64,
    pub recovered: u64,
    pub recovery_lost: u64,
    pub batch_sizes: [(&'static str, u64); 6],
}

const SIZE_CLASSES: [&str; 6] = ["1", "2-9", "10-49", "50-99", "100-999", "1000+"];

impl SinkStats {
    fn record_batch(&self, rows: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.written_rows.fetch_add(rows as u64, Ordering::Relaxed);
        let class = match rows {
            0..=1 => 0,
            2..=9 => 1,
            10..=49 => 2,
            50..=99 => 3,
            100..=999 => 4,
            _ => 5,
        };
        self.batch_sizes[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Rows refused for their content outside a flush (written by another path of the
    /// same stage, such as the recovery of kept rows).
    pub fn record_refused(&self, rows: u64) {
        self.refused.fetch_add(rows, Ordering::Relaxed);
    }

    /// Rows kept by an earlier run, now written.
    pub fn record_recovered(&self, rows: u64) {
        self.recovered.fetch_add(rows, Ordering::Relaxed);
    }

    /// Entries of what an earlier run kept that could not be read.
    pub fn record_recovery_lost(&self, entries: u64) {
        self.recovery_lost.fetch_add(entries, Ordering::Relaxed);
    }

    pub fn report(&self) -> SinkReport {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SinkReport {
            received: load(&self.received),
            written_rows: load(&self.written_rows),
            batches: load(&self.batches),
            failures: load(&self.failures),
            timeouts: load(&self.timeouts),
            panics: load(&self.panics),
            pending: load(&self.pending),
            superseded: load(&self.superseded),
            refused: load(&self.refused),
            kept_at_stop: load(&self.kept_at_stop),
            recovered: load(&self.recovered),
            recovery_lost: load(&self.recovery_lost),
            batch_sizes: std::array::from_fn(|i| (SIZE_CLASSES[i], load(&self.batch_sizes[i]))),
        }
    }
}

type Key = (String, Granularity, i64);

/// The rows of one flush, shared with the flush task: the sink keeps them until the flush
/// succeeds, so a flush that fails, panics or is abandoned loses none.
pub type Rows = Arc<Vec<CandleUpdate>>;

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

/// How long a [`Keep`] may take at an ordinary stop (after the flushes' `stop_timeout`).
pub const KEEP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a [`Keep`] may take at a forced stop (the stop grace is over).
pub const FORCED_KEEP_TIMEOUT: Duration = Duration::from_millis(800);
/// Past its deadline, a [`Keep`] still running is abandoned after this much more.
const KEEP_OVERRUN: Duration = Duration::from_millis(500);

/// What a [`Keep`] did with the rows it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    /// Rows of those given that are kept (the rest are lost, and the keep said why in its log).
    pub rows: u64,
    /// Where they went, for the stop's log line (`jetstream`, `file`, `jetstream+file`).
    pub place: String,
}

/// Where [`run_keeping`] hands the rows it could not write by its stop (coalesced, each key
/// once): a durable place they are written from after the next start. Called once at most,
/// with a deadline it should finish by, and awaited (abandoned shortly after the deadline);
/// says how many rows it kept and where, or why it could not keep any.
pub type Keep = Box<
    dyn FnOnce(
            Vec<CandleUpdate>,
            Instant,
        ) -> futures_util::future::BoxFuture<'static, Result<Kept, String>>
        + Send,
>;

/// A flush under way: its rows, its task (aborted if dropped) and its deadline.
struct InFlight<O> {
    rows: Rows,
    task: JoinHandle<Result<O, String>>,
    deadline: Instant,
}

/// How a flush ended.
enum Outcome {
    /// Written, but for this many rows refused for their content.
    Written(u64),
    Failed(String),
    TimedOut,
    Panicked(String),
}

/// What the sink holds. On drop it aborts the flush under way and says how many rows were
/// never written (a keeping sink hands them to its [`Keep`] before, see [`Held::take_all`]).
struct Held<O> {
    name: &'static str,
    pending: HashMap<Key, CandleUpdate>,
    in_flight: Option<InFlight<O>>,
}

impl<O> Held<O> {
    /// Every row still held, the flush under way (aborted) included, each key once.
    fn take_all(&mut self) -> Vec<CandleUpdate> {
        let mut rows = std::mem::take(&mut self.pending);
        if let Some(flight) = self.in_flight.take() {
            flight.task.abort();
            for update in flight.rows.iter() {
                // The held update of a key is never older than the one in flight.
                let (product, granularity, start) = update.candle_key();
                CandleUpdate::keep_newest(
                    &mut rows,
                    (product.to_owned(), granularity, start),
                    update.clone(),
                );
            }
        }
        rows.into_values().collect()
    }
}

impl<O> Drop for Held<O> {
    fn drop(&mut self) {
        let unwritten = self.take_all().len();
        if unwritten > 0 {
            tracing::error!(
                sink = self.name,
                rows = unwritten,
                "sink stopped before writing these rows"
            );
        }
    }
}

/// Runs the sink until `input` closes and everything received is flushed. `flush` gets the
/// rows to write (each key once) and says whether they were written. `name` labels logs.
pub async fn run<F, Fut, O>(
    name: &'static str,
    input: mpsc::Receiver<Vec<CandleUpdate>>,
    settings: SinkSettings,
    stats: Arc<SinkStats>,
    flush: F,
) where
    F: Fn(Rows) -> Fut,
    Fut: Future<Output = Result<O, String>> + Send + 'static,
    O: Flushed,
{
    run_inner(name, input, settings, stats, flush, None).await;
}

/// As [`run`], but the stop never waits: once `input` closes, pending rows are flushed at
/// once (no backoff), within `stop_timeout`; whatever is not written then, after the first
/// failure, or when `force` is cancelled, goes to `keep` (awaited, see [`KEEP_TIMEOUT`]).
pub async fn run_keeping<F, Fut, O>(
    name: &'static str,
    input: mpsc::Receiver<Vec<CandleUpdate>>,
    settings: SinkSettings,
    stats: Arc<SinkStats>,
    flush: F,
    keep: Keep,
    force: CancellationToken,
) where
    F: Fn(Rows) -> Fut,
    Fut: Future<Output = Result<O, String>> + Send + 'static,
    O: Flushed,
{
    run_inner(name, input, settings, stats, flush, Some((keep, force))).await;
}

async fn run_inner<F, Fut, O>(
    name: &'static str,
    mut input: mpsc::Receiver<Vec<CandleUpdate>>,
    settings: SinkSettings,
    stats: Arc<SinkStats>,
    flush: F,
    keep: Option<(Keep, CancellationToken)>,
) where
    F: Fn(Rows) -> Fut,
    Fut: Future<Output = Result<O, String>> + Send + 'static,
    O: Flushed,
{
    let keeping = keep.is_some();
    let force = keep.as_ref().map(|(_, force)| force.clone());
    let mut forced = false;
    let mut held = Held {
        name,
        pending: HashMap::new(),
        in_flight: None,
    };
    let mut failures_in_row: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    let mut flush_at = Instant::now() + settings.flush_interval;
    let mut input_open = true;
    // Keeping sinks only: the end of the stop's flushing, set when the input closes.
    let mut stop_by: Option<Instant> = None;
    loop {
        if let Some(stop_by) = stop_by
            && held.in_flight.is_none()
            && Instant::now() >= stop_by
        {
            // Out of time: what is still held goes to `keep`.
            break;
        }
        let due = !held.pending.is_empty()
            && held.in_flight.is_none()
            && (stop_by.is_some() || retry_at.is_none_or(|t| Instant::now() >= t))
            && (held.pending.len() >= settings.max_rows
                || Instant::now() >= flush_at
                || !input_open);
        if due {
            let rows: Rows = Arc::new(take_rows(&mut held.pending, settings.max_flush_rows));
            let mut flight = start_flush(&flush, rows, settings.flush_timeout);
            if let Some(stop_by) = stop_by {
                flight.deadline = flight.deadline.min(stop_by);
            }
            held.in_flight = Some(flight);
            flush_at = Instant::now() + settings.flush_interval;
        }
        stats
            .pending
            .store(held.pending.len() as u64, Ordering::Relaxed);
        if !input_open && held.pending.is_empty() && held.in_flight.is_none() {
            return;
        }
        let wake_at = retry_at.unwrap_or(flush_at).max(Instant::now());
        let idle = held.in_flight.is_none();
        tokio::select! {
            () = cancelled(force.as_ref()), if keeping => {
                forced = true;
                tracing::warn!(sink = name, "forced stop: keeping what is not written yet");
                break;
            },
            batch = input.recv(), if input_open => match batch {
                Some(batch) => {
                    stats.received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for update in batch {
                        if coalesce(&mut held.pending, update) {
                            stats.superseded.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                None => {
                    input_open = false;
                    if keeping {
                        let end = Instant::now() + settings.stop_timeout;
                        stop_by = Some(end);
                        // A flush under way gets no longer than the stop allows.
                        if let Some(flight) = held.in_flight.as_mut() {
                            flight.deadline = flight.deadline.min(end);
                        }
                    }
                }
            },
            outcome = finished(held.in_flight.as_mut()), if !idle => {
                let Some(flight) = held.in_flight.take() else { continue };
                if matches!(outcome, Outcome::TimedOut) {
                    flight.task.abort();
                }
                if let Outcome::Written(refused) = outcome {
                    let refused = refused.min(flight.rows.len() as u64);
                    stats.refused.fetch_add(refused, Ordering::Relaxed);
                    let written = flight.rows.len() - refused as usize;
                    if written > 0 {
                        stats.record_batch(written);
                    }
                    failures_in_row = 0;
                    retry_at = None;
                    continue;
                }
                let error = match outcome {
                    Outcome::Written(_) => String::new(),
                    Outcome::Failed(e) => e,
                    Outcome::TimedOut => {
                        stats.timeouts.fetch_add(1, Ordering::Relaxed);
                        format!("no answer within {:?}, abandoned", settings.flush_timeout)
                    }
                    Outcome::Panicked(e) => {
                        stats.panics.fetch_add(1, Ordering::Relaxed);
                        format!("the flush task panicked: {e}")
                    }
                };
                stats.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("spot_canvas_sink_failures_total", "sink" => name).increment(1);
                // Back into pending, unless a newer update of the key came meanwhile.
                let rows = Arc::try_unwrap(flight.rows).unwrap_or_else(|shared| (*shared).clone());
                let failed_rows = rows.len();
                for update in rows {
                    if coalesce(&mut held.pending, update) {
                        stats.superseded.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if stop_by.is_some() {
                    tracing::warn!(
                        error = %error,
                        rows = failed_rows,
                        sink = name,
                        "flush failed at the stop; keeping the rows for the next start"
                    );
                    // No retry at the stop: what is held goes to `keep`.
                    break;
                }
                let delay = backoff(&settings, failures_in_row);
                failures_in_row = failures_in_row.saturating_add(1);
                tracing::warn!(
                    error = %error,
                    rows = failed_rows,
                    retry_in_ms = delay.as_millis() as u64,
                    sink = name,
                    "flush failed, keeping the rows and retrying"
                );
                retry_at = Some(Instant::now() + delay);
            },
            () = tokio::time::sleep_until(wake_at), if !held.pending.is_empty() && idle => {}
        }
    }
    let rows = held.take_all();
    stats.pending.store(rows.len() as u64, Ordering::Relaxed);
    if let Some((keep, _force)) = keep
        && !rows.is_empty()
    {
        keep_at_stop(name, &stats, keep, rows, forced).await;
    }
}

/// Hands `rows` to `keep` and awaits it, bounded by its deadline (a little more, then it is
/// abandoned), and counts what it kept.
async fn keep_at_stop(
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

/// Ends when `token` is cancelled; never without one.
async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Spawns a flush of `rows`. A flush function that panics while building its future counts as
/// a panicked flush, like one whose task panics.
fn start_flush<F, Fut, O>(flush: &F, rows: Rows, timeout: Duration) -> InFlight<O>
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
async fn finished<O: Flushed>(flight: Option<&mut InFlight<O>>) -> Outcome {
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

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// At most `limit` (at least one) of the pending rows, removed from `pending`.
fn take_rows(pending: &mut HashMap<Key, CandleUpdate>, limit: usize) -> Vec<CandleUpdate> {
    if pending.len() <= limit.max(1) {
        return pending.drain().map(|(_, u)| u).collect();
    }
    let keys: Vec<Key> = pending.keys().take(limit.max(1)).cloned().collect();
    keys.iter().filter_map(|k| pending.remove(k)).collect()
}

/// Keeps the newer of `update` and the one held for its candle; returns whether one of the
/// two was dropped.
fn coalesce(pending: &mut HashMap<Key, CandleUpdate>, update: CandleUpdate) -> bool {
    let (product, granularity, start) = update.candle_key();
    let key = (product.to_owned(), granularity, start);
    let held = pending.len();
    CandleUpdate::keep_newest(pending, key, update);
    pending.len() == held
}

fn backoff(settings: &SinkSettings, failures: u32) -> Duration {
    crate::backoff::equal_jitter(
        settings.retry_base,
        settings.retry_cap,
        failures,
        rand::rng().random::<f64>(),
    )
}

#[cfg(test)]
mod tests;
