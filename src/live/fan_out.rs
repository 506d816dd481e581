//! The two feeds of the live view from this instance's own side: the engine's output and the
//! stored last day.
//!
//! In: batches of candle updates from the engine; the stored one-minute candles at start.
//! Out: each batch applied to this instance's live state first (its stream clients get it
//! without a NATS round trip), then handed to the publisher and the writer; the rolling day
//! seeded once. The processing latency (frame received → update out of the engine) is
//! recorded here, once per trade batch.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DayStats, LiveState};
use crate::model::{CandleUpdate, Granularity};
use crate::store::Repository;
use crate::telemetry::PROCESSING_SECONDS;
use crate::telemetry::latency::trade_latency;

/// Hands every batch of the engine's output to this instance's live state (its stream
/// clients get it without a NATS round trip; the same update coming back on NATS names this
/// instance in its `Spot-Origin` header and is skipped unread), the publisher and the
/// writer. None of them blocks on NATS or the database (the sinks coalesce while writing), so this never holds up the engine. A sink
/// that stopped is an error: the fan-out ends, and the service with it.
pub async fn fan_out(
    mut updates: mpsc::Receiver<Vec<CandleUpdate>>,
    live: LiveState,
    to_writer: mpsc::Sender<Vec<CandleUpdate>>,
    to_publisher: mpsc::Sender<Vec<CandleUpdate>>,
) -> anyhow::Result<()> {
    let processing = metrics::histogram!(PROCESSING_SECONDS);
    let mut waiting = Vec::new();
    while let Some(batch) = updates.recv().await {
        // The batches that wait with it are applied with it: the clients they reach are
        // woken once for all of them (a tick's burst of frames costs a client one write).
        waiting.push(batch);
        while waiting.len() < MAX_BATCHES {
            match updates.try_recv() {
                Ok(batch) => waiting.push(batch),
                Err(_) => break,
            }
        }
        let now = chrono::Utc::now();
        for batch in &waiting {
            // Once per trade batch: its one-minute update stands for the other granularities.
            for update in batch {
                if update.candle.granularity == Granularity::OneMinute
                    && let Some(seconds) = trade_latency(update, now)
                {
                    processing.record(seconds);
                }
            }
        }
        live.apply_all_local(waiting.iter().flatten());
        for batch in waiting.drain(..) {
            if to_publisher.send(batch.clone()).await.is_err() {
                anyhow::bail!("the publisher stopped; candle updates can no longer be published");
            }
            if to_writer.send(batch).await.is_err() {
                anyhow::bail!("the writer stopped; candle updates can no longer be stored");
            }
        }
    }
    Ok(())
}

/// Most engine batches applied to the live state at once.
const MAX_BATCHES: usize = 256;

/// Seeds the board's rolling day from the stored one-minute candles, once, then idles until
/// the stop (an error makes the supervisor try again).
pub async fn seed_day(
    day: Arc<DayStats>,
    repository: Repository,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let seeded = tokio::select! {
        () = token.cancelled() => return Ok(()),
        r = tokio::time::timeout(SEED_TIMEOUT, async {
            let products = repository.product_ids().await?;
            day.seed(&repository, &products, chrono::Utc::now()).await
        }) => r,
    };
    match seeded {
        Ok(Ok((rows, bad))) => {
            tracing::info!(rows, bad, products = day.products(), "rolling day seeded");
        }
        Ok(Err(e)) => anyhow::bail!(
            "cannot read the last day's candles: {}",
            crate::config::redact(&e.to_string())
        ),
        Err(_elapsed) => anyhow::bail!("reading the last day's candles took over {SEED_TIMEOUT:?}"),
    }
    token.cancelled().await;
    Ok(())
}

/// Longest the rolling day's seed read may take.
const SEED_TIMEOUT: Duration = Duration::from_secs(120);
