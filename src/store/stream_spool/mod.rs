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

mod drain;
mod format;
mod keep;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, stream};

use crate::model::CandleUpdate;

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
