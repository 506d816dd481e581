//! The simulator's WebSocket endpoint, behaving as Coinbase's market-data endpoint does.
//!
//! In: client subscribe and unsubscribe messages, the exchange's ticks, a one-second timer.
//! Out: `subscriptions` acks, `market_trades` snapshots (one frame per product, last 100
//! trades newest first) and updates (one frame per product per 250 ms tick), `candles`
//! (5-minute, re-sent every second), `heartbeats` (every second), error frames; one
//! `sequence_num` counter across all channels. Enforces the 5-second subscribe deadline and
//! the per-address limits, and applies armed faults.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, MissedTickBehavior};

use super::SimState;
use super::faults::{FaultKind, FaultRequest};
use super::format;
use super::market::Tick;
use crate::model::{Granularity, Trade};

/// Time a client has to send its first subscribe.
pub const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(5);
/// Close code for policy violations (deadline, rate limits).
const POLICY_VIOLATION: u16 = 1008;

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

/// `GET /`: upgrades to the market-data WebSocket.
pub(super) async fn upgrade(
    State(sim): State<Arc<SimState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let allowed = sim.limits.allow_connect(peer.ip());
    ws.on_upgrade(move |socket| async move {
        if !allowed {
            sim.stats.connect_limit_hits.inc();
            refuse(socket, "rate limit exceeded: too many connections").await;
            return;
        }
        Connection::new(sim, socket, peer).run().await;
    })
}

async fn refuse(mut socket: WebSocket, message: &str) {
    // The peer may be gone already; nothing more to do then.
    let _gone = socket
        .send(Message::Text(format::error(message).into()))
        .await;
    let _gone = socket
        .send(Message::Close(Some(CloseFrame {
            code: POLICY_VIOLATION,
            reason: message.into(),
        })))
        .await;
}

/// Why the connection loop ended.
enum End {
    /// Close politely with this code and reason.
    Close(u16, String),
    /// Drop the socket without a close frame.
    Drop,
    /// The peer went away.
    Gone,
}

struct PendingFault {
    fire_at_frame: u64,
    kind: FaultKind,
}

struct Connection {
    sim: Arc<SimState>,
    socket: WebSocket,
    peer: SocketAddr,
    id: u64,
    seq: u64,
    frames_sent: u64,
    /// channel → product ids.
    subscriptions: BTreeMap<String, BTreeSet<String>>,
    faults_seen: u64,
    faults_generation: u64,
    pending: Vec<PendingFault>,
    stalled_until: Option<Option<Instant>>,
    duplicate_next: bool,
    authenticated: bool,
}

impl Connection {
    fn new(sim: Arc<SimState>, socket: WebSocket, peer: SocketAddr) -> Self {
        let id = sim.register_connection(peer);
        Connection {
            sim,
            socket,
            peer,
            id,
            seq: 0,
            frames_sent: 0,
            subscriptions: BTreeMap::new(),
            faults_seen: 0,
            faults_generation: u64::MAX,
            pending: Vec::new(),
            stalled_until: None,
            duplicate_next: false,
            authenticated: false,
        }
    }

    async fn run(mut self) {
        let end = self.serve().await;
        match end {
            End::Close(code, reason) => {
                let _gone = self
                    .socket
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
            }
            End::Drop | End::Gone => {}
        }
        self.sim.unregister_connection(self.id);
        tracing::debug!(conn = self.id, peer = %self.peer, "sim connection ended");
    }

