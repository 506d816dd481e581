//! A connection's client messages: subscribe and unsubscribe per channel, with the checks
//! Coinbase applies (known channel, tradable products or those a products list fault lists,
//! a valid token when the simulator has a
//! public key) and the refusals a `refuse_subscribe` fault arms.
//!
//! In: one client text message. Out: a `subscriptions` ack and snapshots, or an error frame.

use std::collections::BTreeMap;

use chrono::Utc;
use serde::Deserialize;

use super::{Connection, End};
use crate::format;
use spot_canvas_model::Granularity;

#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    product_ids: Vec<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    jwt: Option<String>,
}

impl Connection {
    /// Handles one client message; `Ok(true)` when it was a subscribe.
    pub(super) async fn on_client_message(&mut self, text: &str) -> Result<bool, End> {
        // Faults due now (a refusal armed before the first subscribe among them) apply first.
        self.apply_due_faults().await?;
        let message: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(_) => {
                self.send_error("failed to parse message").await?;
                return Ok(false);
            }
        };
        let subscribe = match message.kind.as_str() {
            "subscribe" => true,
            "unsubscribe" => false,
            _ => {
                self.send_error("unknown message type").await?;
                return Ok(false);
            }
        };
        if let Some(token) = &message.jwt {
            if !self.token_accepted(token) {
                self.send_error("authentication failure").await?;
                return Ok(false);
            }
            self.authenticated = true;
        }
        let channel = message.channel.unwrap_or_default();
        match channel.as_str() {
            "heartbeats" => {
                if subscribe {
                    self.subscriptions
                        .entry(channel.clone())
                        .or_default()
                        .insert("heartbeats".into());
                } else {
                    self.subscriptions.remove(&channel);
                }
            }
            "market_trades" | "candles" => {
                let refused = message
                    .product_ids
                    .iter()
                    .find(|p| subscribe && self.refused.contains(*p));
                if let Some(refused) = refused {
                    // The whole message is refused, as for an unknown product.
                    self.sim.stats.refused_subscribes.inc();
                    let text = format!("Failed to subscribe: unknown product_id {refused}");
                    self.send_error(&text).await?;
                    return Ok(false);
                }
                if let Some(unknown) = message.product_ids.iter().find(|p| {
                    !self.sim.exchange.is_tradable(p) && !self.sim.products_faults.lists(p)
                }) {
                    self.sim.stats.unknown_product_errors.inc();
                    let text = format!("Failed to subscribe: unknown product_id {unknown}");
                    self.send_error(&text).await?;
                    return Ok(false);
                }
                if subscribe {
                    let new: Vec<String> = {
                        let subs = self.subscriptions.entry(channel.clone()).or_default();
                        message
                            .product_ids
                            .iter()
                            .filter(|p| subs.insert((*p).clone()))
                            .cloned()
                            .collect()
                    };
                    self.send_snapshots(&channel, &new).await?;
                } else if message.product_ids.is_empty() {
                    self.subscriptions.remove(&channel);
                } else if let Some(subs) = self.subscriptions.get_mut(&channel) {
                    for p in &message.product_ids {
                        subs.remove(p);
                    }
                    if subs.is_empty() {
                        self.subscriptions.remove(&channel);
                    }
                }
            }
            _ => {
                // What Coinbase answers to a misspelled channel such as `heartbeat`.
                self.sim.stats.unknown_channel_errors.inc();
                self.send_error("authentication failure").await?;
                return Ok(false);
            }
        }
        self.sim.update_connection(self.id, &self.subscriptions);
        let acked: BTreeMap<String, Vec<String>> = self
            .subscriptions
            .iter()
            .map(|(c, p)| (c.clone(), p.iter().cloned().collect()))
            .collect();
        self.send(|seq| format::subscriptions(Utc::now(), seq, &acked))
            .await?;
        Ok(subscribe)
    }

    /// Whether a subscribe's token passes: refused when `--reject-jwt` is set, checked against
    /// the public key when one was given, and accepted otherwise.
    fn token_accepted(&self, token: &str) -> bool {
        if self.sim.reject_jwt() {
            return false;
        }
        let Some(verifier) = &self.sim.jwt else {
            return true;
        };
        match verifier.verify(token, Utc::now().timestamp()) {
            Ok(()) => {
                self.sim.stats.jwt_accepted.inc();
                true
            }
            Err(why) => {
                self.sim.stats.jwt_rejected.inc();
                tracing::debug!(conn = self.id, %why, "sim refuses a subscribe token");
                false
            }
        }
    }

    async fn send_snapshots(&mut self, channel: &str, products: &[String]) -> Result<(), End> {
        match channel {
            "market_trades" => {
                for product in products {
                    let trades = self.sim.exchange.snapshot(product);
                    self.send(|seq| format::market_trades(Utc::now(), seq, true, &trades))
                        .await?;
                }
            }
            "candles" => self.send_candles(products, true).await?,
            _ => {}
        }
        Ok(())
    }

    /// Sends the current 5-minute candle of each of `products` that has one, in one frame.
    pub(super) async fn send_candles(
        &mut self,
        products: &[String],
        snapshot: bool,
    ) -> Result<(), End> {
        let now = Utc::now();
        let width = Granularity::FiveMinutes.seconds();
        let start = now.timestamp().div_euclid(width) * width;
        let candles: Vec<_> = products
            .iter()
            .filter_map(|p| {
                let current = self.sim.exchange.candles(p, width, start, start + width)?;
                current.into_iter().next().map(|c| (p.as_str(), c))
            })
            .collect();
        if candles.is_empty() {
            return Ok(());
        }
        self.send(|seq| format::candles(now, seq, snapshot, &candles))
            .await
    }
}
