//! The publisher: every candle update onto its NATS subject as it comes, the newest candle per
//! series into the KV bucket `live-candles`, never stalling the engine or storage.
//!
//! In: batches of [`CandleUpdate`] (one per feed frame). Out: versioned JSON on
//! `candles.<exchange>.<product>.<granularity>` and KV entries. Two coalescing
//! [`sink`](crate::sink)s (bounded memory, newest per candle, retries with backoff while NATS
//! is slow or away) take every batch:
//! - the live path publishes as soon as an update arrives (one flush at a time, of everything
//!   that arrived meanwhile: updates coalesce only while a publish is under way, that is under
//!   overload); async-nats batches the socket writes by itself. No batch timer sits on the
//!   path from a frame to the subject.
//! - the KV path batches (50 candles or 100 ms) and writes compare-and-set on the KV revision,
//!   only when the incoming version is higher than the stored one, so an older update never
//!   replaces a newer one, whatever the order of arrival or the number of producers. A stored
//!   value that does not parse (another schema version during a rolling deploy, garbage)
//!   counts as older than any update: it is overwritten and counted, and never blocks a key.
//!
//! Every publish, flush and KV operation has a timeout, so a server that stops reading fails
//! the flush (retried) instead of stalling it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use futures_util::future::Either;
use serde::Serialize;
use tokio::sync::{Mutex, mpsc};
use tokio_util::task::AbortOnDropHandle;

use super::{CandleMessage, kv_key, subject};
use crate::model::{CandleUpdate, Version};
use crate::sink::{SinkReport, SinkSettings, SinkStats};

/// KV compare-and-set writes under way at once.
const CONCURRENT_KV_WRITES: usize = 64;
/// Longest wait for one publish to be queued (the client's buffer is full while the server
/// does not read).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// The KV path flushes every second, or at this many pending candles.
const KV_MAX_PENDING: usize = 5_000;
const KV_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Batches between the publisher's input and its two paths.
const LIVE_CHANNEL: usize = 1024;
/// Longest wait for one KV operation.
const KV_TIMEOUT: Duration = Duration::from_secs(10);

/// The publisher's counters.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// The KV path.
    sink: Arc<SinkStats>,
    /// The live path (subjects).
    live: Arc<SinkStats>,
    /// KV values that did not parse as a candle message (another schema, garbage), treated
    /// as older than any update and overwritten.
    kv_unreadable: AtomicU64,
}

/// What `/health` shows of the publisher.
#[derive(Debug, Clone, Serialize)]
pub struct PublisherReport {
    /// The KV path.
    #[serde(flatten)]
    pub sink: SinkReport,
    /// The live path: publishes to the subjects.
    pub live: SinkReport,
    pub kv_unreadable_overwritten: u64,
}

impl PublisherStats {
    pub fn report(&self) -> PublisherReport {
        PublisherReport {
            sink: self.sink.report(),
            live: self.live.report(),
            kv_unreadable_overwritten: self.kv_unreadable.load(Ordering::Relaxed),
        }
    }
}

/// KV key → (KV revision, version stored there), as last seen.
type KvCache = HashMap<String, (u64, Version)>;

/// The publisher stage.
#[derive(Debug)]
pub struct Publisher {
    client: async_nats::Client,
    kv: Store,
    /// Updates from the fan-out; closed at shutdown.
    input: mpsc::Receiver<Vec<CandleUpdate>>,
    settings: SinkSettings,
    stats: Arc<PublisherStats>,
    channels: Option<crate::telemetry::Channels>,
    /// This instance's origin, sent with every message (see [`super::ORIGIN_HEADER`]).
    origin: Option<Arc<str>>,
}

impl Publisher {
    pub fn new(
        client: async_nats::Client,
        kv: Store,
        input: mpsc::Receiver<Vec<CandleUpdate>>,
    ) -> Self {
        Publisher {
            client,
            kv,
            input,
            settings: SinkSettings {
                // The KV is recovery state (start, reconnects): a second behind is fine, and
                // JetStream writes cost the NATS server far more than plain publishes.
                max_rows: KV_MAX_PENDING,
                flush_interval: KV_FLUSH_INTERVAL,
                ..SinkSettings::default()
            },
            stats: Arc::new(PublisherStats::default()),
            channels: None,
            origin: None,
        }
    }

    /// Names this instance in every message, so that its own live state (which applied the
    /// updates already) skips them unread.
    pub fn with_origin(mut self, origin: Arc<str>) -> Self {
        self.origin = Some(origin);
        self
    }

    /// Registers the publisher's own queues, once they exist, for the backpressure monitor.
    pub fn with_channels(mut self, channels: crate::telemetry::Channels) -> Self {
        self.channels = Some(channels);
        self
    }

