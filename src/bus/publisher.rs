//! The publisher: every candle update onto its NATS subject, the newest candle per series
//! into the KV bucket `live-candles`, never stalling the engine or storage.
//!
//! In: batches of [`CandleUpdate`]. Out: versioned JSON on `candles.<exchange>.<product>.
//! <granularity>` and KV entries. Runs on the coalescing [`sink`](crate::sink) (its own
//! bounded memory, newest per candle, retries with backoff while NATS is slow or away). KV
//! writes are compare-and-set on the KV revision and happen only when the incoming version is
//! higher than the stored one, so an older update never replaces a newer one, whatever the
//! order of arrival or the number of producers.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::kv::Store;
use tokio::sync::{Mutex, mpsc};

use super::{CandleMessage, kv_key, subject};
use crate::model::{CandleUpdate, Version};
use crate::sink::{SinkSettings, SinkStats};

/// KV compare-and-set writes under way at once.
const CONCURRENT_KV_WRITES: usize = 64;

/// The publisher's counters.
pub type PublisherStats = SinkStats;

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
            settings: SinkSettings::default(),
            stats: Arc::new(PublisherStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<PublisherStats> {
        self.stats.clone()
    }

    /// Runs until the input closes and everything received is published.
    pub async fn run(self) -> anyhow::Result<()> {
        let cache: Arc<Mutex<KvCache>> = Arc::new(Mutex::new(HashMap::new()));
        let (client, kv) = (self.client, self.kv);
        crate::sink::run("nats", self.input, self.settings, self.stats, move |rows| {
            let (client, kv, cache) = (client.clone(), kv.clone(), cache.clone());
            async move {
                let result = publish_all(&client, &kv, &cache, &rows).await;
                (rows, result)
            }
        })
        .await;
        Ok(())
    }
}

async fn publish_all(
    client: &async_nats::Client,
    kv: &Store,
    cache: &Mutex<KvCache>,
    rows: &[CandleUpdate],
) -> Result<(), String> {
    let mut rows: Vec<&CandleUpdate> = rows.iter().collect();
    // Oldest first, so subscribers see each series' updates in version order.
    rows.sort_by_key(|u| u.version());
    // Per KV key, only the highest version is a candidate for the KV.
    let mut newest: HashMap<String, (&CandleUpdate, Vec<u8>)> = HashMap::new();
    for u in rows {
        let payload = CandleMessage::from_update(u).to_json();
        client
            .publish(
                subject(&u.candle.product_id, u.candle.granularity),
                payload.clone().into(),
            )
            .await
            .map_err(|e| format!("publish: {e}"))?;
        let key = kv_key(&u.candle.product_id, u.candle.granularity);
        match newest.get(&key) {
            Some((existing, _)) if existing.version() >= u.version() => {}
            _ => {
                newest.insert(key, (u, payload));
            }
        }
    }
    client.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut cache = cache.lock().await;
    let entries: Vec<(String, (&CandleUpdate, Vec<u8>))> = newest.into_iter().collect();
    for group in entries.chunks(CONCURRENT_KV_WRITES) {
        let mut writes = Vec::with_capacity(group.len());
        for (key, (update, payload)) in group {
            let known = cache.get(key).copied();
            writes.push(put_if_newer(kv, key, update.version(), payload, known));
        }
        let results = futures_util::future::join_all(writes).await;
        for ((key, _), result) in group.iter().zip(results) {
            match result {
                Ok(Some(stored)) => {
                    cache.insert(key.clone(), stored);
                }
                Ok(None) => {
                    cache.remove(key);
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Writes `payload` under `key` if `version` is higher than the stored one, by
/// compare-and-set on the KV revision; returns what the key holds afterwards.
async fn put_if_newer(
    kv: &Store,
    key: &str,
    version: Version,
    payload: &[u8],
    mut known: Option<(u64, Version)>,
) -> Result<Option<(u64, Version)>, String> {
    for _attempt in 0..8 {
        if let Some((_, stored)) = known
            && stored >= version
        {
            return Ok(known);
        }
        let written = match known {
            Some((revision, _)) => kv
                .update(key, payload.to_vec().into(), revision)
                .await
                .map_err(|e| e.to_string()),
            None => kv
                .create(key, payload.to_vec().into())
                .await
                .map_err(|e| e.to_string()),
        };
        match written {
            Ok(revision) => return Ok(Some((revision, version))),
            Err(conflict) => {
                // Someone else wrote the key (or our cache is stale): read it and decide again.
                let entry = kv
                    .entry(key)
                    .await
                    .map_err(|e| format!("KV read after {conflict}: {e}"))?;
                known = match entry {
                    Some(entry) if !entry.value.is_empty() => {
                        let stored = CandleMessage::parse(&entry.value)
                            .and_then(|m| m.parsed_version())
                            .map_err(|e| format!("KV holds a bad value under {key}: {e}"))?;
                        Some((entry.revision, stored))
                    }
                    Some(entry) => {
                        // A deleted key: a create is refused, an update on its revision works.
                        Some((entry.revision, Version::default()))
                    }
                    None => None,
                };
            }
        }
    }
    Err(format!("KV key {key} kept changing under us"))
}
