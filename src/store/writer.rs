//! The batch writer: candle updates into PostgreSQL without losing any and without blocking.
//!
//! In: batches of [`CandleUpdate`] from the engine. Out: batched upserts. It keeps only the
//! newest update per candle key (a batch never touches a row twice, only the final state of a
//! candle matters, and memory is bounded by the number of keys), flushes at `max_rows` rows
//! or every `flush_interval`, whichever comes first, and keeps receiving while a write is in
//! flight. When the database is slow or down it keeps coalescing and retries with backoff;
//! everything is written once it is back. When its input closes it flushes all it holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Repository;
use crate::model::{CandleUpdate, Granularity};

/// Rows per statement at most (UNNEST arrays: one parameter per column whatever the rows).
const MAX_ROWS_PER_STATEMENT: usize = 5_000;
/// Statements of one flush run concurrently, each on its own connection, on disjoint keys.
const CONCURRENT_STATEMENTS: usize = 4;

/// Writer tunables.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// Flush once this many keys are pending.
    pub max_rows: usize,
    /// Flush at least this often when anything is pending.
    pub flush_interval: Duration,
    /// Retry backoff after a failed write: doubles from `retry_base` up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings {
            max_rows: 50,
            flush_interval: Duration::from_millis(100),
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(10),
        }
    }
}

/// Counters for `/health` and the benchmark.
#[derive(Debug, Default)]
pub struct WriterStats {
    received: AtomicU64,
    written_rows: AtomicU64,
    batches: AtomicU64,
    failures: AtomicU64,
    pending: AtomicU64,
    /// Batches by size class: 1, 2–9, 10–49, 50–99, 100–999, ≥ 1000 rows.
    batch_sizes: [AtomicU64; 6],
}

/// What `/health` shows of the writer.
#[derive(Debug, Clone, Serialize)]
pub struct WriterReport {
    pub received: u64,
    pub written_rows: u64,
    pub batches: u64,
    pub failures: u64,
    pub pending: u64,
    pub batch_sizes: [(&'static str, u64); 6],
}

const SIZE_CLASSES: [&str; 6] = ["1", "2-9", "10-49", "50-99", "100-999", "1000+"];

impl WriterStats {
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
        metrics::counter!("spot_canvas_store_rows_written_total").increment(rows as u64);
    }

    pub fn report(&self) -> WriterReport {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterReport {
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
type InFlight = JoinHandle<(Vec<CandleUpdate>, Result<(), sqlx::Error>)>;

/// The writer stage.
#[derive(Debug)]
pub struct BatchWriter {
    repository: Repository,
    settings: WriterSettings,
    /// Updates from the engine (through the fan-out); closed at shutdown.
    input: mpsc::Receiver<Vec<CandleUpdate>>,
    stats: Arc<WriterStats>,
}

impl BatchWriter {
    pub fn new(
        repository: Repository,
        settings: WriterSettings,
        input: mpsc::Receiver<Vec<CandleUpdate>>,
    ) -> Self {
        BatchWriter {
            repository,
            settings,
            input,
            stats: Arc::new(WriterStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// Runs until the input closes and everything received is written.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut pending: HashMap<Key, CandleUpdate> = HashMap::new();
        let mut in_flight: Option<InFlight> = None;
        let mut failures_in_row: u32 = 0;
        let mut retry_at: Option<Instant> = None;
        let mut flush_at = Instant::now() + self.settings.flush_interval;
        let mut input_open = true;
        loop {
            let due = !pending.is_empty()
                && in_flight.is_none()
                && retry_at.is_none_or(|t| Instant::now() >= t)
                && (pending.len() >= self.settings.max_rows
                    || Instant::now() >= flush_at
                    || !input_open);
            if due {
                let rows: Vec<CandleUpdate> = pending.drain().map(|(_, u)| u).collect();
                let repository = self.repository.clone();
                in_flight = Some(tokio::spawn(async move {
                    let result = write_all(&repository, &rows).await;
                    (rows, result)
                }));
                flush_at = Instant::now() + self.settings.flush_interval;
            }
            self.stats
                .pending
                .store(pending.len() as u64, Ordering::Relaxed);
            if !input_open && pending.is_empty() && in_flight.is_none() {
                return Ok(());
            }
            let wake_at = retry_at.unwrap_or(flush_at).max(Instant::now());
            tokio::select! {
                batch = self.input.recv(), if input_open => match batch {
                    Some(batch) => {
                        self.stats.received.fetch_add(batch.len() as u64, Ordering::Relaxed);
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
                            self.stats.record_batch(rows.len());
                            failures_in_row = 0;
                            retry_at = None;
                        }
                        Ok((rows, Err(e))) => {
                            self.stats.failures.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("spot_canvas_store_write_failures_total").increment(1);
                            let delay = backoff(&self.settings, failures_in_row);
                            failures_in_row = failures_in_row.saturating_add(1);
                            tracing::warn!(
                                error = %e,
                                rows = rows.len(),
                                retry_in_ms = delay.as_millis() as u64,
                                "candle write failed, keeping the rows and retrying"
                            );
                            // Back into pending, unless a newer update of the key came meanwhile.
                            for update in rows {
                                coalesce(&mut pending, update);
                            }
                            retry_at = Some(Instant::now() + delay);
                        }
                        Err(e) => {
                            // The write task panicked: its rows are lost to it. Say so loudly.
                            tracing::error!(error = %e, "candle write task failed");
                            failures_in_row = failures_in_row.saturating_add(1);
                        }
                    }
                },
                () = tokio::time::sleep_until(wake_at), if !pending.is_empty() && in_flight.is_none() => {}
            }
        }
    }
}

fn coalesce(pending: &mut HashMap<Key, CandleUpdate>, update: CandleUpdate) {
    let (product, granularity, start) = update.candle_key();
    let key = (product.to_owned(), granularity, start);
    CandleUpdate::keep_newest(pending, key, update);
}

fn backoff(settings: &WriterSettings, failures: u32) -> Duration {
    let full = settings
        .retry_base
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(settings.retry_cap);
    full / 2 + (full / 2).mul_f64(rand::rng().random::<f64>())
}

/// Writes a flush's rows (distinct keys) in statements of at most 5,000 rows, up to 4 at a
/// time. On failure the caller retries all of them; rows already written are then no-ops.
async fn write_all(repository: &Repository, rows: &[CandleUpdate]) -> Result<(), sqlx::Error> {
    for group in rows.chunks(MAX_ROWS_PER_STATEMENT * CONCURRENT_STATEMENTS) {
        let mut statements = Vec::with_capacity(CONCURRENT_STATEMENTS);
        for chunk in group.chunks(MAX_ROWS_PER_STATEMENT) {
            statements.push(repository.upsert_candles(chunk));
        }
        futures_util::future::try_join_all(statements).await?;
    }
    Ok(())
}
