//! One WebSocket connection to Coinbase's market-data endpoint, for one slice of products.
//!
//! In: its products, commands to subscribe or unsubscribe products, and frames from the
//! socket. Out: [`FeedEvent`]s on the shared bounded channel (waiting when it is full: the
//! socket is not read meanwhile), and its state in [`FeedHealth`]. It subscribes within the
//! 5-second deadline, tracks `sequence_num` (a gap, or a number going backwards, is counted,
//! logged, reported downstream as a window to backfill and answered by a resubscribe for a
//! fresh snapshot), skips and counts malformed frames and, within a good frame, malformed
//! trades (module `frames`), drops products whose subscribe the exchange refuses, and
//! reconnects after any close, error or 10 s of silence with exponential backoff. Every send
//! and close has a timeout (module `send`), so a peer that stops reading stalls nothing.

mod frames;
pub mod send;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use self::send::close_politely;
use crate::coinbase::auth::JwtSigner;
use crate::coinbase::pacer::{Pacer, Priority};
use crate::feed::FeedSettings;
use crate::feed::health::{ConnectionState, FeedHealth};
use crate::model::{FeedEvent, ProductId};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Channels subscribed per product, besides `heartbeats` per connection.
const PRODUCT_CHANNELS: [&str; 2] = ["market_trades", "candles"];
/// Time allowed for the TCP + TLS + WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the connection manager tells a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe(Vec<ProductId>),
    Unsubscribe(Vec<ProductId>),
}

/// State shared by all connections of the feed.
#[derive(Debug)]
pub struct Shared {
    pub settings: FeedSettings,
    /// Spaces connects: at most one per `connect_interval`, all connections together.
    pub connect_pacer: Pacer,
    /// Spaces client messages: at most one per `message_interval`, all connections together.
    pub message_pacer: Pacer,
    pub signer: Option<JwtSigner>,
    /// Set once Coinbase refused the key: every connection continues unauthenticated.
    pub auth_failed: AtomicBool,
    pub health: Arc<FeedHealth>,
    /// Sender of every feed event; the engine holds the receiver.
    pub events: mpsc::Sender<FeedEvent>,
    /// Products the exchange refused to subscribe, for the manager to take off their
    /// connection and try again after a cool-down.
    pub refused: mpsc::UnboundedSender<Vec<ProductId>>,
}

/// How a session ended.
enum End {
    /// Shutting down (or the downstream is gone): do not reconnect.
    Stop,
    /// Reconnect after a backoff.
    Retry(String),
}

/// One connection's task.
#[derive(Debug)]
pub struct Connection {
    id: usize,
    products: BTreeSet<ProductId>,
    shared: Arc<Shared>,
    /// Commands from the manager; closed when the manager drops the connection.
    commands: mpsc::Receiver<Command>,
    /// When the oldest subscribe not yet acknowledged was sent: a refused subscribe loses the
    /// trades of its products from then on.
    pending_subscribe: Option<DateTime<Utc>>,
    /// When malformed trades were last logged, per product (at most once a minute each).
    bad_trades_logged: HashMap<(frames::BadItem, Option<ProductId>), Instant>,
}

impl Connection {
    pub fn new(
        id: usize,
        products: BTreeSet<ProductId>,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        shared
            .health
            .register(id, products.iter().cloned().collect());
        Connection {
            id,
            products,
            shared,
            commands,
            pending_subscribe: None,
            bad_trades_logged: HashMap::new(),
        }
    }

