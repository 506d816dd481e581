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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Repository;
use super::refusal::{escaped, refusal, write_splitting};
use super::spool::Spool;
use super::stream_spool::StreamSpool;
use crate::model::CandleUpdate;
use crate::sink::{Kept, Refused, SinkSettings, SinkStats};

/// Of a keep's time, what is left for the file after JetStream.
const FILE_RESERVE: Duration = Duration::from_millis(400);
/// How long the keep waits for the stream's drain to hand back the message it holds.
const DRAIN_STOP_WAIT: Duration = Duration::from_millis(300);

/// Refused rows are logged at most once in this time (the rest are counted in the next line).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Longest product id shown in a refusal's log line.
const MAX_LOGGED_ID_CHARS: usize = 64;

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

/// Keeps `rows` by `deadline`: in `stream` first when there is one, then what it did not take
/// (or all of them) in the file `spool`. Says how many of them are kept, and where.
async fn keep_rows(
    rows: Vec<CandleUpdate>,
    deadline: Instant,
    stream: Option<&StreamSpool>,
    spool: &Spool,
) -> Result<Kept, String> {
    let given = rows.len() as u64;
    let (in_stream, rest) = match stream {
        Some(stream) => {
            let by = deadline
                .checked_sub(FILE_RESERVE)
                .unwrap_or(deadline)
                .max(Instant::now());
            let stored = stream.keep(rows, by).await;
            (stored.acked, stored.unacked)
        }
        None => (0, rows),
    };
    let to_file = rest.len() as u64;
    let mut in_file = 0;
    let mut file_error = None;
    if !rest.is_empty() {
        let saving = tokio::task::spawn_blocking({
            let spool = spool.clone();
            move || spool.save(rest)
        });
        match saving.await {
            Ok(Ok(saved)) => in_file = saved.kept,
            Ok(Err(e)) => {
                file_error = Some(format!(
                    "cannot write the spool {}: {e}",
                    spool.path().display()
                ));
            }
            Err(e) => file_error = Some(format!("writing the spool failed: {e}")),
        }
    }
    let place = match (stream.is_some(), in_stream > 0, to_file > 0) {
        (_, true, true) => "jetstream+file",
        (_, true, false) => "jetstream",
        _ => "file",
    };
    tracing::info!(
        rows = given,
        place,
        in_jetstream = in_stream,
        in_file,
        left_out = given - in_stream - in_file,
        path = %spool.path().display(),
        "the writer's stop kept its rows"
    );
    match file_error {
        Some(e) if in_stream == 0 => Err(e),
        Some(e) => {
            tracing::error!(error = %e, rows = to_file, "the rows JetStream did not take are lost");
            Ok(Kept {
                rows: in_stream,
                place: place.to_owned(),
            })
        }
        None => Ok(Kept {
            rows: in_stream + in_file,
            place: place.to_owned(),
        }),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes the rows an earlier run kept in `spool`, retrying with the sink's backoff until
/// they are written, then removes the spool (unless this run saved to it meanwhile).
async fn recover(
    repository: Repository,
    spool: Spool,
    stats: Arc<WriterStats>,
    refusals: Arc<RefusalLog>,
    settings: WriterSettings,
) {
    let loaded = match tokio::task::spawn_blocking({
        let spool = spool.clone();
        move || spool.load()
    })
    .await
    {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(e)) => {
            tracing::error!(error = %e, path = %spool.path().display(), "cannot read the writer's spool; it stays for the next start");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the writer's spool failed");
            return;
        }
    };
    stats.record_recovery_lost(loaded.lost);
    if loaded.rows.is_empty() && loaded.lost == 0 {
        if loaded.stamp.is_some() {
            let _removed = remove_if_unchanged(&spool, &loaded).await;
        }
        return;
    }
    tracing::info!(
        rows = loaded.rows.len(),
        lost = loaded.lost,
        path = %spool.path().display(),
        "writing the rows the last run kept in the writer's spool"
    );
    let mut attempt = 0u32;
    loop {
        match write_all(&repository, &loaded.rows, &refusals).await {
            Ok(refused) => {
                stats.record_refused(refused);
                stats.record_recovered(loaded.rows.len() as u64 - refused);
                break;
            }
            Err(e) => {
                let delay = crate::backoff::equal_jitter(
                    settings.retry_base,
                    settings.retry_cap,
                    attempt,
                    rand::random::<f64>(),
                );
                attempt = attempt.saturating_add(1);
                tracing::warn!(
                    error = %crate::config::redact(&e.to_string()),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot write the writer's spool yet; retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
    match remove_if_unchanged(&spool, &loaded).await {
        Ok(removed) => tracing::info!(
            rows = loaded.rows.len(),
            removed,
            "the rows of the writer's spool are written"
        ),
        Err(e) => tracing::error!(
            error = %e,
            path = %spool.path().display(),
            "the rows of the writer's spool are written, but it cannot be removed (writing them again changes nothing)"
        ),
    }
}

/// [`Spool::remove_if_unchanged`] on a blocking thread.
async fn remove_if_unchanged(
    spool: &Spool,
    loaded: &super::spool::Loaded,
) -> std::io::Result<bool> {
    let (spool, stamp) = (spool.clone(), loaded.stamp);
    tokio::task::spawn_blocking(move || spool.remove_if_unchanged(stamp))
        .await
        .map_err(std::io::Error::other)?
}

/// Writes a flush's rows (distinct keys) in statements of at most 5,000 rows, up to 4 at a
/// time; a statement refused for its content is split until the refused rows are found, and
/// those are left out (logged through `refusals`). Returns how many were refused. On any other
/// failure the sink retries all of them; rows already written are then no-ops.
async fn write_all(
    repository: &Repository,
    rows: &[CandleUpdate],
    refusals: &RefusalLog,
) -> Result<u64, sqlx::Error> {
    let mut refused = 0;
    for group in rows.chunks(MAX_ROWS_PER_STATEMENT * CONCURRENT_STATEMENTS) {
        let mut statements = Vec::with_capacity(CONCURRENT_STATEMENTS);
        for chunk in group.chunks(MAX_ROWS_PER_STATEMENT) {
            statements.push(async move {
                let found = write_splitting(chunk.len(), |range| async move {
                    repository.upsert_candles(&chunk[range]).await.map(|_| ())
                })
                .await?;
                Ok::<_, sqlx::Error>(
                    found
                        .into_iter()
                        .map(|(i, e)| (&chunk[i], e))
                        .collect::<Vec<_>>(),
                )
            });
        }
        for found in futures_util::future::try_join_all(statements).await? {
            refused += found.len() as u64;
            refusals.note(&found);
        }
    }
    Ok(refused)
}

/// The rate-limited log of refused rows.
#[derive(Debug, Default)]
struct RefusalLog {
    /// When the last line was logged, and the rows refused since without a line.
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl RefusalLog {
    /// Counts `refused` and logs the first of them, unless a line was logged less than
    /// [`REFUSAL_LOG_EVERY`] ago (then the next line says how many went unlogged).
    fn note(&self, refused: &[(&CandleUpdate, sqlx::Error)]) {
        let Some((first, error)) = refused.first() else {
            return;
        };
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        if state
            .0
            .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_EVERY)
        {
            state.1 += refused.len() as u64;
            return;
        }
        let unlogged = std::mem::take(&mut state.1);
        state.0 = Some(now);
        drop(state);
        let why = refusal(error);
        tracing::error!(
            rows = refused.len(),
            unlogged_before = unlogged,
            product = %escaped(&first.candle.product_id, MAX_LOGGED_ID_CHARS),
            granularity = %first.candle.granularity,
            start = %first.candle.start,
            code = why.code.as_deref().unwrap_or(""),
            error = %why.message,
            "PostgreSQL refused candle rows for their content; they are dropped, the rest written"
        );
    }
}
