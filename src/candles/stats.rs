//! The engine's counters for `/health` and logs: updates and completions per granularity,
//! revisions, duplicates, trades too late to apply, trades rejected (from the future, or
//! overflowing a sum), reconnects and gaps seen, backfills merged
//! and the cross-check with Coinbase's 5-minute candles.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::crosscheck::{CheckCounts, CheckReport};
use super::{BackfillOutcome, BatchOutcome};
use crate::model::{CandleUpdate, Granularity};

/// Counters shared by the engine's shards.
#[derive(Debug, Default)]
pub struct EngineStats {
    trades: AtomicU64,
    duplicates: AtomicU64,
    too_late: AtomicU64,
    superseded: AtomicU64,
    rejected_future: AtomicU64,
    rejected_overflow: AtomicU64,
    backfills_rejected: AtomicU64,
    backfills: AtomicU64,
    backfilled_minutes: AtomicU64,
    recomputed: AtomicU64,
    reconnects: AtomicU64,
    gaps: AtomicU64,
    updates: [AtomicU64; 8],
    completed: [AtomicU64; 8],
    revisions: [AtomicU64; 8],
    /// Completed 5-minute candles compared with the `candles` channel's.
    pub exchange_5m: CheckCounts,
}

/// Per-granularity counts.
#[derive(Debug, Clone, Serialize)]
pub struct GranularityCounts {
    pub granularity: Granularity,
    pub updates: u64,
    pub completed: u64,
    pub revisions: u64,
}

/// What `/health` shows of the engine.
#[derive(Debug, Clone, Serialize)]
pub struct EngineReport {
    pub trades: u64,
    pub duplicates: u64,
    pub too_late: u64,
    /// Trades for minutes already replaced by REST candles.
    pub superseded: u64,
    /// Trades stamped more than the tolerance after the engine's clock: not applied.
    pub rejected_future: u64,
    /// Trades that would overflow a candle's sums: not applied.
    pub rejected_overflow: u64,
    pub backfills: u64,
    /// Backfills not merged because their candles would overflow a sum.
    pub backfills_rejected: u64,
    pub backfilled_minutes: u64,
    /// Larger candles recomputed after backfills.
    pub recomputed: u64,
    pub crosscheck_ws_5m: CheckReport,
    pub reconnects_seen: u64,
    pub gaps_seen: u64,
    pub granularities: Vec<GranularityCounts>,
}

impl EngineStats {
    pub fn record_batch(&self, outcome: BatchOutcome) {
        self.trades.fetch_add(outcome.applied, Ordering::Relaxed);
        self.duplicates
            .fetch_add(outcome.duplicates, Ordering::Relaxed);
        self.too_late.fetch_add(outcome.too_late, Ordering::Relaxed);
        self.superseded
            .fetch_add(outcome.superseded, Ordering::Relaxed);
        self.rejected_future
            .fetch_add(outcome.rejected_future, Ordering::Relaxed);
        self.rejected_overflow
            .fetch_add(outcome.rejected_overflow, Ordering::Relaxed);
        metrics::counter!("spot_canvas_engine_trades_total").increment(outcome.applied);
        metrics::counter!("spot_canvas_engine_duplicates_total").increment(outcome.duplicates);
        metrics::counter!("spot_canvas_engine_too_late_total").increment(outcome.too_late);
        metrics::counter!("spot_canvas_engine_rejected_total", "reason" => "future")
            .increment(outcome.rejected_future);
        metrics::counter!("spot_canvas_engine_rejected_total", "reason" => "overflow")
            .increment(outcome.rejected_overflow);
    }

    pub fn record_updates(&self, updates: &[CandleUpdate]) {
        for u in updates {
            let i = u.candle.granularity.index();
            self.updates[i].fetch_add(1, Ordering::Relaxed);
            if u.complete {
                if u.revision == 0 {
                    self.completed[i].fetch_add(1, Ordering::Relaxed);
                } else {
                    self.revisions[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        metrics::counter!("spot_canvas_engine_updates_total").increment(updates.len() as u64);
    }

    pub fn record_backfill(&self, outcome: BackfillOutcome) {
        if outcome.rejected_overflow {
            self.backfills_rejected.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.backfills.fetch_add(1, Ordering::Relaxed);
        self.backfilled_minutes
            .fetch_add(outcome.replaced, Ordering::Relaxed);
        self.recomputed
            .fetch_add(outcome.recomputed, Ordering::Relaxed);
        metrics::counter!("spot_canvas_engine_backfilled_minutes_total")
            .increment(outcome.replaced);
    }

    pub fn record_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_gap(&self) {
        self.gaps.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report(&self) -> EngineReport {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EngineReport {
            trades: load(&self.trades),
            duplicates: load(&self.duplicates),
            too_late: load(&self.too_late),
            superseded: load(&self.superseded),
            rejected_future: load(&self.rejected_future),
            rejected_overflow: load(&self.rejected_overflow),
            backfills_rejected: load(&self.backfills_rejected),
            backfills: load(&self.backfills),
            backfilled_minutes: load(&self.backfilled_minutes),
            recomputed: load(&self.recomputed),
            crosscheck_ws_5m: self.exchange_5m.report(),
            reconnects_seen: load(&self.reconnects),
            gaps_seen: load(&self.gaps),
            granularities: Granularity::ALL
                .iter()
                .map(|&g| GranularityCounts {
                    granularity: g,
                    updates: load(&self.updates[g.index()]),
                    completed: load(&self.completed[g.index()]),
                    revisions: load(&self.revisions[g.index()]),
                })
                .collect(),
        }
    }
}
