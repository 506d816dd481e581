//! Following a connection's `sequence_num`: a gap or a number that went backwards reports the
//! window it may have lost and resubscribes for a fresh snapshot.
//!
//! In: each frame's sequence number. Out: reconnect windows on the shared channel, gap and
//! reset counters, a resubscribe.

use chrono::{DateTime, Utc};

use super::super::{Connection, End, Socket};
use crate::coinbase::pacer::Priority;
use crate::model::{FeedEvent, ProductId};

impl Connection {
    /// Checks a frame's `sequence_num` against the last one and follows it: a gap or a number
    /// that went backwards reports a window and resubscribes.
    pub(super) async fn follow_sequence(
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

    pub(super) async fn on_gap(
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

    pub(super) async fn on_sequence_reset(
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
    pub(super) async fn report_window_and_resubscribe(
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
}
