//! The live state's counters and what `/health` shows of them.
//!
//! In: the counts the live state and its NATS loop keep as they apply, skip and deliver.
//! Out: [`LiveReport`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::{LiveState, lock};
use crate::model::ProductId;

/// Counters of the live state.
#[derive(Debug, Default)]
pub(super) struct LiveStats {
    /// Messages from NATS.
    pub(crate) messages: AtomicU64,
    /// Of those, this instance's own, skipped unread.
    pub(crate) own_skipped: AtomicU64,
    /// Of those, older versions of a bucket that waited beside a newer one, skipped unread.
    pub(crate) coalesced: AtomicU64,
    /// Updates of this instance's engine, applied before they go to NATS.
    pub(super) local: AtomicU64,
    pub(super) applied: AtomicU64,
    pub(super) stale: AtomicU64,
    pub(crate) bad: AtomicU64,
    /// Updates of buckets after the next one (a bad or clock-skewed producer), refused.
    pub(super) future: AtomicU64,
    /// Updates of older buckets (completions, revisions) sent to the clients.
    pub(super) older_buckets: AtomicU64,
    /// Reloads from the KV (start, NATS reconnects, slow consumers, retries).
    pub(crate) kv_reloads: AtomicU64,
    /// Of those, the ones that failed (each tried again after a backoff).
    pub(crate) kv_reload_failures: AtomicU64,
    /// Clients whose queue overflowed: their backlog is dropped for the latest state of their
    /// series, sent when they next read.
    pub(super) resyncs: AtomicU64,
    /// Of those, the latest states sent.
    pub(super) resync_snapshots: AtomicU64,
    pub(super) clients_cut_off: AtomicU64,
    /// Events handed to client queues.
    pub(super) events_queued: AtomicU64,
}

/// What `/health` shows of the live state.
#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    pub series: usize,
    pub products: usize,
    pub clients: usize,
    pub messages: u64,
    pub own_skipped: u64,
    pub coalesced: u64,
    pub local: u64,
    pub applied: u64,
    pub stale: u64,
    pub bad: u64,
    pub future: u64,
    pub older_buckets: u64,
    pub kv_reloads: u64,
    pub kv_reload_failures: u64,
    pub resyncs: u64,
    pub resync_snapshots: u64,
    pub clients_cut_off: u64,
    pub events_queued: u64,
}

impl LiveState {
    pub fn report(&self) -> LiveReport {
        let inner = lock(&self.inner);
        let products: HashSet<&ProductId> = inner.latest.keys().map(|(p, _)| p).collect();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LiveReport {
            series: inner.latest.len(),
            products: products.len(),
            clients: inner.index.clients.len(),
            messages: load(&self.stats.messages),
            own_skipped: load(&self.stats.own_skipped),
            coalesced: load(&self.stats.coalesced),
            local: load(&self.stats.local),
            applied: load(&self.stats.applied),
            stale: load(&self.stats.stale),
            bad: load(&self.stats.bad),
            future: load(&self.stats.future),
            older_buckets: load(&self.stats.older_buckets),
            kv_reloads: load(&self.stats.kv_reloads),
            kv_reload_failures: load(&self.stats.kv_reload_failures),
            resyncs: load(&self.stats.resyncs),
            resync_snapshots: load(&self.stats.resync_snapshots),
            clients_cut_off: load(&self.stats.clients_cut_off),
            events_queued: load(&self.stats.events_queued),
        }
    }
}
