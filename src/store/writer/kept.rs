//! The rows kept at the stop: keeping them (JetStream first, then the file) and, at the next
//! start, writing what the file spool holds.
//!
//! In: the rows the writer still holds at its stop; the file spool at the start. Out: [`Kept`]
//! (how many, and where); the spool's rows written and the file removed.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::write::{RefusalLog, write_all};
use super::{WriterSettings, WriterStats};
use crate::model::CandleUpdate;
use crate::sink::Kept;
use crate::store::Repository;
use crate::store::spool::{Loaded, Spool};
use crate::store::stream_spool::StreamSpool;

/// Of a keep's time, what is left for the file after JetStream.
const FILE_RESERVE: Duration = Duration::from_millis(400);

/// Keeps `rows` by `deadline`: in `stream` first when there is one, then what it did not take
/// (or all of them) in the file `spool`. Says how many of them are kept, and where.
pub(super) async fn keep_rows(
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

/// Writes the rows an earlier run kept in `spool`, retrying with the sink's backoff until
/// they are written, then removes the spool (unless this run saved to it meanwhile).
pub(super) async fn recover(
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
                let delay = settings.retry_delay(attempt);
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
async fn remove_if_unchanged(spool: &Spool, loaded: &Loaded) -> std::io::Result<bool> {
    let (spool, stamp) = (spool.clone(), loaded.stamp);
    tokio::task::spawn_blocking(move || spool.remove_if_unchanged(stamp))
        .await
        .map_err(std::io::Error::other)?
}
