//! The per-instance live state: the newest candle of every series, fed by one NATS
//! subscription, handed to the web layer's clients.
//!
//! In: messages on `candles.>`, and the KV bucket at start, after a NATS reconnect and after a
//! slow-consumer event (core NATS is at-most-once: the KV fills what was missed). Out: for a
//! set of series, the current candle of each, then every newer update, with no gap and no
//! duplicate between the two and never an update older than one already delivered. One
//! subscription per instance, whatever the number of clients; each client has a bounded
//! queue, and a client too slow to drain it is cut off (its stream ends; it subscribes again).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{ALL_CANDLES, CandleMessage};
use crate::model::{CandleUpdate, Granularity};

/// Longest reload from the KV.
const KV_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait to unsubscribe at the stop.
const UNSUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A candle series: product and granularity.
pub type Series = (String, Granularity);

#[derive(Debug)]
struct Subscriber {
    /// `None`: every series.
    series: Option<HashSet<Series>>,
    /// The client's queue; dropped when the client falls behind.
    tx: mpsc::Sender<CandleUpdate>,
}

#[derive(Debug, Default)]
struct Inner {
    latest: HashMap<Series, CandleUpdate>,
    subscribers: HashMap<u64, Subscriber>,
    next_id: u64,
}

/// Counters of the live state.
#[derive(Debug, Default)]
pub struct LiveStats {
    pub messages: AtomicU64,
    pub applied: AtomicU64,
    pub stale: AtomicU64,
    pub bad: AtomicU64,
    pub resyncs: AtomicU64,
    pub clients_cut_off: AtomicU64,
}

/// What `/health` shows of the live state.
#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    pub series: usize,
    pub products: usize,
    pub clients: usize,
    pub messages: u64,
    pub applied: u64,
    pub stale: u64,
    pub bad: u64,
    pub resyncs: u64,
    pub clients_cut_off: u64,
}

/// The live state; clones share it.
#[derive(Debug, Clone, Default)]
pub struct LiveState {
    inner: Arc<Mutex<Inner>>,
    stats: Arc<LiveStats>,
    /// Asks the running loop to reload from the KV (NATS reconnects, slow consumers).
    resync: Arc<Notify>,
}

/// A client's view: the current candles, then the updates.
#[derive(Debug)]
pub struct LiveSubscription {
    pub initial: Vec<CandleUpdate>,
    pub updates: mpsc::Receiver<CandleUpdate>,
    id: u64,
    state: Weak<Mutex<Inner>>,
}

