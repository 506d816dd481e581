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

mod flight;
mod keep;
mod settings;
mod stats;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::{CandleUpdate, Granularity};
use flight::{InFlight, Outcome, finished, start_flush};
use keep::keep_at_stop;

pub use flight::{Flushed, Refused};
pub use keep::{FORCED_KEEP_TIMEOUT, KEEP_TIMEOUT, Keep, Kept};
pub use settings::SinkSettings;
pub use stats::{SinkReport, SinkStats};

type Key = (String, Granularity, i64);

/// The rows of one flush, shared with the flush task: the sink keeps them until the flush
/// succeeds, so a flush that fails, panics or is abandoned loses none.
pub type Rows = Arc<Vec<CandleUpdate>>;

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
                let delay = settings.retry_delay(failures_in_row);
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

/// Ends when `token` is cancelled; never without one.
async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
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

#[cfg(test)]
mod tests;
