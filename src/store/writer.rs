//! The batch writer: candle updates into PostgreSQL without losing any and without blocking.
//!
//! In: batches of [`CandleUpdate`] from the engine. Out: batched upserts, through the
//! coalescing [`sink`](crate::sink): only the newest update per candle is written (a batch
//! never touches a row twice, memory is bounded by the number of candles), flushed at
//! `max_rows` candles or every `flush_interval`; while the database is slow or down it keeps
//! coalescing and retries with backoff; a flush that hangs (a database that stopped answering)
//! is abandoned after `flush_timeout` and retried, its rows kept; when its input closes it
//! writes all it holds.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Repository;
use crate::model::CandleUpdate;
use crate::sink::{SinkSettings, SinkStats};

/// Rows per statement at most (UNNEST arrays: one parameter per column whatever the rows).
const MAX_ROWS_PER_STATEMENT: usize = 5_000;
/// Statements of one flush run concurrently, each on its own connection, on disjoint keys.
const CONCURRENT_STATEMENTS: usize = 4;

/// The writer's tunables: the sink's (50 rows, 100 ms by default).
pub type WriterSettings = SinkSettings;
/// The writer's counters.
pub type WriterStats = SinkStats;

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
    pub async fn run(self) -> anyhow::Result<()> {
        let repository = self.repository;
        crate::sink::run(
            "store",
            self.input,
            self.settings,
            self.stats,
            move |rows| {
                let repository = repository.clone();
                async move {
                    let started = std::time::Instant::now();
                    write_all(&repository, &rows)
                        .await
                        .map_err(|e| e.to_string())?;
                    metrics::histogram!(crate::ops::prometheus::STORE_WRITE_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    Ok(())
                }
            },
        )
        .await;
        Ok(())
    }
}

/// Writes a flush's rows (distinct keys) in statements of at most 5,000 rows, up to 4 at a
/// time. On failure the sink retries all of them; rows already written are then no-ops.
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
