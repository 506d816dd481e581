//! The batch writer: candle updates into PostgreSQL without losing any and without blocking.
//!
//! In: batches of [`CandleUpdate`] from the engine. Out: batched upserts, through the
//! coalescing [`sink`](crate::sink): only the newest update per candle is written (a batch
//! never touches a row twice, memory is bounded by the number of candles), flushed at
//! `max_rows` candles or every `flush_interval`; while the database is slow or down it keeps
//! coalescing and retries with backoff; a flush that hangs (a database that stopped answering)
//! is abandoned after `flush_timeout` and retried, its rows kept.
//!
//! A row PostgreSQL refuses for its content (a NUL byte, an id too long for the primary key's
//! index) never stops the others: a refused statement is split until the refused rows are
//! alone ([`refusal`](super::refusal)); they are dropped, counted (`refused`, and
//! `spot_canvas_store_rows_refused_total`) and logged escaped, at most one line per
//! [`REFUSAL_LOG_EVERY`]; the rest are written in the same flush.
//!
//! When its input closes it writes all it holds. Without a [`Spool`] it retries until it has
//! (tests that stop the database); with one (the service) it makes one attempt bounded by
//! `stop_timeout`, never waiting out a backoff, and what it still holds after it (or at a
//! forced stop) is kept, as an awaited step of its stop: in the [`StreamSpool`] when NATS is
//! external (JetStream outlives the instance), whatever JetStream did not acknowledge, and
//! everything with the embedded NATS, in the file [`Spool`] under `DATA_DIR`. The stop's log
//! line says which place took the rows. At the start, tasks beside the writer write what
//! earlier runs kept through the same upserts, retried until written: the file's rows (then the
//! file is removed), and for as long as the writer runs the stream's (any instance's; each
//! message acknowledged once written). `/health` counts them in `kept_at_stop`, `recovered`
//! and `recovery_lost`.

mod kept;
mod write;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Repository;
use super::spool::Spool;
use super::stream_spool::StreamSpool;
use crate::model::CandleUpdate;
use crate::sink::{Refused, SinkSettings, SinkStats};
use kept::{keep_rows, recover};
use write::{RefusalLog, write_all};

pub use write::REFUSAL_LOG_EVERY;

/// How long the keep waits for the stream's drain to hand back the message it holds.
const DRAIN_STOP_WAIT: Duration = Duration::from_millis(300);

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
    /// Where the rows not written by the stop go, and come back from at the start.
    spool: Option<Spool>,
    /// With an external NATS: the first place for them (the file takes what it does not).
    stream: Option<StreamSpool>,
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
            spool: None,
            stream: None,
        }
    }

    /// Keeps the rows not written by the stop in `spool`, and writes what an earlier run kept
    /// there (see the module docs).
    pub fn with_spool(mut self, spool: Spool) -> Self {
        self.spool = Some(spool);
        self
    }

    /// Keeps the rows not written by the stop in `stream` first (the file spool takes what it
    /// does not acknowledge in time), and writes what any instance kept there (see the module
    /// docs). Needs [`BatchWriter::with_spool`] too.
    pub fn with_stream_spool(mut self, stream: StreamSpool) -> Self {
        self.stream = Some(stream);
        self
    }

    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// Runs until the input closes and everything received is written (or, with a spool,
    /// kept in it).
    pub async fn run(self) -> anyhow::Result<()> {
        self.run_until(CancellationToken::new()).await
    }

    /// As [`BatchWriter::run`]; `force` (the stop grace is over) ends the flushing at once
    /// and keeps what is held (with a spool; without one, the rows held are lost and logged).
    pub async fn run_until(self, force: CancellationToken) -> anyhow::Result<()> {
        let BatchWriter {
            repository,
            settings,
            input,
            stats,
            spool,
            stream,
        } = self;
        let refusals = Arc::new(RefusalLog::default());
        let flush = {
            let (repository, refusals) = (repository.clone(), refusals.clone());
            move |rows: crate::sink::Rows| {
                let (repository, refusals) = (repository.clone(), refusals.clone());
                async move {
                    let started = std::time::Instant::now();
                    let refused = write_all(&repository, &rows, &refusals)
                        .await
                        .map_err(|e| e.to_string())?;
                    metrics::histogram!(crate::telemetry::STORE_WRITE_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    Ok(Refused(refused))
                }
            }
        };
        let Some(spool) = spool else {
            tokio::select! {
                () = crate::sink::run("store", input, settings, stats, flush) => {}
                () = force.cancelled() => {}
            }
            return Ok(());
        };
        // Ends with the writer (or when it is dropped): the spool keeps what it did not write.
        let recovery = AbortOnDrop(tokio::spawn(recover(
            repository.clone(),
            spool.clone(),
            stats.clone(),
            refusals.clone(),
            settings,
        )));
        let drain_stop = CancellationToken::new();
        let drain = stream.clone().map(|stream| {
            let (stats, stop) = (stats.clone(), drain_stop.clone());
            AbortOnDrop(tokio::spawn(async move {
                let write = |rows: Vec<CandleUpdate>| {
                    let (repository, refusals) = (repository.clone(), refusals.clone());
                    async move {
                        write_all(&repository, &rows, &refusals)
                            .await
                            .map_err(|e| e.to_string())
                    }
                };
                stream.drain(write, &stats, settings, stop).await;
            }))
        });
        let keep: crate::sink::Keep = Box::new(move |rows: Vec<CandleUpdate>, deadline| {
            Box::pin(async move {
                // The drain hands back the message it is writing, so that the rows kept now
                // and those it held all wait for the next start.
                drain_stop.cancel();
                if let Some(mut drain) = drain {
                    let _ended = tokio::time::timeout(DRAIN_STOP_WAIT, &mut drain.0).await;
                }
                keep_rows(rows, deadline, stream.as_ref(), &spool).await
            })
        });
        crate::sink::run_keeping("store", input, settings, stats, flush, keep, force).await;
        drop(recovery);
        Ok(())
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
