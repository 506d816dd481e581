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

mod errors;
mod rejected;
mod sequence;

use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::{Connection, End, Socket};
use crate::coinbase::{FrameBody, frame_sequence, parse_frame};
use crate::model::{FeedEvent, TradeBatch};

pub(super) use rejected::BadItem;

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

    /// Sends an event downstream, measuring how long a full channel made it wait.
    pub(in crate::feed::client) async fn emit(&self, event: FeedEvent) -> Result<(), End> {
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
}
