//! One engine shard: the async shell around an [`Aggregator`] for the products it owns.
//!
//! In: trade batches, Coinbase's candles, the feed's notices and backfills from the
//! dispatcher ([`ShardInput`]), and its own completion ticks. Out: one batch of
//! [`CandleUpdate`]s per input or tick that changed candles; counts in [`EngineStats`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::{Aggregator, Backfill, EngineStats, FeedNotice};
use crate::model::{Candle, CandleUpdate, Clock, ProductId, Trade};

/// What a shard receives.
#[derive(Debug)]
pub(super) enum ShardInput {
    Trades(Vec<Trade>),
    ExchangeCandles(Vec<Candle>, DateTime<Utc>),
    /// What the feed said about these products' trades.
    Notice(Vec<ProductId>, FeedNotice),
    Backfill(Box<Backfill>),
}

pub(super) struct Shard {
    pub(super) index: usize,
    pub(super) aggregator: Aggregator,
    pub(super) clock: Arc<dyn Clock>,
    /// Trade batches, Coinbase's candles and backfills from the dispatcher; closed when the
    /// engine stops.
    pub(super) input: mpsc::Receiver<ShardInput>,
    /// Candle updates to the sinks.
    pub(super) output: mpsc::Sender<Vec<CandleUpdate>>,
    pub(super) stats: Arc<EngineStats>,
    pub(super) tick_interval: Duration,
}

impl Shard {
    pub(super) async fn run(mut self) {
        let mut ticks = tokio::time::interval(self.tick_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut updates = Vec::new();
            tokio::select! {
                input = self.input.recv() => match input {
                    Some(ShardInput::Trades(trades)) => {
                        let now = self.clock.now();
                        let outcome = self.aggregator.apply(&trades, now, &mut updates);
                        self.stats.record_batch(outcome);
                    }
                    Some(ShardInput::ExchangeCandles(candles, received)) => {
                        self.aggregator.exchange_candles(&candles, received);
                    }
                    Some(ShardInput::Notice(products, notice)) => {
                        for product in &products {
                            self.aggregator.feed_notice(product, notice);
                        }
                    }
                    Some(ShardInput::Backfill(backfill)) => {
                        let now = self.clock.now();
                        let outcome = self.aggregator.backfill(&backfill, now, &mut updates);
                        tracing::info!(
                            shard = self.index,
                            product = %backfill.product_id,
                            from = backfill.from,
                            to = backfill.to,
                            replaced = outcome.replaced,
                            kept = outcome.kept,
                            recomputed = outcome.recomputed,
                            rejected = outcome.rejected_overflow,
                            "backfill merged"
                        );
                        self.stats.record_backfill(outcome);
                    }
                    None => break,
                },
                _ = ticks.tick() => {
                    self.aggregator.tick(self.clock.now(), &mut updates);
                    for check in self.aggregator.take_checks() {
                        self.stats.exchange_5m.record("ws_candles_5m", &check);
                    }
                }
            }
            if updates.is_empty() {
                continue;
            }
            self.stats.record_updates(&updates);
            if self.output.send(updates).await.is_err() {
                tracing::warn!(shard = self.index, "candle output closed, shard stops");
                break;
            }
        }
    }
}
