//! The live state's input: one NATS subscription per instance, and the KV bucket.
//!
//! In: messages on `candles.>`, and the KV bucket at start, after a NATS reconnect and after a
//! slow-consumer event (core NATS is at-most-once: the KV fills what was missed), and again
//! after a backoff while a reload fails. Out: the readable updates through
//! [`LiveState::apply_all`], every message that waits in the subscription taken at once and
//! coalesced to the newest version of each bucket ([`super::coalesce`]); unreadable ones are
//! counted and skipped.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::LiveState;
use crate::bus::{ALL_CANDLES, CandleMessage, ORIGIN_HEADER};
use crate::model::CandleUpdate;

/// Longest reload from the KV.
const KV_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How often clients that stayed behind on quiet series are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Bad candle messages are logged at most this often.
const BAD_LOG_EVERY: Duration = Duration::from_secs(60);
/// How often quiet series are forgotten.
const FORGET_INTERVAL: Duration = Duration::from_secs(60);
/// First wait before a failed KV reload is tried again (doubling, with jitter).
const RELOAD_RETRY_BASE: Duration = Duration::from_millis(500);
/// Longest wait between tries of a failed KV reload.
const RELOAD_RETRY_CAP: Duration = Duration::from_secs(10);
/// Most messages taken from the subscription at once.
const MAX_BATCH: usize = 4_096;
/// Longest wait to unsubscribe at the stop.
const UNSUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);

/// When a failed KV reload is tried again.
#[derive(Debug, Default)]
struct ReloadRetry {
    failed: u32,
    at: Option<tokio::time::Instant>,
}

impl ReloadRetry {
    /// After a reload: none to retry, or the next try after a growing, jittered wait.
    fn after(&mut self, loaded: bool) {
        if loaded {
            *self = ReloadRetry::default();
            return;
        }
        let wait = crate::backoff::equal_jitter(
            RELOAD_RETRY_BASE,
            RELOAD_RETRY_CAP,
            self.failed,
            rand::random(),
        );
        self.failed = self.failed.saturating_add(1);
        self.at = Some(tokio::time::Instant::now() + wait);
    }
}

