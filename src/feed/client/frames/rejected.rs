//! Malformed trades and candles, and trades of products this connection did not subscribe:
//! each costs only itself, is counted, and is logged at most once a minute per product.
//!
//! In: the items a frame's parser rejected, the trades of a batch. Out: counters, rate-limited
//! log lines, the batch without unlisted products.

use std::time::Duration;

use tokio::time::Instant;

use super::super::Connection;
use crate::coinbase::frame::{RejectedCandle, RejectedTrade};
use crate::model::ProductId;

/// Malformed trades (or candles) of one product are logged at most this often.
const BAD_TRADE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What a rate-limited log line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(in crate::feed::client) enum BadItem {
    Trade,
    Candle,
    Unlisted,
    ErrorFrame,
    MalformedFrame,
}

impl Connection {
    /// Whether a malformed trade or candle of `product` (`None`: no valid id, or a product
    /// this connection did not subscribe) is due to be logged: at most once a minute per
    /// subscribed product, and once a minute for all the others together, so the map stays
    /// as small as the subscription.
    pub(super) fn bad_item_log_due(&mut self, kind: BadItem, product: Option<&ProductId>) -> bool {
        let key = product.filter(|p| self.products.contains(*p)).cloned();
        let now = Instant::now();
        let due = self
            .bad_trades_logged
            .get(&(kind, key.clone()))
            .is_none_or(|last| now.duration_since(*last) >= BAD_TRADE_LOG_INTERVAL);
        if due {
            if self.bad_trades_logged.len() > 4 * (self.products.len() + 1) {
                let products = &self.products;
                self.bad_trades_logged
                    .retain(|(_, p), _| p.as_ref().is_none_or(|p| products.contains(p)));
            }
            self.bad_trades_logged.insert((kind, key), now);
        }
        due
    }

    /// Counts the malformed trades of a frame whose other trades go on, and logs them at most
    /// once a minute per product.
    pub(super) fn on_rejected_trades(&mut self, rejected: &[RejectedTrade]) {
        let count = rejected.len() as u64;
        metrics::counter!("spot_canvas_feed_rejected_trades_total").increment(count);
        self.shared
            .health
            .update(self.id, |h| h.rejected_trades += count);
        for bad in rejected {
            if self.bad_item_log_due(BadItem::Trade, bad.product_id.as_ref()) {
                tracing::warn!(
                    conn = self.id,
                    product = ?bad.product_id,
                    trade_id = %bad.trade_id,
                    reason = %bad.reason,
                    "skipping a malformed trade (logged at most once a minute per product)"
                );
            }
        }
    }

    /// Takes out of `trades` those of products this connection did not subscribe (the
    /// exchange should send none): they are counted and dropped, and logged at most once a
    /// minute, so nothing downstream ever holds a product that was not listed.
    pub(super) fn drop_unlisted(&mut self, trades: &mut Vec<crate::model::Trade>) {
        let before = trades.len();
        let mut example = None;
        trades.retain(|t| {
            let listed = self.products.contains(&t.product_id);
            if !listed && example.is_none() {
                example = Some(t.product_id.clone());
            }
            listed
        });
        let dropped = (before - trades.len()) as u64;
        if dropped == 0 {
            return;
        }
        metrics::counter!("spot_canvas_feed_unlisted_trades_total").increment(dropped);
        self.shared
            .health
            .update(self.id, |h| h.unlisted_trades += dropped);
        if self.bad_item_log_due(BadItem::Unlisted, None) {
            tracing::warn!(
                conn = self.id,
                dropped,
                example = ?example,
                "dropping trades of products this connection did not subscribe (logged at most once a minute)"
            );
        }
    }

    /// Counts the malformed candles of a frame whose other candles go on, and logs them at
    /// most once a minute per product.
    pub(super) fn on_rejected_candles(&mut self, rejected: &[RejectedCandle]) {
        let count = rejected.len() as u64;
        metrics::counter!("spot_canvas_feed_rejected_candles_total").increment(count);
        self.shared
            .health
            .update(self.id, |h| h.rejected_candles += count);
        for bad in rejected {
            if self.bad_item_log_due(BadItem::Candle, bad.product_id.as_ref()) {
                tracing::warn!(
                    conn = self.id,
                    product = ?bad.product_id,
                    reason = %bad.reason,
                    "skipping a malformed candle (logged at most once a minute per product)"
                );
            }
        }
    }
}
