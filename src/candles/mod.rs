//! The candle engine: exact OHLCV candles in 8 granularities from trades.
//!
//! In: [`FeedEvent`]s from the feed (trade batches, Coinbase's 5-minute candles for the
//! cross-check) and [`Backfill`]s from the reconciler. Out: batches of [`CandleUpdate`] on one
//! bounded channel, one update per candle a frame, a backfill or a completion tick touched;
//! and the feed's subscribes, reconnects and gaps, passed on to the reconciler (which answers
//! with backfills) and to the shards of their products (which cross-check only candles of
//! whole minutes). 16 shards, chosen by FNV-1a of the product id, each own their
//! products' [`Aggregator`] and a bounded input queue. Nothing is dropped: a full queue makes
//! the dispatcher wait, which makes the feed wait, which stops reading the socket.

pub mod aggregator;
mod backfill;
mod coverage;
pub mod crosscheck;
mod limiter;
mod product;
mod run;
mod shard;
mod stats;
mod tally;
mod unsubscribed;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::FeedEvent;
use chrono::{DateTime, Utc};

use crate::model::{Candle, CandleUpdate, Clock, ProductId, Trade};

use shard::{Shard, ShardInput};
use unsubscribed::Unsubscribed;

pub use aggregator::{Aggregator, BatchOutcome, Footprint, Timing};
pub use backfill::{Backfill, BackfillOutcome};
pub use coverage::FeedNotice;
pub use stats::{EngineReport, EngineStats};

/// Number of engine shards.
pub const SHARDS: usize = 16;

/// FNV-1a (32-bit) of a product id: the engine shard is this modulo [`SHARDS`].
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The shard that owns `product_id`.
pub fn shard_of(product_id: &str) -> usize {
    fnv1a32(product_id.as_bytes()) as usize % SHARDS
}

/// Engine tunables.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    pub timing: Timing,
    /// How often each shard checks for candles to complete.
    pub tick_interval: Duration,
    /// Trade batches a shard's queue holds.
    pub shard_queue: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            timing: Timing::default(),
            tick_interval: Duration::from_millis(250),
            shard_queue: 256,
        }
    }
}

/// The engine stage.
#[derive(Debug)]
pub struct Engine {
    settings: EngineSettings,
    clock: Arc<dyn Clock>,
    /// Feed events in; closed when the feed stops.
    input: mpsc::Receiver<FeedEvent>,
    /// Candle updates out, one batch per frame or tick per shard.
    output: mpsc::Sender<Vec<CandleUpdate>>,
    /// Backfills from the reconciler (none: the engine runs without one).
    backfills: Option<mpsc::Receiver<Backfill>>,
    /// Where subscribes, reconnects and gaps go (unbounded: they are rare, and the
    /// reconciler also sends to the engine, so a bounded pair could wait on each other).
    notices: Option<mpsc::UnboundedSender<FeedEvent>>,
    stats: Arc<EngineStats>,
    /// Where the shards' queues are registered for the backpressure monitor.
    channels: Option<crate::telemetry::Channels>,
}

impl Engine {
    pub fn new(
        settings: EngineSettings,
        clock: Arc<dyn Clock>,
        input: mpsc::Receiver<FeedEvent>,
        output: mpsc::Sender<Vec<CandleUpdate>>,
    ) -> Self {
        Engine {
            settings,
            clock,
            input,
            output,
            backfills: None,
            notices: None,
            stats: Arc::new(EngineStats::default()),
            channels: None,
        }
    }

    /// Registers the shards' queues, once they exist, for the backpressure monitor.
    pub fn with_channels(mut self, channels: crate::telemetry::Channels) -> Self {
        self.channels = Some(channels);
        self
    }