    /// Connects, and reconnects after every end, until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        let policy = self.shared.settings.reconnect;
        let mut attempt: u32 = 0;
        let mut disconnected_at: Option<DateTime<Utc>> = None;
        loop {
            self.set_state(ConnectionState::Connecting);
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.shared.connect_pacer.acquire(Priority::High) => {}
            }
            let mut connected_at = None;
            let reason = match self
                .session(&cancel, disconnected_at, &mut connected_at)
                .await
            {
                End::Stop => break,
                End::Retry(reason) => reason,
            };
            if let Some(connected_at) = connected_at {
                // A new loss: trades may be missing from the last frame received on.
                disconnected_at = Some(
                    self.shared
                        .health
                        .last_frame(self.id)
                        .unwrap_or_else(Utc::now),
                );
                if connected_at.elapsed() >= policy.healthy_after {
                    attempt = 0;
                }
            }
            let delay = policy.delay(attempt, rand::rng().random::<f64>());
            attempt = attempt.saturating_add(1);
            tracing::warn!(
                conn = self.id,
                reason = %reason,
                attempt,
                delay_ms = delay.as_millis() as u64,
                "feed connection lost, reconnecting"
            );
            metrics::counter!("spot_canvas_feed_disconnects_total").increment(1);
            self.shared.health.update(self.id, |h| {
                h.state = ConnectionState::Backoff;
                h.connected = false;
                h.last_error = Some(reason);
                h.backoffs_ms.push(delay.as_millis() as u64);
                if h.backoffs_ms.len() > 16 {
                    h.backoffs_ms.remove(0);
                }
            });
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.shared.health.update(self.id, |h| {
            h.state = ConnectionState::Stopped;
            h.connected = false;
        });
    }

    fn set_state(&self, state: ConnectionState) {
        self.shared.health.update(self.id, |h| h.state = state);
    }

    async fn session(
        &mut self,
        cancel: &CancellationToken,
        disconnected_at: Option<DateTime<Utc>>,
        connected_at: &mut Option<Instant>,
    ) -> End {
        let shared = self.shared.clone();
        let settings = &shared.settings;
        let config = WebSocketConfig::default()
            .max_message_size(Some(settings.max_frame_bytes))
            .max_frame_size(Some(settings.max_frame_bytes));
        let connect = tokio_tungstenite::connect_async_with_config(
            settings.ws_url.as_str(),
            Some(config),
            false,
        );
        let mut ws: Socket = match timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok((ws, _response))) => ws,
            Ok(Err(e)) => return End::Retry(format!("connect failed: {e}")),
            Err(_) => return End::Retry("connect timed out".into()),
        };
        self.pending_subscribe = None;
        if let Err(e) = self.subscribe_all(&mut ws, Priority::High).await {
            return End::Retry(format!("subscribe failed: {e}"));
        }
        *connected_at = Some(Instant::now());
        let now = Utc::now();
        self.shared.health.update(self.id, |h| {
            h.state = ConnectionState::Connected;
            h.connected = true;
            h.connected_at = Some(now);
            h.last_heartbeat = None;
            if disconnected_at.is_some() {
                h.reconnects += 1;
            }
        });
        if let Some(disconnected_at) = disconnected_at {
            metrics::counter!("spot_canvas_feed_reconnects_total").increment(1);
            tracing::info!(
                conn = self.id,
                products = self.products.len(),
                "feed reconnected"
            );
            let event = FeedEvent::Reconnected {
                connection: self.id,
                products: self.products.iter().cloned().collect(),
                disconnected_at,
                reconnected_at: now,
            };
            if self.shared.events.send(event).await.is_err() {
                return End::Stop;
            }
        } else {
            tracing::info!(
                conn = self.id,
                products = self.products.len(),
                "feed connected"
            );
            let event = FeedEvent::Subscribed {
                connection: self.id,
                products: self.products.iter().cloned().collect(),
                at: now,
            };
            if self.shared.events.send(event).await.is_err() {
                return End::Stop;
            }
        }

        let silence = settings.silence_timeout;
        let mut last_frame = Instant::now();
        let mut last_seq: Option<u64> = None;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    close_politely(&mut ws).await;
                    return End::Stop;
                }
                command = self.commands.recv() => match command {
                    Some(command) => {
                        let added = match self.on_command(&mut ws, command).await {
                            Ok(added) => added,
                            Err(e) => return End::Retry(format!("send failed: {e}")),
                        };
                        if !added.is_empty() {
                            let event = FeedEvent::Subscribed {
                                connection: self.id,
                                products: added,
                                at: Utc::now(),
                            };
                            if let Err(end) = self.emit(event).await {
                                return end;
                            }
                        }
                    }
                    None => {
                        close_politely(&mut ws).await;
                        return End::Stop;
                    }
                },
                message = timeout_at(last_frame + silence, ws.next()) => {
                    let message = match message {
                        Err(_) => return End::Retry(format!("no frame for {} s", silence.as_secs_f64())),
                        Ok(None) => return End::Retry("connection ended".into()),
                        Ok(Some(Err(e))) => return End::Retry(e.to_string()),
                        Ok(Some(Ok(message))) => message,
                    };
                    last_frame = Instant::now();
                    let bytes = match &message {
                        Message::Text(text) => text.as_bytes(),
                        Message::Binary(bytes) => bytes.as_ref(),
                        Message::Close(frame) => {
                            let why = frame.as_ref().map_or_else(
                                || "closed by the server".to_owned(),
                                |f| format!("closed by the server: {} {}", u16::from(f.code), f.reason),
                            );
                            return End::Retry(why);
                        }
                        _ => continue,
                    };
                    if let Err(end) = self.on_frame(&mut ws, bytes, &mut last_seq).await {
                        return end;
                    }
                    // Time spent waiting for a full event channel is not silence of the peer.
                    last_frame = Instant::now();
                }
            }
        }
    }
}
