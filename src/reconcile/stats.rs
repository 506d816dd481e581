//! The reconciler's counters, and what `/health` shows of them.
//!
//! In: counts from the scheduler loop, the windows, the cross-check and the REST client.
//! Out: a [`ReconcileReport`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::rest;
use crate::candles::crosscheck::{CheckCounts, CheckReport};

/// Counters for `/health`.
#[derive(Debug, Default)]
pub struct ReconcileStats {
    pub(crate) backfill_enabled: bool,
    pub(crate) windows_queued: AtomicU64,
    pub(crate) windows_done: AtomicU64,
    pub(crate) windows_failed: AtomicU64,
    pub(crate) minutes_fetched: AtomicU64,
    pub(crate) history_candles: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) rest: Arc<rest::RestStats>,
    /// Complete one-minute candles compared with REST.
    pub rest_1m: CheckCounts,
    /// REST minutes we have no candle for.
    pub(crate) rest_1m_missing: AtomicU64,
}

/// What `/health` shows of the reconciler.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    pub backfill_enabled: bool,
    pub windows_queued: u64,
    pub windows_done: u64,
    pub windows_failed: u64,
    /// Windows waiting to start (their minutes not complete yet, or their product busy).
    pub windows_pending: u64,
    /// Windows being fetched and merged now.
    pub windows_running: u64,
    pub minutes_fetched: u64,
    pub history_candles: u64,
    pub rest_requests: u64,
    pub rest_retries: u64,
    pub rest_failures: u64,
    /// Why the last failed REST request failed (e.g. a body larger than the cap).
    pub rest_last_error: Option<String>,
    pub crosscheck_rest_1m: CheckReport,
    pub crosscheck_rest_1m_missing: u64,
}

impl ReconcileStats {
    pub fn report(&self) -> ReconcileReport {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReconcileReport {
            backfill_enabled: self.backfill_enabled,
            windows_queued: load(&self.windows_queued),
            windows_done: load(&self.windows_done),
            windows_failed: load(&self.windows_failed),
            windows_pending: load(&self.pending),
            windows_running: load(&self.running),
            minutes_fetched: load(&self.minutes_fetched),
            history_candles: load(&self.history_candles),
            rest_requests: load(&self.rest.requests),
            rest_retries: load(&self.rest.retries),
            rest_failures: load(&self.rest.failures),
            rest_last_error: self.rest.last_error(),
            crosscheck_rest_1m: self.rest_1m.report(),
            crosscheck_rest_1m_missing: load(&self.rest_1m_missing),
        }
    }
}
