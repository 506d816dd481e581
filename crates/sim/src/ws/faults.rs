//! How a connection applies the faults armed for it: closing, dropping, stalling, bending the
//! sequence, sending a malformed (unsequenced or sequenced) or oversized frame, repeating an update, refusing a
//! product's subscribes, and adding malformed, absurd, future or unlisted products' trades to an
//! update frame.
//!
//! In: the fault board and the frames about to be sent. Out: changed frames and connection
//! state; every added trade is recorded in the simulator's [`InjectedLog`].
//!
//! [`InjectedLog`]: crate::faults::InjectedLog

use std::time::Duration;

use tokio::time::Instant;

use super::{Connection, End};
use crate::faults::{
    ABSURD_SIZE, FUTURE_TIME, FaultKind, FaultRequest, InjectedTrade, TradeDefect, UNLISTED_PRODUCT,
};
use crate::format::WireTrade;

/// A fault seen by the connection, waiting for its frame.
pub(super) struct PendingFault {
    pub(super) fire_at_frame: u64,
    pub(super) kind: FaultKind,
}

/// A trade to add to the next update frame.
#[derive(Debug, Clone)]
pub(super) enum Injection {
    Bad(TradeDefect),
    Absurd(String),
    Future(String),
    /// A trade of this product, never listed nor subscribed.
    Unlisted(String),
}

impl Connection {
    /// Fires every fault whose frame has come.
    pub(super) async fn apply_due_faults(&mut self) -> Result<(), End> {
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
                FaultKind::MuteHeartbeats { secs } => {
                    self.heartbeats_muted_until =
                        Some(secs.map(|s| Instant::now() + Duration::from_secs(s)));
                }
                FaultKind::SkipSequence { count } => self.seq += count,
                FaultKind::RewindSequence { count } => {
                    self.seq = self.seq.saturating_sub(count);
                }
                FaultKind::Malformed => {
                    self.write(r#"{"channel":"market_trades","timestamp":"2026-"#.to_owned())
                        .await?;
                }
                FaultKind::BadHeartbeat => {
                    // Not through `send`: that applies faults again.
                    let seq = self.seq;
                    self.seq += 1;
                    self.write(format!(
                        r#"{{"channel":"heartbeats","timestamp":"{}","sequence_num":{seq},"events":[{{"current_time":"","heartbeat_counter":"not-a-number"}}]}}"#,
                        crate::go_time::go_time(chrono::Utc::now())
                    ))
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
                FaultKind::BadTrade { defect } => self.inject.push(Injection::Bad(defect)),
                FaultKind::AbsurdSize { size } => self.inject.push(Injection::Absurd(
                    size.unwrap_or_else(|| ABSURD_SIZE.into()),
                )),
                FaultKind::FutureTrade { time } => self.inject.push(Injection::Future(
                    time.unwrap_or_else(|| FUTURE_TIME.into()),
                )),
                FaultKind::UnlistedTrade { product_id } => self.inject.push(Injection::Unlisted(
                    product_id.unwrap_or_else(|| UNLISTED_PRODUCT.into()),
                )),
                FaultKind::RefuseSubscribe { product_id } => {
                    self.refused.insert(product_id);
                }
            }
        }
        Ok(())
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

    /// Adds the pending injected trades to `trades` (an update frame's, newest first), each
    /// in the middle so that good trades sit on both sides, and records them.
    pub(super) fn inject_into(&mut self, trades: &mut Vec<WireTrade>) {
        if trades.is_empty() {
            return;
        }
        // Every injection copies the same good trade, never an injected one: a second
        // injection in the same frame must carry only its own defect.
        let template = trades[trades.len() / 2].clone();
        for injection in std::mem::take(&mut self.inject) {
            let at = trades.len() / 2;
            let mut t = template.clone();
            let Some(id) = self.sim.exchange.allocate_trade_id(&t.product_id) else {
                continue;
            };
            t.trade_id = id.to_string();
            let fault = match &injection {
                Injection::Bad(defect) => {
                    match defect {
                        TradeDefect::ZeroPrice => t.price = "0".into(),
                        TradeDefect::NegativeSize => t.size = format!("-{}", t.size),
                        TradeDefect::Exponent => t.price = "1e5".into(),
                        TradeDefect::UnknownSide => t.side = "HOLD".into(),
                        TradeDefect::NonNumericId => t.trade_id = format!("x{id}"),
                        TradeDefect::EmptyPrice => t.price = String::new(),
                    }
                    let name = serde_json::to_value(defect)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    format!("bad_trade:{name}")
                }
                Injection::Absurd(size) => {
                    t.size = size.clone();
                    "absurd_size".to_owned()
                }
                Injection::Future(time) => {
                    t.time = time.clone();
                    "future_trade".to_owned()
                }
                Injection::Unlisted(product) => {
                    t.product_id = product.clone();
                    "unlisted_trade".to_owned()
                }
            };
            self.sim.injected.record(InjectedTrade {
                connection: self.id,
                fault,
                product_id: t.product_id.clone(),
                trade_id: t.trade_id.clone(),
                price: t.price.clone(),
                size: t.size.clone(),
                side: t.side.clone(),
                time: t.time.clone(),
            });
            trades.insert(at, t);
        }
    }
}