    /// Replaces the sink settings (batching, retries, flush timeout).
    pub fn with_settings(mut self, settings: SinkSettings) -> Self {
        self.settings = settings;
        self
    }

    pub fn stats(&self) -> Arc<PublisherStats> {
        self.stats.clone()
    }

    /// Runs until the input closes and everything received is published and in the KV.
    pub async fn run(self) -> anyhow::Result<()> {
        let cache: Arc<Mutex<KvCache>> = Arc::new(Mutex::new(HashMap::new()));
        let (client, kv, stats) = (self.client, self.kv, self.stats);
        let (live_tx, live_rx) = mpsc::channel(LIVE_CHANNEL);
        let (kv_tx, kv_rx) = mpsc::channel(LIVE_CHANNEL);
        if let Some(channels) = &self.channels {
            channels.register("publisher_subjects", &live_tx);
            channels.register("publisher_kv", &kv_tx);
        }
        // The live path flushes whenever anything is pending: one update is enough.
        let live_settings = SinkSettings {
            max_rows: 1,
            // NATS back after an outage: the live path catches up within a second.
            retry_cap: self.settings.retry_cap.min(Duration::from_secs(1)),
            ..self.settings
        };
        let live = crate::sink::run("nats", live_rx, live_settings, stats.live.clone(), {
            let (client, origin) = (client.clone(), self.origin.clone());
            move |rows| {
                let (client, origin) = (client.clone(), origin.clone());
                async move { publish(&client, origin.as_deref(), &rows).await }
            }
        });
        let kv_path = crate::sink::run("nats-kv", kv_rx, self.settings, stats.sink.clone(), {
            let stats = stats.clone();
            move |rows| {
                let (kv, cache, stats) = (kv.clone(), cache.clone(), stats.clone());
                async move { write_kv(&kv, &cache, &stats, &rows).await }
            }
        });
        let mut input = self.input;
        let forward = async move {
            // Both sinks keep receiving while they write: these sends do not wait on NATS.
            while let Some(batch) = input.recv().await {
                if live_tx.send(batch.clone()).await.is_err() || kv_tx.send(batch).await.is_err() {
                    break;
                }
            }
        };
        // Each path is its own task: a long flush of one (the KV's compare-and-set round
        // trips, a burst of publishes) never holds up the other or the forwarding, and the
        // two may run on different cores.
        // Aborted when this future is dropped (the stop's grace is over): nothing of the
        // publisher outlives it.
        let (live, kv_path) = (
            AbortOnDropHandle::new(tokio::spawn(live)),
            AbortOnDropHandle::new(tokio::spawn(kv_path)),
        );
        forward.await;
        let (live, kv_path) = tokio::join!(live, kv_path);
        live.map_err(|e| anyhow::anyhow!("the publisher's live path failed: {e}"))?;
        kv_path.map_err(|e| anyhow::anyhow!("the publisher's KV path failed: {e}"))?;
        Ok(())
    }
}

/// `operation` within `limit`, its error and a timeout both as text.
async fn within<T, E: std::fmt::Display>(
    what: &str,
    limit: Duration,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_elapsed) => Err(format!("{what}: no progress within {limit:?}")),
    }
}

/// Publishes `rows` on their subjects, oldest version first; async-nats sends them as soon as
/// its connection can (no flush is awaited: that would cost a round trip per frame).
async fn publish(
    client: &async_nats::Client,
    origin: Option<&str>,
    rows: &[CandleUpdate],
) -> Result<(), String> {
    let mut rows: Vec<&CandleUpdate> = rows.iter().collect();
    // Oldest first, so subscribers see each series' updates in version order.
    rows.sort_by_key(|u| u.version());
    let headers = origin.map(|origin| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(super::ORIGIN_HEADER, origin);
        headers
    });
    for u in rows {
        let payload = CandleMessage::from_update(u).to_json();
        let subject = subject(&u.candle.product_id, u.candle.granularity);
        let sending = match &headers {
            Some(headers) => {
                Either::Left(client.publish_with_headers(subject, headers.clone(), payload.into()))
            }
            None => Either::Right(client.publish(subject, payload.into())),
        };
        within("publish", PUBLISH_TIMEOUT, sending).await?;
    }
    Ok(())
}

