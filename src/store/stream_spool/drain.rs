//! Writing what the stream holds, for any instance's writer: a shared durable consumer, each
//! message acknowledged once its rows are written.
//!
//! In: messages of the stream and a function writing rows. Out: rows written, counted in the
//! sink's stats; an unreadable message counted as lost and acknowledged, one of an unknown
//! version left for a build that reads it.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::format::{Chunk, VERSION};
use super::{FETCH_BATCH, FETCH_EXPIRES, REQUEST_TIMEOUT, ROWS_HEADER, StreamSpool};
use crate::model::CandleUpdate;
use crate::sink::{SinkSettings, SinkStats};
use crate::store::refusal::escaped;

/// What became of one message of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    Written,
    Lost,
    Later,
    Stopped,
}

impl StreamSpool {
    /// Writes what the stream holds through `write` (it returns how many rows the database
    /// refused for their content), each message acknowledged once its rows are written and
    /// retried with the sink's backoff meanwhile; counts in `stats`. Runs until `stop` (a
    /// message being written is then handed back at once), waiting for new messages (another
    /// instance's stop) when the stream is empty.
    pub async fn drain<W, Fut>(
        &self,
        mut write: W,
        stats: &SinkStats,
        settings: SinkSettings,
        stop: CancellationToken,
    ) where
        W: FnMut(Vec<CandleUpdate>) -> Fut,
        Fut: Future<Output = Result<u64, String>>,
    {
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            let consumer = tokio::select! {
                () = stop.cancelled() => return,
                consumer = self.consumer() => consumer,
            };
            let consumer = match consumer {
                Ok(consumer) => {
                    failures = 0;
                    consumer
                }
                Err(e) => {
                    let delay = settings.retry_delay(failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        error = %crate::config::redact(&e),
                        retry_in_ms = delay.as_millis() as u64,
                        "cannot reach the JetStream spool yet; retrying"
                    );
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            loop {
                let fetching = consumer
                    .batch()
                    .max_messages(FETCH_BATCH)
                    .expires(FETCH_EXPIRES)
                    .messages();
                let batch = tokio::select! {
                    () = stop.cancelled() => return,
                    batch = tokio::time::timeout(REQUEST_TIMEOUT, fetching) => batch,
                };
                let mut batch = match batch {
                    Ok(Ok(batch)) => batch,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot fetch from the JetStream spool");
                        break;
                    }
                    Err(_elapsed) => {
                        tracing::warn!("no answer fetching from the JetStream spool");
                        break;
                    }
                };
                let mut broken = false;
                loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        next = tokio::time::timeout(FETCH_EXPIRES + REQUEST_TIMEOUT, batch.next()) => next,
                    };
                    let message = match next {
                        Ok(Some(Ok(message))) => message,
                        Ok(None) => break,
                        Ok(Some(Err(e))) => {
                            tracing::warn!(error = %e, "fetching from the JetStream spool failed");
                            broken = true;
                            break;
                        }
                        Err(_elapsed) => {
                            broken = true;
                            break;
                        }
                    };
                    let handled = handle(&message, &mut write, stats, &settings, &stop).await;
                    if handled == Handled::Stopped {
                        return;
                    }
                }
                if broken {
                    break;
                }
            }
            // Fetching failed: a short pause, then the stream and consumer again.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(settings.retry_base) => {}
            }
        }
    }
}

/// Writes one message's rows (retrying until written or `stop`), then acknowledges it.
async fn handle<W, Fut>(
    message: &jetstream::Message,
    write: &mut W,
    stats: &SinkStats,
    settings: &SinkSettings,
    stop: &CancellationToken,
) -> Handled
where
    W: FnMut(Vec<CandleUpdate>) -> Fut,
    Fut: Future<Output = Result<u64, String>>,
{
    let payload = &message.message.payload;
    let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
    let rows = match serde_json::from_slice::<Chunk>(payload) {
        Ok(chunk) if chunk.spot_canvas_spool == VERSION => chunk.rows,
        Ok(chunk) => {
            tracing::error!(
                version = chunk.spot_canvas_spool,
                sequence,
                "a message of the JetStream spool has a format this build does not read; left for one that does"
            );
            let _sent = acknowledge(message, AckKind::Nak(Some(Duration::from_secs(60)))).await;
            return Handled::Later;
        }
        Err(e) => {
            let lost = message
                .message
                .headers
                .as_ref()
                .and_then(|h| h.get(ROWS_HEADER))
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .unwrap_or(1);
            stats.record_recovery_lost(lost);
            tracing::error!(
                sequence,
                lost,
                error = %e,
                text = %escaped(&String::from_utf8_lossy(&payload[..payload.len().min(512)]), 120),
                "a message of the JetStream spool cannot be read; it is lost"
            );
            if let Err(e) = acknowledge(message, AckKind::Ack).await {
                tracing::warn!(error = %e, sequence, "cannot acknowledge an unreadable spool message");
            }
            return Handled::Lost;
        }
    };
    let count = rows.len() as u64;
    tracing::info!(
        rows = count,
        sequence,
        "writing rows a stop kept in the JetStream spool"
    );
    let mut attempt = 0u32;
    loop {
        let written = tokio::select! {
            () = stop.cancelled() => {
                // Back to the stream at once, for the next writer.
                let _sent = acknowledge(message, AckKind::Nak(None)).await;
                return Handled::Stopped;
            }
            written = write(rows.clone()) => written,
        };
        match written {
            Ok(refused) => {
                stats.record_refused(refused);
                stats.record_recovered(count.saturating_sub(refused));
                break;
            }
            Err(e) => {
                let delay = settings.retry_delay(attempt);
                attempt = attempt.saturating_add(1);
                tracing::warn!(
                    error = %crate::config::redact(&e),
                    rows = count,
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot write the JetStream spool's rows yet; retrying"
                );
                // Still being worked on: not redelivered elsewhere meanwhile.
                let _sent = acknowledge(message, AckKind::Progress).await;
                tokio::select! {
                    () = stop.cancelled() => {
                        let _sent = acknowledge(message, AckKind::Nak(None)).await;
                        return Handled::Stopped;
                    }
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    if let Err(e) = acknowledge(message, AckKind::Ack).await {
        // Redelivered after the ack wait: writing the rows again changes nothing.
        tracing::warn!(error = %e, sequence, "cannot acknowledge a written spool message");
    }
    Handled::Written
}

/// Sends `kind` for `message` and waits for the server's confirmation, bounded.
async fn acknowledge(message: &jetstream::Message, kind: AckKind) -> Result<(), String> {
    let sending = async {
        match kind {
            // Confirmed: the message is gone from the stream once this returns.
            AckKind::Ack => message.double_ack().await,
            other => message.ack_with(other).await,
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, sending).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_elapsed) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}
