//! What a connection does with each frame it reads: parse it, check its `sequence_num`, turn
//! it into [`FeedEvent`]s, and answer the exchange's error frames.
//!
//! In: one frame's bytes. Out: events on the shared channel (waiting when it is full),
//! counters in health, and resubscribes: after a gap or a sequence that went backwards (a
//! fresh snapshot), after a refused key (unauthenticated), and after a refused product (the
//! others again, without it). A malformed frame is skipped and counted, but the sequence
//! number it took (when it names one) is still counted, so it is not taken for a gap; a
//! malformed trade or candle costs only that trade or candle, is counted, and is logged at most
//! once a minute per product.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::{Connection, End, Socket};
use crate::coinbase::frame::{RejectedCandle, RejectedTrade};
use crate::coinbase::pacer::Priority;
use crate::coinbase::{FrameBody, frame_sequence, parse_frame};
use crate::feed::health::AuthState;
use crate::model::{FeedEvent, ProductId, TradeBatch};

/// Malformed trades (or candles) of one product are logged at most this often.
const BAD_TRADE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What a rate-limited log line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum BadItem {
    Trade,
    Candle,
    Unlisted,
    ErrorFrame,
    MalformedFrame,
}

impl Connection {
    pub(super) async fn on_frame(
        &mut self,
        ws: &mut Socket,
        bytes: &[u8],
        last_seq: &mut Option<u64>,
    ) -> Result<(), End> {
        let received = Utc::now();
        let frame = match parse_frame(bytes, received) {
            Ok(frame) => frame,
            Err(e) => {
                metrics::counter!("spot_canvas_feed_malformed_total").increment(1);
                if self.bad_item_log_due(BadItem::MalformedFrame, None) {
                    let preview = crate::model::shown(&String::from_utf8_lossy(
                        &bytes[..bytes.len().min(120)],
                    ));
                    tracing::warn!(
                        conn = self.id,
                        error = %e,
                        %preview,
                        "skipping malformed frame (logged at most once a minute)"
                    );
                }
                let mut previous_frame = received;
                self.shared.health.update(self.id, |h| {
                    previous_frame = h.last_frame.unwrap_or(received);
                    h.malformed += 1;
                    h.last_frame = Some(received);
                });
                // Coinbase numbers every frame: a bad body still took its number.
                if let Some(seq) = frame_sequence(bytes) {
                    self.follow_sequence(ws, seq, last_seq, previous_frame, received)
                        .await?;
                }
                return Ok(());
            }
        };
        // The frame before this one: where lost frames would begin.
        let mut previous_frame = received;
        self.shared.health.update(self.id, |h| {
            previous_frame = h.last_frame.unwrap_or(received);
            h.frames += 1;
            h.last_frame = Some(received);
        });
        if let Some(seq) = frame.sequence_num {
            self.follow_sequence(ws, seq, last_seq, previous_frame, received)
                .await?;
        }
        let event = match frame.body {
            FrameBody::MarketTrades {
                snapshot,
                mut trades,
                rejected,
            } => {
                if !rejected.is_empty() {
                    self.on_rejected_trades(&rejected);
                }
                self.drop_unlisted(&mut trades);
                if trades.is_empty() {
                    return Ok(());
                }
                let count = trades.len() as u64;
                self.shared.health.update(self.id, |h| h.trades += count);
                metrics::counter!("spot_canvas_feed_trades_total").increment(count);
                FeedEvent::Trades(TradeBatch {
                    connection: self.id,
                    snapshot,
                    received,
                    trades,
                })
            }
            FrameBody::Candles {
                mut candles,
                rejected,
            } => {
                if !rejected.is_empty() {
                    self.on_rejected_candles(&rejected);
                }
                let before = candles.len();
                candles.retain(|c| self.products.contains(&c.product_id));
                let dropped = (before - candles.len()) as u64;
                if dropped > 0 {
                    metrics::counter!("spot_canvas_feed_unlisted_candles_total").increment(dropped);
                    self.shared
                        .health
                        .update(self.id, |h| h.unlisted_candles += dropped);
                }
                if candles.is_empty() {
                    return Ok(());
                }
                FeedEvent::ExchangeCandles {
                    connection: self.id,
                    received,
                    candles,
                }
            }
            FrameBody::Heartbeat { .. } => {
                self.shared
                    .health
                    .update(self.id, |h| h.last_heartbeat = Some(received));
                FeedEvent::Heartbeat {
                    connection: self.id,
                    time: frame.timestamp,
                }
            }
            FrameBody::Subscriptions { subscriptions } => {
                self.pending_subscribe = None;
                tracing::debug!(conn = self.id, ?subscriptions, "subscriptions acknowledged");
                return Ok(());
            }
            FrameBody::Error { message } => {
                return self
                    .on_error_frame(ws, message, previous_frame, *last_seq)
                    .await;
            }
            FrameBody::Skipped { .. } => return Ok(()),
        };
        self.emit(event).await
    }