impl LiveState {
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
        let mut bad_values = 0u64;
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
                        bad_values += 1;
                        if bad_values == 1 {
                            tracing::warn!(error = %e, "bad value in the KV, skipped (the first of this reload)");
                        }
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
        // A reload waits on the KV (up to KV_LOAD_TIMEOUT while a NATS cluster elects a
        // leader): it runs beside the live messages (applying is monotonic, so the order of
        // the two does not matter) and the stop does not wait for it. One that failed
        // (JetStream not answering yet after a restart) is tried again after a backoff, not
        // only at the next reconnect: until it succeeds the state may miss what was published
        // while this instance was away. A resync asked for during a reload runs after it.
        let mut reload = ReloadRetry::default();
        let mut reloading: Option<BoxFuture<'_, bool>> = Some(self.resync_now(&kv).boxed());
        let mut again = false;
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut forget = tokio::time::interval(FORGET_INTERVAL);
        let mut bad_logged: Option<std::time::Instant> = None;
        forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry_at = reload.at.filter(|_| reloading.is_none());
            tokio::select! {
                () = cancel.cancelled() => break,
                loaded = async {
                    match reloading.as_mut() {
                        Some(running) => running.await,
                        None => std::future::pending().await,
                    }
                }, if reloading.is_some() => {
                    reload.after(loaded);
                    reloading = std::mem::take(&mut again).then(|| self.resync_now(&kv).boxed());
                }
                _ = sweep.tick() => self.sweep(),
                _ = forget.tick() => {
                    let forgotten = self.forget_quiet(chrono::Utc::now());
                    if forgotten > 0 {
                        tracing::info!(forgotten, "quiet series forgotten");
                    }
                }
                () = self.resync.notified() => {
                    if reloading.is_some() {
                        again = true;
                    } else {
                        reloading = Some(self.resync_now(&kv).boxed());
                    }
                }
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)),
                    if retry_at.is_some() => {
                    reload.at = None;
                    reloading = Some(self.resync_now(&kv).boxed());
                }
                message = messages.next() => {
                    let Some(message) = message else {
                        anyhow::bail!("the NATS subscription ended");
                    };
                    // Everything else waiting is taken too, and coalesced (`coalesce`).
                    let mut batch = vec![message];
                    while batch.len() < MAX_BATCH {
                        // Not limited by the task's cooperative budget: what waits is taken.
                        match tokio::task::unconstrained(messages.next()).now_or_never() {
                            Some(Some(message)) => batch.push(message),
                            _ => break,
                        }
                    }
                    self.take(batch, &mut bad_logged);
                }
            }
        }
        // A server that stopped reading must not hold up the stop.
        let _unsubscribed = tokio::time::timeout(UNSUBSCRIBE_TIMEOUT, messages.unsubscribe()).await;
        Ok(())
    }

    /// Applies what `batch` (messages taken at once, in arrival order) says: this instance's
    /// own messages skipped unread, the rest coalesced to the newest version per series and
    /// bucket ([`super::coalesce`]) and read whole.
    fn take(&self, batch: Vec<async_nats::Message>, bad_logged: &mut Option<std::time::Instant>) {
        self.stats
            .messages
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let before = batch.len();
        let batch: Vec<async_nats::Message> =
            batch.into_iter().filter(|m| !self.is_own(m)).collect();
        self.stats
            .own_skipped
            .fetch_add((before - batch.len()) as u64, Ordering::Relaxed);
        if let [message] = batch.as_slice() {
            if let Some(update) = self.read(message, bad_logged) {
                self.apply(update);
            }
            return;
        }
        let groups = super::coalesce::groups(
            batch
                .iter()
                .map(|m| (m.subject.as_str(), m.payload.as_ref())),
        );
        let mut coalesced = 0u64;
        let mut updates = Vec::with_capacity(groups.len());
        for group in groups {
            let mut candidates = group.iter();
            for &index in candidates.by_ref() {
                if let Some(update) = self.read(&batch[index], bad_logged) {
                    updates.push(update);
                    break;
                }
            }
            coalesced += candidates.count() as u64;
        }
        self.stats.coalesced.fetch_add(coalesced, Ordering::Relaxed);
        // Applied together: each client is woken once for the whole batch.
        self.apply_all(updates);
    }

    /// Reads `message` whole: its update, or `None` when it is not a readable candle message
    /// (counted, and logged at most once a minute).
    fn read(
        &self,
        message: &async_nats::Message,
        bad_logged: &mut Option<std::time::Instant>,
    ) -> Option<CandleUpdate> {
        let parsed = CandleMessage::parse(&message.payload).and_then(|m| {
            m.check_subject(&message.subject)?;
            m.to_update()
        });
        match parsed {
            Ok(update) => Some(update),
            Err(e) => {
                let bad = self.stats.bad.fetch_add(1, Ordering::Relaxed) + 1;
                if bad_logged.is_none_or(|at| at.elapsed() >= BAD_LOG_EVERY) {
                    *bad_logged = Some(std::time::Instant::now());
                    tracing::warn!(
                        subject = %crate::model::shown(&message.subject),
                        error = %e,
                        bad_so_far = bad,
                        "bad candle message, skipped (logged at most once a minute)"
                    );
                }
                None
            }
        }
    }

    /// Whether `message` is this instance's own (its header names our origin).
    fn is_own(&self, message: &async_nats::Message) -> bool {
        let Some(origin) = self.origin.as_deref() else {
            return false;
        };
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(ORIGIN_HEADER))
            .is_some_and(|v| v.as_str() == origin)
    }

    /// Reloads from the KV; whether it did.
    async fn resync_now(&self, kv: &Store) -> bool {
        self.stats.kv_reloads.fetch_add(1, Ordering::Relaxed);
        // Bounded: while it runs, live messages and the stop wait.
        let loaded = tokio::time::timeout(KV_LOAD_TIMEOUT, self.load_from_kv(kv))
            .await
            .unwrap_or_else(|_elapsed| {
                Err(anyhow::anyhow!("no answer within {KV_LOAD_TIMEOUT:?}"))
            });
        match loaded {
            Ok(n) => {
                tracing::info!(entries = n, "live state loaded from the KV");
                true
            }
            // Tried again after a backoff (or at the next reconnect); live messages keep coming.
            Err(e) => {
                self.stats
                    .kv_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot load the live state from the KV; will retry");
                false
            }
        }
    }
}
