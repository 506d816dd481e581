//! Writing rows: statements of at most 5,000 rows, up to 4 at a time, a refused row left out
//! and logged at a bounded rate.
//!
//! In: a flush's rows (distinct keys). Out: the rows written and the count refused, or the
//! error that says nothing about the rows (the caller retries all of them).

use std::sync::Mutex;
use std::time::Duration;

use crate::model::CandleUpdate;
use crate::store::Repository;
use crate::store::refusal::{escaped, refusal, write_splitting};

/// Refused rows are logged at most once in this time (the rest are counted in the next line).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Longest product id shown in a refusal's log line.
const MAX_LOGGED_ID_CHARS: usize = 64;

/// Rows per statement at most (UNNEST arrays: one parameter per column whatever the rows).
const MAX_ROWS_PER_STATEMENT: usize = 5_000;
/// Statements of one flush run concurrently, each on its own connection, on disjoint keys.
const CONCURRENT_STATEMENTS: usize = 4;

/// Writes a flush's rows (distinct keys) in statements of at most 5,000 rows, up to 4 at a
/// time; a statement refused for its content is split until the refused rows are found, and
/// those are left out (logged through `refusals`). Returns how many were refused. On any other
/// failure the sink retries all of them; rows already written are then no-ops.
pub(super) async fn write_all(
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
pub(super) struct RefusalLog {
    /// When the last line was logged, and the rows refused since without a line.
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl RefusalLog {
    /// Counts `refused` and logs the first of them, unless a line was logged less than
    /// [`REFUSAL_LOG_EVERY`] ago (then the next line says how many went unlogged).
    pub(super) fn note(&self, refused: &[(&CandleUpdate, sqlx::Error)]) {
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