    /// Checks a frame's `sequence_num` against the last one and follows it: a gap or a number
    /// that went backwards reports a window and resubscribes.
    async fn follow_sequence(
        &mut self,
        ws: &mut Socket,
        seq: u64,
        last_seq: &mut Option<u64>,
        previous_frame: DateTime<Utc>,
        received: DateTime<Utc>,
    ) -> Result<(), End> {
        match *last_seq {
            Some(last) if seq <= last => {
                // Coinbase's counter is per connection: a number that goes back means the
                // server started a new sequence. Follow it, and treat the break like a
                // gap (frames may be lost around it).
                *last_seq = Some(seq);
                self.on_sequence_reset(ws, last, seq, previous_frame, received)
                    .await
            }
            Some(last) if seq > last.saturating_add(1) => {
                *last_seq = Some(seq);
                self.on_gap(ws, last + 1, seq, previous_frame, received)
                    .await
            }
            _ => {
                *last_seq = Some(seq);
                Ok(())
            }
        }
    }

    /// Sends an event downstream, measuring how long a full channel made it wait.
    pub(super) async fn emit(&self, event: FeedEvent) -> Result<(), End> {
        let started = Instant::now();
        if self.shared.events.send(event).await.is_err() {
            return Err(End::Stop);
        }
        let waited = started.elapsed();
        if waited >= Duration::from_millis(1) {
            metrics::counter!("spot_canvas_feed_backpressure_ms_total")
                .increment(waited.as_millis() as u64);
            self.shared
                .health
                .update(self.id, |h| h.backpressure_ms += waited.as_millis() as u64);
        }
        Ok(())
    }

