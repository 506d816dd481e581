//! The writer's JetStream spool: candle rows it could not write by the stop, kept in a
//! JetStream stream of the external NATS (it outlives the instance; on Cloud Run `DATA_DIR`
//! is memory and the [file spool](super::spool) dies with the instance) and written after the
//! next start of any instance.
//!
//! In: rows from the writer at its stop ([`StreamSpool::keep`]), published to the stream
//! [`STREAM`] (subject [`SUBJECT`], work-queue retention, file storage, capped at
//! [`MAX_BYTES`] refusing new messages past it, replicas as the KV's `NATS_KV_REPLICAS`) in
//! chunks well under the server's `max_payload` (half of it, at most [`MAX_CHUNK_BYTES`]), each
//! publish awaited for its acknowledgement before a deadline; what was not acknowledged is
//! handed back (the writer puts it in the file spool). Out: the same rows, for any instance's
//! writer ([`StreamSpool::drain`]): a durable pull consumer [`CONSUMER`] shared by every
//! instance; a message is acknowledged (and so removed) only once its rows are written,
//! retried with backoff meanwhile (with progress acknowledgements, so it is not redelivered
//! elsewhere while PostgreSQL is away). A message that cannot be read costs that message:
//! counted as lost (the rows its header names, else one), logged escaped, acknowledged so it
//! is not redelivered forever. A message of an unknown format version is left for a build that
//! reads it. A row written twice (an acknowledgement lost in transit, the same rows in the
//! file spool too) changes nothing: upserts only take higher versions.
//!
//! Format, version 1: a JSON object `{"spot_canvas_spool":1,"rows":[CandleUpdate, ...]}`, its
//! row count in the header `Spot-Spool-Rows`.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, AckKind, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::refusal::escaped;
use crate::model::CandleUpdate;
use crate::sink::{SinkSettings, SinkStats};

/// The stream's name.
pub const STREAM: &str = "SPOT_CANVAS_WRITER_SPOOL";
/// The one subject of the stream.
pub const SUBJECT: &str = "spot-canvas.writer-spool";
/// The durable pull consumer every instance drains through.
pub const CONSUMER: &str = "spot-canvas-writer-spool";
/// The stream's size cap: past it a publish is refused (and the rows go to the file).
pub const MAX_BYTES: i64 = 256 * 1024 * 1024;
/// Largest message published.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// The header holding a message's row count.
pub const ROWS_HEADER: &str = "Spot-Spool-Rows";
/// The format this build writes and reads.
const VERSION: u32 = 1;
/// Publishes awaiting their acknowledgement at once.
const IN_FLIGHT: usize = 16;
/// Bound of every request to the server outside the stop (stream, consumer, ack).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fetched message stays with its instance without an acknowledgement.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// A fetch waits this long for messages.
const FETCH_EXPIRES: Duration = Duration::from_secs(5);
/// Messages fetched at once (each written before the next).
const FETCH_BATCH: usize = 4;

/// A message as read back.
#[derive(Debug, Deserialize)]
struct Chunk {
    spot_canvas_spool: u32,
    #[serde(default)]
    rows: Vec<CandleUpdate>,
}

/// The writer's stream in one NATS deployment. Clones share the client.
#[derive(Debug, Clone)]
pub struct StreamSpool {
    client: async_nats::Client,
    js: jetstream::Context,
    replicas: usize,
    max_bytes: i64,
    /// The stream is known to exist (created by this process).
    ready: Arc<AtomicBool>,
}

/// What [`StreamSpool::keep`] did.
#[derive(Debug, Default)]
pub struct Stored {
    /// Rows whose message the stream acknowledged.
    pub acked: u64,
    /// Rows it did not take (no stream, refused, no answer by the deadline).
    pub unacked: Vec<CandleUpdate>,
}

/// What became of one message of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    Written,
    Lost,
    Later,
    Stopped,
}

