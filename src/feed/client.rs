//! One WebSocket connection to Coinbase's market-data endpoint, for one slice of products.
//!
//! In: its products, commands to subscribe or unsubscribe products, and frames from the
//! socket. Out: [`FeedEvent`]s on the shared bounded channel (waiting when it is full: the
//! socket is not read meanwhile), and its state in [`FeedHealth`]. It subscribes within the
//! 5-second deadline, tracks `sequence_num` (a gap is counted, logged, reported downstream
//! and answered by a resubscribe for a fresh snapshot), skips and counts malformed frames,
//! and reconnects after any close, error or 10 s of silence with exponential backoff.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::coinbase::auth::JwtSigner;
use crate::coinbase::pacer::{Pacer, Priority};
use crate::coinbase::{FrameBody, parse_frame};
use crate::feed::FeedSettings;
use crate::feed::health::{AuthState, ConnectionState, FeedHealth};
use crate::model::{FeedEvent, TradeBatch};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Channels subscribed per product, besides `heartbeats` per connection.
const PRODUCT_CHANNELS: [&str; 2] = ["market_trades", "candles"];
/// Time allowed for the TCP + TLS + WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a polite close waits for the server's answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the connection manager tells a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
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
    products: BTreeSet<String>,
    shared: Arc<Shared>,
    /// Commands from the manager; closed when the manager drops the connection.
    commands: mpsc::Receiver<Command>,
}

impl Connection {
    pub fn new(
        id: usize,
        products: BTreeSet<String>,
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
        let settings = &self.shared.settings;
        let config = WebSocketConfig::default()
            .max_message_size(Some(settings.max_frame_bytes))
            .max_frame_size(Some(settings.max_frame_bytes));
        let connect = tokio_tungstenite::connect_async_with_config(
            settings.ws_url.as_str(),
            Some(config),
            false,
        );
        let mut ws = match timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok((ws, _response))) => ws,
            Ok(Err(e)) => return End::Retry(format!("connect failed: {e}")),
            Err(_) => return End::Retry("connect timed out".into()),
        };
        if let Err(e) = self.subscribe_all(&mut ws, Priority::High).await {
            return End::Retry(format!("subscribe failed: {e}"));
        }
        *connected_at = Some(Instant::now());
        let now = Utc::now();
        self.shared.health.update(self.id, |h| {
            h.state = ConnectionState::Connected;
            h.connected = true;
            h.connected_at = Some(now);
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
                }
            }
        }
    }

    async fn on_frame(
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
                let preview: String =
                    String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into();
                tracing::warn!(conn = self.id, error = %e, %preview, "skipping malformed frame");
                self.shared.health.update(self.id, |h| {
                    h.malformed += 1;
                    h.last_frame = Some(received);
                });
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
            match *last_seq {
                Some(last) if seq <= last => {
                    // Coinbase: a lower number is an out-of-order or repeated frame.
                    metrics::counter!("spot_canvas_feed_out_of_order_total").increment(1);
                    tracing::debug!(conn = self.id, last, seq, "ignoring out-of-order frame");
                    return Ok(());
                }
                Some(last) if seq > last + 1 => {
                    *last_seq = Some(seq);
                    self.on_gap(ws, last + 1, seq, previous_frame, received)
                        .await?;
                }
                _ => *last_seq = Some(seq),
            }
        }
        let event = match frame.body {
            FrameBody::MarketTrades { snapshot, trades } => {
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
            FrameBody::Candles { candles } => FeedEvent::ExchangeCandles {
                connection: self.id,
                received,
                candles,
            },
            FrameBody::Heartbeat { .. } => FeedEvent::Heartbeat {
                connection: self.id,
                time: frame.timestamp,
            },
            FrameBody::Subscriptions { subscriptions } => {
                tracing::debug!(conn = self.id, ?subscriptions, "subscriptions acknowledged");
                return Ok(());
            }
            FrameBody::Error { message } => return self.on_error_frame(ws, message).await,
            FrameBody::Skipped { .. } => return Ok(()),
        };
        self.emit(event).await
    }

    /// Sends an event downstream, measuring how long a full channel made it wait.
    async fn emit(&self, event: FeedEvent) -> Result<(), End> {
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
        self.emit(FeedEvent::Gap {
            connection: self.id,
            products: self.products.iter().cloned().collect(),
            expected,
            got,
            since,
            at,
        })
        .await?;
        // Unsubscribe and subscribe again: the new subscribe brings a fresh snapshot.
        let products: Vec<String> = self.products.iter().cloned().collect();
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

    async fn on_error_frame(&mut self, ws: &mut Socket, message: String) -> Result<(), End> {
        self.shared.health.update(self.id, |h| {
            h.error_frames += 1;
            h.last_error = Some(message.clone());
        });
        let using_jwt =
            self.shared.signer.is_some() && !self.shared.auth_failed.load(Ordering::Acquire);
        if using_jwt && message.contains("authentication") {
            self.shared.auth_failed.store(true, Ordering::Release);
            self.shared.health.set_auth(AuthState::Failed {
                reason: format!("Coinbase answered {message:?}; continuing unauthenticated"),
            });
            tracing::warn!(
                conn = self.id,
                %message,
                "authentication refused, continuing unauthenticated"
            );
            self.subscribe_all(ws, Priority::Low)
                .await
                .map_err(|e| End::Retry(format!("subscribe failed: {e}")))?;
            return Ok(());
        }
        tracing::warn!(conn = self.id, %message, "error frame from the exchange");
        Ok(())
    }

    /// Changes the subscriptions; returns the products newly subscribed.
    async fn on_command(
        &mut self,
        ws: &mut Socket,
        command: Command,
    ) -> Result<Vec<String>, tokio_tungstenite::tungstenite::Error> {
        let (kind, products) = match command {
            Command::Subscribe(products) => {
                let new: Vec<String> = products
                    .into_iter()
                    .filter(|p| self.products.insert(p.clone()))
                    .collect();
                ("subscribe", new)
            }
            Command::Unsubscribe(products) => {
                let gone: Vec<String> = products
                    .into_iter()
                    .filter(|p| self.products.remove(p))
                    .collect();
                ("unsubscribe", gone)
            }
        };
        let all: Vec<String> = self.products.iter().cloned().collect();
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

    async fn subscribe_all(
        &self,
        ws: &mut Socket,
        priority: Priority,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let products: Vec<String> = self.products.iter().cloned().collect();
        if !products.is_empty() {
            for channel in PRODUCT_CHANNELS {
                self.send(ws, "subscribe", channel, &products, priority)
                    .await?;
            }
        }
        self.send(ws, "subscribe", "heartbeats", &[], priority)
            .await
    }

    /// Sends one subscribe or unsubscribe message, paced, with a fresh JWT when authenticated.
    async fn send(
        &self,
        ws: &mut Socket,
        kind: &str,
        channel: &str,
        products: &[String],
        priority: Priority,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let mut message = if channel == "heartbeats" {
            json!({ "type": kind, "channel": channel })
        } else {
            json!({ "type": kind, "product_ids": products, "channel": channel })
        };
        if let Some(jwt) = self.jwt() {
            message["jwt"] = json!(jwt);
        }
        self.shared.message_pacer.acquire(priority).await;
        ws.send(Message::Text(message.to_string().into())).await
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

/// Sends a close frame and waits briefly for the server's.
async fn close_politely(ws: &mut Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "shutting down".into(),
    };
    if ws.close(Some(frame)).await.is_err() {
        return;
    }
    let _drained = timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