    /// Whether a malformed trade or candle of `product` (`None`: no valid id, or a product
    /// this connection did not subscribe) is due to be logged: at most once a minute per
    /// subscribed product, and once a minute for all the others together, so the map stays
    /// as small as the subscription.
    fn bad_item_log_due(&mut self, kind: BadItem, product: Option<&ProductId>) -> bool {
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
    fn on_rejected_trades(&mut self, rejected: &[RejectedTrade]) {
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
    fn drop_unlisted(&mut self, trades: &mut Vec<crate::model::Trade>) {
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
    fn on_rejected_candles(&mut self, rejected: &[RejectedCandle]) {
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

    async fn on_gap(
        &mut self,
        ws: &mut Socket,
        expected: u64,
        got: u64,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<(), End> {
        metrics::counter!("spot_canvas_feed_gaps_total").increment(1);
        tracing::warn!(
            conn = self.id,
            expected,
            got,
            "sequence gap: frames lost, resubscribing"
        );
        self.shared.health.update(self.id, |h| h.gaps += 1);
        self.report_window_and_resubscribe(ws, expected, got, since, at)
            .await
    }

    async fn on_sequence_reset(
        &mut self,
        ws: &mut Socket,
        last: u64,
        got: u64,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<(), End> {
        metrics::counter!("spot_canvas_feed_sequence_resets_total").increment(1);
        tracing::warn!(
            conn = self.id,
            last,
            got,
            "sequence went backwards: following the new sequence, resubscribing"
        );
        self.shared
            .health
            .update(self.id, |h| h.sequence_resets += 1);
        self.report_window_and_resubscribe(ws, last.saturating_add(1), got, since, at)
            .await
    }

    /// Reports a window in which trades may be missing and resubscribes `market_trades`
    /// (unsubscribe, then subscribe: the new subscribe brings a fresh snapshot).
    async fn report_window_and_resubscribe(
        &mut self,
        ws: &mut Socket,
        expected: u64,
        got: u64,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<(), End> {
        self.emit(FeedEvent::Gap {
            connection: self.id,
            products: self.products.iter().cloned().collect(),
            expected,
            got,
            since,
            at,
        })
        .await?;
        let products: Vec<ProductId> = self.products.iter().cloned().collect();
        if products.is_empty() {
            return Ok(());
        }
        let resubscribed = async {
            self.send(ws, "unsubscribe", "market_trades", &products, Priority::Low)
                .await?;
            self.send(ws, "subscribe", "market_trades", &products, Priority::Low)
                .await
        };
        resubscribed
            .await
            .map_err(|e| End::Retry(format!("resubscribe failed: {e}")))
    }

    async fn on_error_frame(
        &mut self,
        ws: &mut Socket,
        message: String,
        previous_frame: DateTime<Utc>,
        last_seq: Option<u64>,
    ) -> Result<(), End> {
        // The message is clipped by the parser; shown escaped everywhere it goes.
        let shown_message = crate::model::shown(&message);
        self.shared.health.update(self.id, |h| {
            h.error_frames += 1;
            h.last_error = Some(shown_message.clone());
        });
        let using_jwt =
            self.shared.signer.is_some() && !self.shared.auth_failed.load(Ordering::Acquire);
        if using_jwt && message.contains("authentication") {
            self.shared.auth_failed.store(true, Ordering::Release);
            self.shared.health.set_auth(AuthState::Failed {
                reason: format!("Coinbase answered {shown_message}; continuing unauthenticated"),
            });
            tracing::warn!(
                conn = self.id,
                message = %shown_message,
                "authentication refused, continuing unauthenticated"
            );
            self.subscribe_all(ws, Priority::Low)
                .await
                .map_err(|e| End::Retry(format!("subscribe failed: {e}")))?;
            return Ok(());
        }
        let refused: Vec<ProductId> = self
            .products
            .iter()
            .filter(|p| names_product(&message, p))
            .cloned()
            .collect();
        if refused.is_empty() {
            if self.bad_item_log_due(BadItem::ErrorFrame, None) {
                tracing::warn!(
                    conn = self.id,
                    message = %shown_message,
                    "error frame from the exchange (logged at most once a minute)"
                );
            }
            return Ok(());
        }
        self.on_refused(ws, refused, shown_message, previous_frame, last_seq)
            .await
    }

    /// The exchange refused a subscribe naming `refused`: drop them from this connection,
    /// subscribe the others again (the whole message was refused), and report the window since
    /// that subscribe as one in which their trades may be missing.
    async fn on_refused(
        &mut self,
        ws: &mut Socket,
        refused: Vec<ProductId>,
        message: String,
        previous_frame: DateTime<Utc>,
        last_seq: Option<u64>,
    ) -> Result<(), End> {
        tracing::warn!(
            conn = self.id,
            ?refused,
            message = %message,
            "the exchange refused products: dropping them, subscribing the others again"
        );
        metrics::counter!("spot_canvas_feed_refused_products_total")
            .increment(refused.len() as u64);
        let at = Utc::now();
        for product in &refused {
            self.products.remove(product);
            self.shared
                .health
                .refuse(product, self.id, message.clone(), at);
        }
        // The manager takes them off this connection and tries them again later.
        let _manager_gone = self.shared.refused.send(refused.clone());
        let rest: Vec<ProductId> = self.products.iter().cloned().collect();
        self.shared.health.register(self.id, rest.clone());
        if rest.is_empty() {
            return Ok(());
        }
        let next = last_seq.map_or(0, |s| s.saturating_add(1));
        let since = self
            .pending_subscribe
            .take()
            .map_or(previous_frame, |sent| sent.min(previous_frame));
        self.emit(FeedEvent::Gap {
            connection: self.id,
            products: rest.clone(),
            expected: next,
            got: next,
            since,
            at,
        })
        .await?;
        self.subscribe_products(ws, &rest, Priority::Low)
            .await
            .map_err(|e| End::Retry(format!("subscribe failed: {e}")))
    }
}

/// Whether `message` names `product` as a whole word (so `BTC-USD` is not found in
/// `BTC-USDC`).
fn names_product(message: &str, product: &str) -> bool {
    let is_id_char = |c: char| c.is_ascii_alphanumeric() || c == '-';
    message.match_indices(product).any(|(at, _)| {
        let before = message[..at].chars().next_back();
        let after = message[at + product.len()..].chars().next();
        !before.is_some_and(is_id_char) && !after.is_some_and(is_id_char)
    })
}

#[cfg(test)]
mod tests {
    use super::names_product;

    #[test]
    fn products_are_named_as_whole_words() {
        let message = "Failed to subscribe: unknown product_id ETH-USD";
        assert!(names_product(message, "ETH-USD"));
        assert!(!names_product(message, "ETH-US"));
        assert!(!names_product("unknown product_id BTC-USDC", "BTC-USD"));
        assert!(names_product("BTC-USD, ETH-USD refused", "BTC-USD"));
        assert!(!names_product("authentication failure", "BTC-USD"));
    }
}
