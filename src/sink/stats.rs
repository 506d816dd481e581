//! The sink's counters.
//!
//! In: counts from the sink's loop, and from the stage's other paths (recovery of kept rows).
//! Out: a [`SinkReport`] for `/health` and the benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters for `/health` and the benchmarks.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub(super) received: AtomicU64,
    pub(super) written_rows: AtomicU64,
    pub(super) batches: AtomicU64,
    /// Failed flushes of any kind (errors, timeouts, panics).
    pub(super) failures: AtomicU64,
    /// Of the failures: flushes abandoned after `flush_timeout`.
    pub(super) timeouts: AtomicU64,
    /// Of the failures: flushes whose task panicked.
    pub(super) panics: AtomicU64,
    pub(super) pending: AtomicU64,
    /// Updates dropped for a newer one of the same candle (held or received): with the
    /// written, refused and kept rows, the pending and the in-flight ones, they account for
    /// every update received.
    pub(super) superseded: AtomicU64,
    /// Rows a flush left out because the destination refused them for their content.
    pub(super) refused: AtomicU64,
    /// Rows handed to the [`Keep`](super::Keep) at the stop (written after the next start).
    pub(super) kept_at_stop: AtomicU64,
    /// Rows an earlier run kept at its stop, written at this start.
    pub(super) recovered: AtomicU64,
    /// Entries of what an earlier run kept that could not be read back (each one lost).
    pub(super) recovery_lost: AtomicU64,
    /// Batches by size class: 1, 2–9, 10–49, 50–99, 100–999, ≥ 1000 rows.
    pub(super) batch_sizes: [AtomicU64; 6],
}

/// What `/health` shows of a sink.
#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    pub received: u64,
    pub written_rows: u64,
    pub batches: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub panics: u64,
    pub pending: u64,
    pub superseded: u64,
    pub refused: u64,
    pub kept_at_stop: u64,
    pub recovered: u64,
    pub recovery_lost: u64,
    pub batch_sizes: [(&'static str, u64); 6],
}

const SIZE_CLASSES: [&str; 6] = ["1", "2-9", "10-49", "50-99", "100-999", "1000+"];

impl SinkStats {
    pub(super) fn record_batch(&self, rows: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.written_rows.fetch_add(rows as u64, Ordering::Relaxed);
        let class = match rows {
            0..=1 => 0,
            2..=9 => 1,
            10..=49 => 2,
            50..=99 => 3,
            100..=999 => 4,
            _ => 5,
        };
        self.batch_sizes[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Rows refused for their content outside a flush (written by another path of the
    /// same stage, such as the recovery of kept rows).
    pub fn record_refused(&self, rows: u64) {
        self.refused.fetch_add(rows, Ordering::Relaxed);
    }

    /// Rows kept by an earlier run, now written.
    pub fn record_recovered(&self, rows: u64) {
        self.recovered.fetch_add(rows, Ordering::Relaxed);
    }

    /// Entries of what an earlier run kept that could not be read.
    pub fn record_recovery_lost(&self, entries: u64) {
        self.recovery_lost.fetch_add(entries, Ordering::Relaxed);
    }

    pub fn report(&self) -> SinkReport {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SinkReport {
            received: load(&self.received),
            written_rows: load(&self.written_rows),
            batches: load(&self.batches),
            failures: load(&self.failures),
            timeouts: load(&self.timeouts),
            panics: load(&self.panics),
            pending: load(&self.pending),
            superseded: load(&self.superseded),
            refused: load(&self.refused),
            kept_at_stop: load(&self.kept_at_stop),
            recovered: load(&self.recovered),
            recovery_lost: load(&self.recovery_lost),
            batch_sizes: std::array::from_fn(|i| (SIZE_CLASSES[i], load(&self.batch_sizes[i]))),
        }
    }
}
