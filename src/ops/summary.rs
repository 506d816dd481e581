//! The pipeline summary in the log, every 30 seconds.
//!
//! In: the feed's, the engine's and the writer's reports. Out: one `info` line with the
//! connections, products, trades, updates, completions, duplicates, late trades, rows written,
//! write failures and pending rows since start.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::candles::EngineStats;
use crate::feed::FeedHealth;
use crate::store::WriterStats;

/// Logs what the pipeline did, every 30 seconds, until `cancel`.
pub async fn summarize(
    engine: Arc<EngineStats>,
    writer: Arc<WriterStats>,
    feed: Arc<FeedHealth>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut every = tokio::time::interval(Duration::from_secs(30));
    every.reset();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        let engine = engine.report();
        let writer = writer.report();
        let feed = feed.report();
        tracing::info!(
            connected = feed.connected,
            products = feed.products,
            trades = engine.trades,
            updates = engine.granularities.iter().map(|g| g.updates).sum::<u64>(),
            completed = engine
                .granularities
                .iter()
                .map(|g| g.completed)
                .sum::<u64>(),
            duplicates = engine.duplicates,
            too_late = engine.too_late,
            rows_written = writer.written_rows,
            write_failures = writer.failures,
            pending = writer.pending,
            "pipeline summary (since start)"
        );
    }
}