impl Drop for LiveSubscription {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade() {
            lock(&state).subscribers.remove(&self.id);
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // The map stays consistent even if a holder panicked: every change is one insert.
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl LiveState {
    pub fn new() -> Self {
        LiveState::default()
    }

    /// A handle that makes the running loop reload from the KV.
    pub fn resync_trigger(&self) -> Arc<Notify> {
        self.resync.clone()
    }

    /// Takes `update` if it is newer than what the series holds, and hands it to the
    /// subscribers of the series. Returns whether it was newer.
    pub fn apply(&self, update: CandleUpdate) -> bool {
        let series: Series = (update.candle.product_id.clone(), update.candle.granularity);
        let mut inner = lock(&self.inner);
        if inner
            .latest
            .get(&series)
            .is_some_and(|current| current.version() >= update.version())
        {
            self.stats.stale.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // Under the same lock as `subscribe`: a client sees an update either in its initial
        // state or in its queue, never both, never neither.
        let mut cut_off = Vec::new();
        for (id, sub) in &inner.subscribers {
            if sub.series.as_ref().is_some_and(|s| !s.contains(&series)) {
                continue;
            }
            if sub.tx.try_send(update.clone()).is_err() {
                cut_off.push(*id);
            }
        }
        for id in cut_off {
            inner.subscribers.remove(&id);
            self.stats.clients_cut_off.fetch_add(1, Ordering::Relaxed);
        }
        inner.latest.insert(series, update);
        self.stats.applied.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The current candle of each of `series` (all series when `None`), then every newer
    /// update, through a queue of `capacity`.
    pub fn subscribe(&self, series: Option<Vec<Series>>, capacity: usize) -> LiveSubscription {
        let (tx, updates) = mpsc::channel(capacity.max(1));
        let mut inner = lock(&self.inner);
        let series: Option<HashSet<Series>> = series.map(|s| s.into_iter().collect());
        let mut initial: Vec<CandleUpdate> = match &series {
            None => inner.latest.values().cloned().collect(),
            Some(wanted) => wanted
                .iter()
                .filter_map(|s| inner.latest.get(s).cloned())
                .collect(),
        };
        initial.sort_by(|a, b| a.candle_key().cmp(&b.candle_key()));
        let id = inner.next_id;
        inner.next_id += 1;
        inner.subscribers.insert(id, Subscriber { series, tx });
        LiveSubscription {
            initial,
            updates,
            id,
            state: Arc::downgrade(&self.inner),
        }
    }

    /// The current candle of a series.
    pub fn current(&self, product_id: &str, granularity: Granularity) -> Option<CandleUpdate> {
        lock(&self.inner)
            .latest
            .get(&(product_id.to_owned(), granularity))
            .cloned()
    }

    /// Per product, when its newest update was received (the newest `last_received` of its
    /// series): whether live data flows for it.
    pub fn product_activity(&self) -> HashMap<String, chrono::DateTime<chrono::Utc>> {
        let inner = lock(&self.inner);
        let mut activity: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::new();
        for ((product, _), update) in &inner.latest {
            let at = update.last_received;
            activity
                .entry(product.clone())
                .and_modify(|t| *t = (*t).max(at))
                .or_insert(at);
        }
        activity
    }

    pub fn report(&self) -> LiveReport {
        let inner = lock(&self.inner);
        let products: HashSet<&str> = inner.latest.keys().map(|(p, _)| p.as_str()).collect();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LiveReport {
            series: inner.latest.len(),
            products: products.len(),
            clients: inner.subscribers.len(),
            messages: load(&self.stats.messages),
            applied: load(&self.stats.applied),
            stale: load(&self.stats.stale),
            bad: load(&self.stats.bad),
            resyncs: load(&self.stats.resyncs),
            clients_cut_off: load(&self.stats.clients_cut_off),
        }
    }

    /// Loads every KV entry through [`LiveState::apply`] (only newer ones change anything).
    pub async fn load_from_kv(&self, kv: &Store) -> anyhow::Result<usize> {
        let mut keys = kv
            .keys()
            .await
            .map_err(|e| anyhow::anyhow!("KV keys: {e}"))?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(|e| anyhow::anyhow!("KV keys: {e}"))?);
        }
        let mut loaded = 0;
        for group in names.chunks(64) {
            let reads = group.iter().map(|k| kv.get(k.clone()));
            for value in futures_util::future::join_all(reads).await {
                let Some(bytes) = value.map_err(|e| anyhow::anyhow!("KV get: {e}"))? else {
                    continue;
                };
                match CandleMessage::parse(&bytes).and_then(|m| m.to_update()) {
                    Ok(update) => {
                        self.apply(update);
                        loaded += 1;
                    }
                    Err(e) => {
                        self.stats.bad.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "bad value in the KV, skipped");
                    }
                }
            }
        }
        Ok(loaded)
    }

    /// Subscribes to `candles.>` and keeps the state, reloading from the KV at start and on
    /// every resync request, until `cancel`.
    pub async fn run(
        self,
        client: async_nats::Client,
        kv: Store,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        // Subscribe first, then load: nothing published in between is missed.
        let mut messages = client
            .subscribe(ALL_CANDLES)
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe to {ALL_CANDLES}: {e}"))?;
        self.resync_now(&kv).await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.resync.notified() => self.resync_now(&kv).await,
                message = messages.next() => {
                    let Some(message) = message else {
                        anyhow::bail!("the NATS subscription ended");
                    };
                    self.stats.messages.fetch_add(1, Ordering::Relaxed);
                    match CandleMessage::parse(&message.payload).and_then(|m| m.to_update()) {
                        Ok(update) => {
                            self.apply(update);
                        }
                        Err(e) => {
                            self.stats.bad.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(subject = %message.subject, error = %e, "bad candle message, skipped");
                        }
                    }
                }
            }
        }
        // A server that stopped reading must not hold up the stop.
        let _unsubscribed = tokio::time::timeout(UNSUBSCRIBE_TIMEOUT, messages.unsubscribe()).await;
        Ok(())
    }

    async fn resync_now(&self, kv: &Store) {
        self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
        // Bounded: while it runs, live messages and the stop wait.
        let loaded = tokio::time::timeout(KV_LOAD_TIMEOUT, self.load_from_kv(kv))
            .await
            .unwrap_or_else(|_elapsed| {
                Err(anyhow::anyhow!("no answer within {KV_LOAD_TIMEOUT:?}"))
            });
        match loaded {
            Ok(n) => tracing::info!(entries = n, "live state loaded from the KV"),
            // The next reconnect or slow-consumer event tries again; live messages keep coming.
            Err(e) => tracing::warn!(error = %e, "cannot load the live state from the KV"),
        }
    }
}