impl StreamSpool {
    /// The stream of `client`'s NATS, with `replicas` (the KV bucket's setting).
    pub fn new(client: async_nats::Client, replicas: usize) -> StreamSpool {
        let js = jetstream::new(client.clone());
        StreamSpool {
            client,
            js,
            replicas: replicas.max(1),
            max_bytes: MAX_BYTES,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: STREAM.to_owned(),
            description: Some(
                "candle rows a spot-canvas writer could not write by its stop".to_owned(),
            ),
            subjects: vec![SUBJECT.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_bytes: self.max_bytes,
            discard: stream::DiscardPolicy::New,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// Creates the stream, or updates its settings.
    async fn ensure(&self) -> Result<stream::Stream, String> {
        let config = self.config();
        let info = tokio::time::timeout(REQUEST_TIMEOUT, self.js.create_or_update_stream(config))
            .await
            .map_err(|_elapsed| format!("no answer within {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        self.ready.store(true, Ordering::Relaxed);
        tokio::time::timeout(REQUEST_TIMEOUT, self.js.get_stream(&info.config.name))
            .await
            .map_err(|_elapsed| format!("no answer within {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())
    }

    /// The largest message this server takes from us: half its `max_payload`, at most
    /// [`MAX_CHUNK_BYTES`].
    fn chunk_limit(&self) -> usize {
        let max_payload = self.client.server_info().max_payload;
        if max_payload == 0 {
            return 64 * 1024;
        }
        (max_payload / 2).clamp(1024, MAX_CHUNK_BYTES)
    }

    /// Publishes `rows` in chunks, each awaited for its acknowledgement until `deadline`;
    /// hands back the rows of every chunk not acknowledged by then.
    pub async fn keep(&self, rows: Vec<CandleUpdate>, deadline: Instant) -> Stored {
        if rows.is_empty() {
            return Stored::default();
        }
        if !self.ready.load(Ordering::Relaxed) {
            let config = self.config();
            match tokio::time::timeout_at(deadline, self.js.get_or_create_stream(config)).await {
                Ok(Ok(_stream)) => self.ready.store(true, Ordering::Relaxed),
                Ok(Err(e)) => {
                    tracing::warn!(error = %crate::config::redact(&e.to_string()), "cannot create the JetStream spool");
                    return Stored {
                        acked: 0,
                        unacked: rows,
                    };
                }
                Err(_elapsed) => {
                    tracing::warn!("no answer from JetStream for its spool by the deadline");
                    return Stored {
                        acked: 0,
                        unacked: rows,
                    };
                }
            }
        }
        let (chunks, oversized) = encode(&rows, self.chunk_limit());
        let mut failed: Vec<usize> = oversized;
        let mut acked = 0u64;
        let mut in_flight: VecDeque<(jetstream::context::PublishAckFuture, Vec<usize>)> =
            VecDeque::new();
        let mut first_error: Option<String> = None;
        let mut chunks = chunks.into_iter();
        for (payload, range) in chunks.by_ref() {
            if Instant::now() >= deadline {
                failed.extend(range);
                break;
            }
            if in_flight.len() >= IN_FLIGHT
                && let Some((ack, range)) = in_flight.pop_front()
            {
                match await_ack(ack, deadline).await {
                    Ok(()) => acked += range.len() as u64,
                    Err(e) => {
                        first_error.get_or_insert(e);
                        failed.extend(range);
                    }
                }
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(ROWS_HEADER, range.len().to_string().as_str());
            let publishing = self.js.publish_with_headers(SUBJECT, headers, payload);
            match tokio::time::timeout_at(deadline, publishing).await {
                Ok(Ok(ack)) => in_flight.push_back((ack, range)),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e.to_string());
                    failed.extend(range);
                }
                Err(_elapsed) => {
                    first_error.get_or_insert("no answer by the deadline".to_owned());
                    failed.extend(range);
                }
            }
        }
        failed.extend(chunks.flat_map(|(_, range)| range));
        for (ack, range) in in_flight {
            match await_ack(ack, deadline).await {
                Ok(()) => acked += range.len() as u64,
                Err(e) => {
                    first_error.get_or_insert(e);
                    failed.extend(range);
                }
            }
        }
        if let Some(error) = first_error {
            tracing::warn!(
                error = %crate::config::redact(&error),
                acked,
                "JetStream did not take every row of the writer's stop"
            );
        }
        failed.sort_unstable();
        let mut rows: Vec<Option<CandleUpdate>> = rows.into_iter().map(Some).collect();
        let unacked = failed
            .into_iter()
            .filter_map(|i| rows.get_mut(i).and_then(Option::take))
            .collect();
        Stored { acked, unacked }
    }

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
                    let delay = backoff(&settings, failures);
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

    /// The stream (created if missing) and the shared durable consumer.
    async fn consumer(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, String> {
        let stream = self.ensure().await?;
        let config = pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            description: Some("spot-canvas writers write the rows kept at a stop".to_owned()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: -1,
            ..Default::default()
        };
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            stream.get_or_create_consumer(CONSUMER, config),
        )
        .await
        .map_err(|_elapsed| format!("no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())
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
                let delay = backoff(settings, attempt);
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

/// Waits for a publish's acknowledgement until `deadline`.
async fn await_ack(
    ack: jetstream::context::PublishAckFuture,
    deadline: Instant,
) -> Result<(), String> {
    match tokio::time::timeout_at(deadline, ack.into_future()).await {
        Ok(Ok(_ack)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_elapsed) => Err("no acknowledgement by the deadline".to_owned()),
    }
}

/// `rows` as messages of at most `limit` bytes each, with the indices of the rows each holds;
/// and the indices of rows too large for a message of their own (handed back).
fn encode(rows: &[CandleUpdate], limit: usize) -> (Vec<(Bytes, Vec<usize>)>, Vec<usize>) {
    const HEAD: &[u8] = b"{\"spot_canvas_spool\":1,\"rows\":[";
    const TAIL: &[u8] = b"]}";
    let mut chunks = Vec::new();
    let mut oversized = Vec::new();
    let mut body: Vec<u8> = HEAD.to_vec();
    let mut held: Vec<usize> = Vec::new();
    for (i, update) in rows.iter().enumerate() {
        let Ok(line) = serde_json::to_vec(update) else {
            oversized.push(i);
            continue;
        };
        if HEAD.len() + line.len() + TAIL.len() > limit {
            oversized.push(i);
            continue;
        }
        if !held.is_empty() && body.len() + 1 + line.len() + TAIL.len() > limit {
            body.extend_from_slice(TAIL);
            chunks.push((
                Bytes::from(std::mem::replace(&mut body, HEAD.to_vec())),
                std::mem::take(&mut held),
            ));
        }
        if !held.is_empty() {
            body.push(b',');
        }
        body.extend_from_slice(&line);
        held.push(i);
    }
    if !held.is_empty() {
        body.extend_from_slice(TAIL);
        chunks.push((Bytes::from(body), held));
    }
    (chunks, oversized)
}

fn backoff(settings: &SinkSettings, failures: u32) -> Duration {
    crate::backoff::equal_jitter(
        settings.retry_base,
        settings.retry_cap,
        failures,
        rand::random::<f64>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::spool::tests::update;

    #[test]
    fn chunks_stay_under_the_limit_and_hold_every_row_once_in_a_readable_message() {
        let rows: Vec<CandleUpdate> = (0..500).map(|m| update("BTC-USD", m, 1)).collect();
        let one = serde_json::to_vec(&rows[0]).expect("json").len();
        let limit = 40 + 7 * (one + 1);
        let (chunks, oversized) = encode(&rows, limit);
        assert!(oversized.is_empty());
        assert!(chunks.len() >= 500 / 7, "{}", chunks.len());
        let mut seen = Vec::new();
        for (payload, indices) in &chunks {
            assert!(payload.len() <= limit, "{} > {limit}", payload.len());
            let chunk: Chunk = serde_json::from_slice(payload).expect("readable");
            assert_eq!(chunk.spot_canvas_spool, VERSION);
            assert_eq!(chunk.rows.len(), indices.len());
            for (row, i) in chunk.rows.iter().zip(indices) {
                assert_eq!(row.candle.start, rows[*i].candle.start);
            }
            seen.extend(indices.iter().copied());
        }
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        // A limit no row fits in: every row handed back, none published.
        let (chunks, oversized) = encode(&rows[..3], 20);
        assert!(chunks.is_empty());
        assert_eq!(oversized, vec![0, 1, 2]);
    }
}