/// Writes the newest version of each KV key among `rows`, when it is newer than the stored one.
async fn write_kv(
    kv: &Store,
    cache: &Mutex<KvCache>,
    stats: &PublisherStats,
    rows: &[CandleUpdate],
) -> Result<(), String> {
    // Per KV key, only the highest version is a candidate for the KV.
    let mut newest: HashMap<String, (&CandleUpdate, Vec<u8>)> = HashMap::new();
    for u in rows {
        let key = kv_key(&u.candle.product_id, u.candle.granularity);
        match newest.get(&key) {
            Some((existing, _)) if existing.version() >= u.version() => {}
            _ => {
                let payload = CandleMessage::from_update(u).to_json();
                newest.insert(key, (u, payload));
            }
        }
    }
    let mut cache = cache.lock().await;
    let entries: Vec<(String, (&CandleUpdate, Vec<u8>))> = newest.into_iter().collect();
    // Every key is tried, whatever happens to the others; the first error fails the flush
    // (and keys already written are no-ops on the retry: the cache knows them).
    let mut first_error: Option<String> = None;
    let mut failed_keys = 0usize;
    for group in entries.chunks(CONCURRENT_KV_WRITES) {
        let mut writes = Vec::with_capacity(group.len());
        for (key, (update, payload)) in group {
            let known = cache.get(key).copied();
            writes.push(put_if_newer(kv, key, update.version(), payload, known));
        }
        let results = futures_util::future::join_all(writes).await;
        for ((key, _), result) in group.iter().zip(results) {
            match result {
                Ok(written) => {
                    if written.overwrote_unreadable {
                        stats.kv_unreadable.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(key = %key, "the KV held an unreadable value; overwritten");
                    }
                    match written.stored {
                        Some(stored) => cache.insert(key.clone(), stored),
                        None => cache.remove(key),
                    };
                }
                Err(e) => {
                    cache.remove(key);
                    failed_keys += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    match first_error {
        None => Ok(()),
        Some(e) => Err(format!("{failed_keys} KV key(s) not written, first: {e}")),
    }
}

/// What a KV key holds after [`put_if_newer`].
#[derive(Debug)]
struct KvWritten {
    /// Its revision and version (`None`: unknown).
    stored: Option<(u64, Version)>,
    /// An unreadable value was found there and replaced.
    overwrote_unreadable: bool,
}

/// What a read of a KV key found.
#[derive(Debug, Clone, Copy)]
enum Found {
    /// Nothing to compare with: create the key.
    Absent,
    /// A readable candle of this version at this revision.
    Version(u64, Version),
    /// A deleted key or a value that does not parse (another schema, garbage) at this
    /// revision: older than any update, overwritten.
    Replaceable { revision: u64, unreadable: bool },
}

/// Writes `payload` under `key` if `version` is higher than the stored one, by
/// compare-and-set on the KV revision; returns what the key holds afterwards.
async fn put_if_newer(
    kv: &Store,
    key: &str,
    version: Version,
    payload: &[u8],
    known: Option<(u64, Version)>,
) -> Result<KvWritten, String> {
    let mut found = match known {
        Some((revision, stored)) => Found::Version(revision, stored),
        None => Found::Absent,
    };
    let mut overwrote_unreadable = false;
    for _attempt in 0..8 {
        let written = match found {
            Found::Version(revision, stored) if stored >= version => {
                return Ok(KvWritten {
                    stored: Some((revision, stored)),
                    overwrote_unreadable,
                });
            }
            Found::Version(revision, _) | Found::Replaceable { revision, .. } => {
                within(
                    "KV update",
                    KV_TIMEOUT,
                    kv.update(key, payload.to_vec().into(), revision),
                )
                .await
            }
            Found::Absent => {
                within(
                    "KV create",
                    KV_TIMEOUT,
                    kv.create(key, payload.to_vec().into()),
                )
                .await
            }
        };
        match written {
            Ok(revision) => {
                if let Found::Replaceable {
                    unreadable: true, ..
                } = found
                {
                    overwrote_unreadable = true;
                }
                return Ok(KvWritten {
                    stored: Some((revision, version)),
                    overwrote_unreadable,
                });
            }
            Err(conflict) => {
                // Someone else wrote the key (or our cache is stale): read it and decide again.
                let entry = within("KV read", KV_TIMEOUT, kv.entry(key))
                    .await
                    .map_err(|e| format!("{e} (after {conflict})"))?;
                found = match entry {
                    Some(entry) if !entry.value.is_empty() => {
                        match CandleMessage::parse(&entry.value).and_then(|m| m.parsed_version()) {
                            Ok(stored) => Found::Version(entry.revision, stored),
                            Err(_unreadable) => Found::Replaceable {
                                revision: entry.revision,
                                unreadable: true,
                            },
                        }
                    }
                    // A deleted key: a create is refused, an update on its revision works.
                    Some(entry) => Found::Replaceable {
                        revision: entry.revision,
                        unreadable: false,
                    },
                    None => Found::Absent,
                };
            }
        }
    }
    Err(format!("KV key {key} kept changing under us"))
}
