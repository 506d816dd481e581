//! The simulator's WebSocket endpoint, behaving as Coinbase's market-data endpoint does.
//!
//! In: client subscribe and unsubscribe messages, the exchange's ticks, a one-second timer.
//! Out: `subscriptions` acks, `market_trades` snapshots (one frame per product, last 100
//! trades newest first) and updates (one frame per product per 250 ms tick, or one frame for
//! all products with `multi_product_frames`), `candles`
//! (5-minute, re-sent every second), `heartbeats` (every second), error frames; one
//! `sequence_num` counter across all channels. Enforces the 5-second subscribe deadline and
//! the per-address limits, and applies armed faults.

mod faults;
mod subscribe;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::response::Response;
use chrono::Utc;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, MissedTickBehavior};

use self::faults::{Injection, PendingFault};
use crate::format::{self, WireTrade};
use crate::market::Tick;
use crate::state::SimState;
use spot_canvas_model::Trade;

/// Time a client has to send its first subscribe.
pub const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(5);
/// Close code for policy violations (deadline, rate limits).
const POLICY_VIOLATION: u16 = 1008;

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
    /// Heartbeats are not sent until then (`Some(None)`: for good).
    heartbeats_muted_until: Option<Option<Instant>>,
    duplicate_next: bool,
    /// Trades to add to the next update frame.
    inject: Vec<Injection>,
    /// Products whose subscribes are refused (`refuse_subscribe` faults).
    refused: BTreeSet<String>,
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
            heartbeats_muted_until: None,
            duplicate_next: false,
            inject: Vec::new(),
            refused: BTreeSet::new(),
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

    async fn on_tick(&mut self, tick: &Tick) -> Result<(), End> {
        let Some(products) = self.subscriptions.get("market_trades") else {
            return Ok(());
        };
        let batches: Vec<&(String, Vec<Trade>)> = tick
            .batches
            .iter()
            .filter(|(p, _)| products.contains(p))
            .collect();
        // Per frame: its trades, and which batches it holds (for the send tap).
        let mut frames: Vec<(Vec<WireTrade>, std::ops::Range<usize>)> = batches
            .iter()
            .enumerate()
            .map(|(i, (_, trades))| (trades.iter().map(WireTrade::of).collect(), i..i + 1))
            .collect();
        if self.sim.multi_product_frames() && frames.len() > 1 {
            let (trades, _): (Vec<_>, Vec<_>) = frames.into_iter().unzip();
            frames = vec![(trades.concat(), 0..batches.len())];
        }
        for (mut trades, held) in frames {
            // Faults due now may add trades to this very frame.
            self.apply_due_faults().await?;
            self.inject_into(&mut trades);
            if let Some(tap) = &self.sim.send_tap {
                let sent = std::time::Instant::now();
                for (product, batch) in &batches[held] {
                    if let Some(newest) = batch.iter().map(|t| t.trade_id.0).max() {
                        tap.record(product, newest, sent);
                    }
                }
            }
            self.send(|seq| format::market_trades_wire(Utc::now(), seq, false, &trades))
                .await?;
            if std::mem::take(&mut self.duplicate_next) {
                self.send(|seq| format::market_trades_wire(Utc::now(), seq, false, &trades))
                    .await?;
            }
        }
        Ok(())
    }

    async fn on_second(&mut self) -> Result<(), End> {
        // Faults due now may mute this very heartbeat.
        self.apply_due_faults().await?;
        let muted = match self.heartbeats_muted_until {
            Some(Some(until)) if Instant::now() >= until => {
                self.heartbeats_muted_until = None;
                false
            }
            Some(_) => true,
            None => false,
        };
        if self.subscriptions.contains_key("heartbeats") && !muted {
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
}