    /// Connects the engine to a reconciler: feed windows out, backfills in.
    pub fn with_reconciler(
        mut self,
        backfills: mpsc::Receiver<Backfill>,
        notices: mpsc::UnboundedSender<FeedEvent>,
    ) -> Self {
        self.backfills = Some(backfills);
        self.notices = Some(notices);
        self
    }

    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    /// Runs until the input closes (the feed stopped) or `cancel`; shards finish the batches
    /// they hold before it returns.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut shards = Vec::with_capacity(SHARDS);
        let mut tasks = Vec::with_capacity(SHARDS);
        for index in 0..SHARDS {
            let (tx, rx) = mpsc::channel(self.settings.shard_queue);
            if let Some(channels) = &self.channels {
                channels.register("engine_shards", &tx);
            }
            shards.push(tx);
            let shard = Shard {
                index,
                aggregator: Aggregator::new(self.settings.timing),
                clock: self.clock.clone(),
                input: rx,
                output: self.output.clone(),
                stats: self.stats.clone(),
                tick_interval: self.settings.tick_interval,
            };
            tasks.push(tokio::spawn(shard.run()));
        }
        let mut backfills = self.backfills.take();
        let mut gone = Unsubscribed::default();
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => break,
                backfill = recv_backfill(&mut backfills) => match backfill {
                    Some(backfill) if gone.holds(&backfill.product_id) => continue,
                    Some(backfill) => {
                        let shard = shard_of(&backfill.product_id);
                        let input = ShardInput::Backfill(Box::new(backfill));
                        if shards[shard].send(input).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    None => {
                        backfills = None;
                        continue;
                    }
                },
                event = self.input.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            let mut event = event;
            gone.follow(&mut event);
            match event {
                FeedEvent::Trades(batch) => {
                    if !self.dispatch(&shards, batch.trades).await {
                        break;
                    }
                }
                FeedEvent::ExchangeCandles {
                    candles, received, ..
                } => {
                    if !self.dispatch_candles(&shards, candles, received).await {
                        break;
                    }
                }
                FeedEvent::Heartbeat { .. } => {}
                notice => {
                    match &notice {
                        FeedEvent::Reconnected {
                            connection,
                            products,
                            disconnected_at,
                            ..
                        } => {
                            self.stats.record_reconnect();
                            tracing::info!(
                                connection,
                                products = products.len(),
                                since = %disconnected_at,
                                "feed reconnected: trades since then may be missing"
                            );
                        }
                        FeedEvent::Gap {
                            connection,
                            expected,
                            got,
                            ..
                        } => {
                            self.stats.record_gap();
                            tracing::info!(
                                connection,
                                expected,
                                got,
                                "feed gap: trades may be missing"
                            );
                        }
                        _ => {}
                    }
                    if !self.dispatch_notice(&shards, &notice).await {
                        break;
                    }
                    if let Some(notices) = &self.notices
                        && notices.send(notice).is_err()
                    {
                        tracing::warn!("the reconciler stopped: windows are no longer backfilled");
                        self.notices = None;
                    }
                }
            }
        }
        drop(shards);
        for task in tasks {
            task.await?;
        }
        Ok(())
    }

    /// Splits a batch by shard and queues each part; false when the shards are gone.
    async fn dispatch(&self, shards: &[mpsc::Sender<ShardInput>], trades: Vec<Trade>) -> bool {
        let first = trades.first().map(|t| shard_of(&t.product_id));
        // A frame almost always holds one product: send it whole.
        if let Some(first) = first
            && trades.iter().all(|t| shard_of(&t.product_id) == first)
        {
            return shards[first].send(ShardInput::Trades(trades)).await.is_ok();
        }
        let mut parts: Vec<Vec<Trade>> = vec![Vec::new(); SHARDS];
        for t in trades {
            parts[shard_of(&t.product_id)].push(t);
        }
        for (index, part) in parts.into_iter().enumerate() {
            if !part.is_empty() && shards[index].send(ShardInput::Trades(part)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Tells the shards of the products a subscribe, reconnect or gap names; false when the
    /// shards are gone.
    async fn dispatch_notice(
        &self,
        shards: &[mpsc::Sender<ShardInput>],
        event: &FeedEvent,
    ) -> bool {
        let (products, notice) = match event {
            FeedEvent::Subscribed { products, at, .. } => {
                (products, FeedNotice::Subscribed { at: *at })
            }
            FeedEvent::Reconnected {
                products,
                disconnected_at,
                reconnected_at,
                ..
            } => (
                products,
                FeedNotice::Missing {
                    from: *disconnected_at,
                    to: *reconnected_at,
                },
            ),
            FeedEvent::Gap {
                products,
                since,
                at,
                ..
            } => (
                products,
                FeedNotice::Missing {
                    from: *since,
                    to: *at,
                },
            ),
            FeedEvent::Unsubscribed { products } => (products, FeedNotice::Unsubscribed),
            _ => return true,
        };
        let mut parts: Vec<Vec<ProductId>> = vec![Vec::new(); SHARDS];
        for p in products {
            parts[shard_of(p)].push(p.clone());
        }
        for (index, part) in parts.into_iter().enumerate() {
            if !part.is_empty()
                && shards[index]
                    .send(ShardInput::Notice(part, notice))
                    .await
                    .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Queues Coinbase's candles with the shards of their products; false when they are gone.
    async fn dispatch_candles(
        &self,
        shards: &[mpsc::Sender<ShardInput>],
        candles: Vec<Candle>,
        received: DateTime<Utc>,
    ) -> bool {
        let mut parts: Vec<Vec<Candle>> = vec![Vec::new(); SHARDS];
        for c in candles {
            parts[shard_of(&c.product_id)].push(c);
        }
        for (index, part) in parts.into_iter().enumerate() {
            if !part.is_empty()
                && shards[index]
                    .send(ShardInput::ExchangeCandles(part, received))
                    .await
                    .is_err()
            {
                return false;
            }
        }
        true
    }
}

/// The next backfill, or never when there is no reconciler.
async fn recv_backfill(backfills: &mut Option<mpsc::Receiver<Backfill>>) -> Option<Backfill> {
    match backfills {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_matches_the_reference_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn products_spread_over_all_shards() {
        let mut counts = [0usize; SHARDS];
        for i in 0..1600 {
            counts[shard_of(&format!("P{i}-USD"))] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50), "{counts:?}");
    }
}
