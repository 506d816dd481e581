//! The live state's input: one NATS subscription per instance, and the KV bucket.
//!
//! In: messages on `candles.>`, and the KV bucket at start, after a NATS reconnect and after a
//! slow-consumer event (core NATS is at-most-once: the KV fills what was missed). Out: every
//! readable update through [`LiveState::apply`]; unreadable ones are counted and skipped.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::LiveState;
use crate::bus::{ALL_CANDLES, CandleMessage};

/// Longest reload from the KV.
const KV_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How often clients that stayed behind on quiet series are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait to unsubscribe at the stop.
const UNSUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);

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
        // A reload waits on the KV (up to KV_LOAD_TIMEOUT while a NATS cluster elects a
        // leader): the stop must not wait with it.
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = self.resync_now(&kv) => {}
        }
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = sweep.tick() => self.sweep(),
                () = self.resync.notified() => tokio::select! {
                    () = cancel.cancelled() => break,
                    () = self.resync_now(&kv) => {}
                },
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
        self.stats.kv_reloads.fetch_add(1, Ordering::Relaxed);
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
