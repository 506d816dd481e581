//! What a connection sends: subscribe and unsubscribe messages (paced, with a fresh JWT when
//! authenticated) and the polite close, each bounded by a timeout so that a peer that stops
//! reading stalls neither the connection nor the shutdown.
//!
//! In: the connection's products and the manager's commands. Out: client messages on the
//! socket; an error when a send fails or times out (the session then reconnects).

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{Command, Connection, PRODUCT_CHANNELS, Socket};
use crate::coinbase::pacer::Priority;
use crate::feed::health::AuthState;
use crate::model::ProductId;

/// Longest a client message may take to go out (a peer that stops reading fills the socket's
/// buffers and would otherwise block the send forever).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a polite close may take: sending the close frame, then waiting for the server's.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Socket(#[from] WsError),
    #[error("send timed out after {} s", SEND_TIMEOUT.as_secs())]
    Timeout,
}

impl Connection {
    /// Changes the subscriptions; returns the products newly subscribed.
    pub(super) async fn on_command(
        &mut self,
        ws: &mut Socket,
        command: Command,
    ) -> Result<Vec<ProductId>, SendError> {
        let (kind, products) = match command {
            Command::Subscribe(products) => {
                let new: Vec<ProductId> = products
                    .into_iter()
                    .filter(|p| self.products.insert(p.clone()))
                    .collect();
                ("subscribe", new)
            }
            Command::Unsubscribe(products) => {
                let gone: Vec<ProductId> = products
                    .into_iter()
                    .filter(|p| self.products.remove(p))
                    .collect();
                ("unsubscribe", gone)
            }
        };
        let all: Vec<ProductId> = self.products.iter().cloned().collect();
        self.shared.health.register(self.id, all);
        if products.is_empty() {
            return Ok(Vec::new());
        }
        tracing::info!(conn = self.id, kind, ?products, "changing subscriptions");
        for channel in PRODUCT_CHANNELS {
            self.send(ws, kind, channel, &products, Priority::Low)
                .await?;
        }
        Ok(if kind == "subscribe" {
            products
        } else {
            Vec::new()
        })
    }

    /// Subscribes every product of the connection on every channel, and heartbeats.
    pub(super) async fn subscribe_all(
        &mut self,
        ws: &mut Socket,
        priority: Priority,
    ) -> Result<(), SendError> {
        let products: Vec<ProductId> = self.products.iter().cloned().collect();
        self.subscribe_products(ws, &products, priority).await?;
        self.send(ws, "subscribe", "heartbeats", &[], priority)
            .await
    }

    /// Subscribes `products` on every product channel.
    pub(super) async fn subscribe_products(
        &mut self,
        ws: &mut Socket,
        products: &[ProductId],
        priority: Priority,
    ) -> Result<(), SendError> {
        if products.is_empty() {
            return Ok(());
        }
        for channel in PRODUCT_CHANNELS {
            self.send(ws, "subscribe", channel, products, priority)
                .await?;
        }
        Ok(())
    }

    /// Sends one subscribe or unsubscribe message, paced, with a fresh JWT when authenticated.
    pub(super) async fn send(
        &mut self,
        ws: &mut Socket,
        kind: &str,
        channel: &str,
        products: &[ProductId],
        priority: Priority,
    ) -> Result<(), SendError> {
        let mut message = if channel == "heartbeats" {
            json!({ "type": kind, "channel": channel })
        } else {
            json!({ "type": kind, "product_ids": products, "channel": channel })
        };
        if let Some(jwt) = self.jwt() {
            message["jwt"] = json!(jwt);
        }
        self.shared.message_pacer.acquire(priority).await;
        if kind == "subscribe" && channel != "heartbeats" {
            self.pending_subscribe.get_or_insert_with(Utc::now);
        }
        match timeout(
            SEND_TIMEOUT,
            ws.send(Message::Text(message.to_string().into())),
        )
        .await
        {
            Ok(sent) => Ok(sent?),
            Err(_) => Err(SendError::Timeout),
        }
    }

    fn jwt(&self) -> Option<String> {
        let signer = self.shared.signer.as_ref()?;
        if self.shared.auth_failed.load(Ordering::Acquire) {
            return None;
        }
        match signer.token(Utc::now().timestamp()) {
            Ok(token) => Some(token),
            Err(e) => {
                self.shared.auth_failed.store(true, Ordering::Release);
                self.shared.health.set_auth(AuthState::Failed {
                    reason: format!("{e}; continuing unauthenticated"),
                });
                tracing::warn!(error = %e, "cannot sign a token, continuing unauthenticated");
                None
            }
        }
    }
}

/// Sends a close frame and waits briefly for the server's; [`CLOSE_TIMEOUT`] bounds the whole.
pub(super) async fn close_politely(ws: &mut Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "shutting down".into(),
    };
    let closed = timeout(CLOSE_TIMEOUT, async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    if closed.is_err() {
        tracing::debug!("the server did not complete the close in time");
    }
}
