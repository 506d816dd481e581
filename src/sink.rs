//! A coalescing sink: the shape shared by the database writer and the NATS publisher.
//!
//! In: batches of [`CandleUpdate`]. Out: calls of a flush function with the newest update of
//! every candle received since the last flush, at `max_rows` pending candles or every
//! `flush_interval`, one flush at a time. It keeps receiving while a flush is under way, so
//! it never holds up its sender; a failed flush is retried with backoff, its rows merged back
//! under any newer update received meanwhile. Memory is bounded by the number of candles.
//! When the input closes, everything held is flushed before `run` returns.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
}

impl Default for SinkSettings {
    fn default() -> Self {
        SinkSettings {
            max_rows: 50,
            flush_interval: Duration::from_millis(100),
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(10),
        }
    }
}

/// Counters for `/health` and the benchmarks.
#[derive(Debug, Default)]
pub struct SinkStats {
    received: AtomicU64,
    written_rows: AtomicU64,
    batches: AtomicU64,
    failures: AtomicU64,
    pending: AtomicU64,
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
    pub pending: u64,
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

    pub fn report(&self) -> SinkReport {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SinkReport {
            received: load(&self.received),
            written_rows: load(&self.written_rows),
            batches: load(&self.batches),
            failures: load(&self.failures),
            pending: load(&self.pending),
            batch_sizes: std::array::from_fn(|i| (SIZE_CLASSES[i], load(&self.batch_sizes[i]))),
        }
    }
}

type Key = (String, Granularity, i64);

/// A write under way: it hands back its rows (to retry them) with its outcome.
type InFlight = JoinHandle<Flushed>;

/// What a flush hands back: its rows (to retry them) and its outcome.
pub type Flushed = (Vec<CandleUpdate>, Result<(), String>);

/// Runs the sink until `input` closes and everything received is flushed. `flush` gets the
/// rows to write and hands them back with the outcome. `name` labels logs.
pub async fn run<F, Fut>(
    name: &'static str,
    mut input: mpsc::Receiver<Vec<CandleUpdate>>,
    settings: SinkSettings,
    stats: Arc<SinkStats>,
    flush: F,
) where
    F: Fn(Vec<CandleUpdate>) -> Fut,
    Fut: Future<Output = Flushed> + Send + 'static,
{
    let mut pending: HashMap<Key, CandleUpdate> = HashMap::new();
    let mut in_flight: Option<InFlight> = None;
    let mut failures_in_row: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    let mut flush_at = Instant::now() + settings.flush_interval;
    let mut input_open = true;
    loop {
        let due = !pending.is_empty()
            && in_flight.is_none()
            && retry_at.is_none_or(|t| Instant::now() >= t)
            && (pending.len() >= settings.max_rows || Instant::now() >= flush_at || !input_open);
        if due {
            let rows: Vec<CandleUpdate> = pending.drain().map(|(_, u)| u).collect();
            in_flight = Some(tokio::spawn(flush(rows)));
            flush_at = Instant::now() + settings.flush_interval;
        }
        stats.pending.store(pending.len() as u64, Ordering::Relaxed);
        if !input_open && pending.is_empty() && in_flight.is_none() {
            return;
        }
        let wake_at = retry_at.unwrap_or(flush_at).max(Instant::now());
        tokio::select! {
            batch = input.recv(), if input_open => match batch {
                Some(batch) => {
                    stats.received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for update in batch {
                        coalesce(&mut pending, update);
                    }
                }
                None => input_open = false,
            },
            done = async { in_flight.as_mut().expect("guarded by the if").await }, if in_flight.is_some() => {
                in_flight = None;
                match done {
                    Ok((rows, Ok(()))) => {
                        stats.record_batch(rows.len());
                        failures_in_row = 0;
                        retry_at = None;
                    }
                    Ok((rows, Err(e))) => {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("spot_canvas_sink_failures_total", "sink" => name).increment(1);
                        let delay = backoff(&settings, failures_in_row);
                        failures_in_row = failures_in_row.saturating_add(1);
                        tracing::warn!(
                            error = %e,
                            rows = rows.len(),
                            retry_in_ms = delay.as_millis() as u64,
                            sink = name,
                            "flush failed, keeping the rows and retrying"
                        );
                        // Back into pending, unless a newer update of the key came meanwhile.
                        for update in rows {
                            coalesce(&mut pending, update);
                        }
                        retry_at = Some(Instant::now() + delay);
                    }
                    Err(e) => {
                        // The flush task panicked: its rows are lost to it. Say so loudly.
                        tracing::error!(sink = name, error = %e, "flush task failed");
                        failures_in_row = failures_in_row.saturating_add(1);
                    }
                }
            },
            () = tokio::time::sleep_until(wake_at), if !pending.is_empty() && in_flight.is_none() => {}
        }
    }
}

fn coalesce(pending: &mut HashMap<Key, CandleUpdate>, update: CandleUpdate) {
    let (product, granularity, start) = update.candle_key();
    let key = (product.to_owned(), granularity, start);
    CandleUpdate::keep_newest(pending, key, update);
}

fn backoff(settings: &SinkSettings, failures: u32) -> Duration {
    crate::backoff::equal_jitter(
        settings.retry_base,
        settings.retry_cap,
        failures,
        rand::rng().random::<f64>(),
    )
}
