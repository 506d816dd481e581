//! The products unsubscribed lately, dropped from what still reaches the engine.
//!
//! In: the feed's events, `Subscribed` and `Unsubscribed` among them. Out: the same events
//! with the trades, candles, notices and products of a product unsubscribed in the last 30
//! minutes taken out, so that nothing still on the way makes the engine hold a product again
//! after it forgot it.

use std::collections::HashMap;
use std::time::Duration;

use crate::model::{FeedEvent, ProductId};

/// How long an unsubscribed product's trades, candles, notices and backfills are dropped:
/// longer than any of them may still be on the way (a frame read before the connection
/// unsubscribed, a backfill window retried for minutes). A product subscribed again is taken
/// at once.
const UNSUBSCRIBED_FOR: Duration = Duration::from_secs(30 * 60);

/// The products unsubscribed lately, so that nothing still on the way makes the engine hold
/// them again after it forgot them.
#[derive(Debug, Default)]
pub(super) struct Unsubscribed {
    since: HashMap<ProductId, tokio::time::Instant>,
}

impl Unsubscribed {
    pub(super) fn holds(&self, product: &ProductId) -> bool {
        self.since.contains_key(product)
    }

    /// Notes what `event` says of subscriptions, and takes the unsubscribed products out of it.
    pub(super) fn follow(&mut self, event: &mut FeedEvent) {
        match event {
            FeedEvent::Unsubscribed { products } => {
                let now = tokio::time::Instant::now();
                self.since
                    .retain(|_, at| now.duration_since(*at) < UNSUBSCRIBED_FOR);
                for product in products.iter() {
                    self.since.insert(product.clone(), now);
                }
                return;
            }
            FeedEvent::Subscribed { products, .. } => {
                for product in products.iter() {
                    self.since.remove(product);
                }
                return;
            }
            _ => {}
        }
        if self.since.is_empty() {
            return;
        }
        match event {
            FeedEvent::Trades(batch) => batch.trades.retain(|t| !self.holds(&t.product_id)),
            FeedEvent::ExchangeCandles { candles, .. } => {
                candles.retain(|c| !self.holds(&c.product_id));
            }
            FeedEvent::Reconnected { products, .. } | FeedEvent::Gap { products, .. } => {
                products.retain(|p| !self.holds(p));
            }
            _ => {}
        }
    }
}