    async fn serve(&mut self) -> End {
        let mut ticks = self.sim.exchange.subscribe_ticks();
        let deadline = tokio::time::sleep(SUBSCRIBE_DEADLINE);
        tokio::pin!(deadline);
        let mut subscribed = false;
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        every_second.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let cancel = self.sim.cancel.clone();
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    return End::Close(1001, "going away".into());
                }
                () = &mut deadline, if !subscribed => {
                    self.sim.stats.subscribe_timeouts.inc();
                    return End::Close(POLICY_VIOLATION, "subscribe timeout".into());
                }
                message = self.socket.recv() => {
                    let text = match message {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) => {
                            self.sim.stats.client_close_frames.inc();
                            return End::Gone;
                        }
                        None | Some(Err(_)) => return End::Gone,
                        Some(Ok(_)) => continue,
                    };
                    if !self.sim.limits.allow_message(self.peer.ip()) {
                        self.sim.stats.message_limit_hits.inc();
                        let message = "rate limit exceeded: too many messages";
                        let _gone = self.socket.send(Message::Text(format::error(message).into())).await;
                        return End::Close(POLICY_VIOLATION, message.into());
                    }
                    match self.on_client_message(&text).await {
                        Ok(true) => subscribed = true,
                        Ok(false) => {}
                        Err(end) => return end,
                    }
                }
                tick = ticks.recv() => match tick {
                    Ok(tick) => {
                        if let Err(end) = self.on_tick(&tick).await {
                            return end;
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        // Frames this connection could not keep up with are lost, as on
                        // Coinbase: the sequence numbers show the gap.
                        self.seq += missed;
                    }
                    Err(RecvError::Closed) => return End::Close(1001, "going away".into()),
                },
                _ = every_second.tick() => {
                    if let Err(end) = self.on_second().await {
                        return end;
                    }
                }
            }
        }
    }

    /// Handles one client message; `Ok(true)` when it was a subscribe.
    async fn on_client_message(&mut self, text: &str) -> Result<bool, End> {
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
        if message.jwt.is_some() {
            if self.sim.reject_jwt() {
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
                if let Some(unknown) = message
                    .product_ids
                    .iter()
                    .find(|p| !self.sim.exchange.is_tradable(p))
                {
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
    async fn send_candles(&mut self, products: &[String], snapshot: bool) -> Result<(), End> {
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

    async fn on_tick(&mut self, tick: &Tick) -> Result<(), End> {
        let Some(products) = self.subscriptions.get("market_trades") else {
            return Ok(());
        };
        let batches: Vec<&Vec<Trade>> = tick
            .batches
            .iter()
            .filter(|(p, _)| products.contains(p))
            .map(|(_, trades)| trades)
            .collect();
        for trades in batches {
            self.send(|seq| format::market_trades(Utc::now(), seq, false, trades))
                .await?;
            if std::mem::take(&mut self.duplicate_next) {
                self.send(|seq| format::market_trades(Utc::now(), seq, false, trades))
                    .await?;
            }
        }
        Ok(())
    }

    async fn on_second(&mut self) -> Result<(), End> {
        if self.subscriptions.contains_key("heartbeats") {
            let now = Utc::now();
            let since_start = now - self.sim.exchange.started();
            let counter = since_start.num_seconds().max(0) as u64;
            self.send(|seq| format::heartbeat(now, seq, since_start, counter))
                .await?;
        }
        let products: Vec<String> = self
            .subscriptions
            .get("candles")
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default();
        if products.is_empty() {
            return Ok(());
        }
        self.send_candles(&products, false).await
    }

    /// Sends one sequenced frame built for its sequence number, applying due faults first.
    async fn send(&mut self, build: impl FnOnce(u64) -> String) -> Result<(), End> {
        self.apply_due_faults().await?;
        let seq = self.seq;
        self.seq += 1;
        self.write(build(seq)).await
    }

    /// Sends an error frame, which carries no sequence number.
    async fn send_error(&mut self, message: &str) -> Result<(), End> {
        self.apply_due_faults().await?;
        self.write(format::error(message)).await
    }

    async fn apply_due_faults(&mut self) -> Result<(), End> {
        self.collect_faults();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].fire_at_frame > self.frames_sent {
                i += 1;
                continue;
            }
            let fault = self.pending.remove(i);
            self.sim.stats.faults_fired.inc();
            tracing::debug!(conn = self.id, kind = ?fault.kind, "sim fault fires");
            match fault.kind {
                FaultKind::Close { code } => return Err(End::Close(code, "fault".into())),
                FaultKind::Drop => return Err(End::Drop),
                FaultKind::Stall { secs } => {
                    self.stalled_until =
                        Some(secs.map(|s| Instant::now() + Duration::from_secs(s)));
                }
                FaultKind::SkipSequence { count } => self.seq += count,
                FaultKind::Malformed => {
                    self.write(r#"{"channel":"market_trades","timestamp":"2026-"#.to_owned())
                        .await?;
                }
                FaultKind::Oversized { bytes } => {
                    const WRAPPER: &str = r#"{"channel":"oversized","padding":""}"#;
                    let padding = "x".repeat(bytes.saturating_sub(WRAPPER.len()));
                    self.write(format!(
                        r#"{{"channel":"oversized","padding":"{padding}"}}"#
                    ))
                    .await?;
                }
                FaultKind::Duplicate => self.duplicate_next = true,
            }
        }
        Ok(())
    }

    async fn write(&mut self, text: String) -> Result<(), End> {
        self.frames_sent += 1;
        if let Some(until) = self.stalled_until {
            match until {
                Some(t) if Instant::now() >= t => self.stalled_until = None,
                _ => return Ok(()),
            }
        }
        self.sim.stats.frames_sent.inc();
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| End::Gone)
    }

    fn collect_faults(&mut self) {
        let generation = self.sim.faults.generation();
        if generation == self.faults_generation {
            return;
        }
        self.faults_generation = generation;
        let (new, seen) = self.sim.faults.take_new(self.id, self.faults_seen);
        self.faults_seen = seen;
        for FaultRequest {
            after_frames, kind, ..
        } in new
        {
            self.pending.push(PendingFault {
                fire_at_frame: self.frames_sent + after_frames,
                kind,
            });
        }
    }
}
