//! The exchange's error frames: a refused key turns the connection unauthenticated and
//! resubscribes, a refused product is dropped and the others are subscribed again.
//!
//! In: an error frame's message. Out: the connection's new auth state or product set, a
//! resubscribe, refused products reported to the manager.

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};

use super::super::{Connection, End, Socket};
use super::rejected::BadItem;
use crate::coinbase::pacer::Priority;
use crate::feed::health::AuthState;
use crate::model::{FeedEvent, ProductId};

impl Connection {
    pub(super) async fn on_error_frame(
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
    pub(super) async fn on_refused(
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
