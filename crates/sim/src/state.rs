//! What the simulator's handlers share: the markets, the limits, the armed faults, the
//! statistics tests read, the open connections, and the switches the control API turns.
//!
//! In: the handlers' updates (a connection opened, a limit hit, an option set). Out: the
//! answers of `/sim/stats`, `/sim/connections` and `GET /time`, and the switches' state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::faults::{FaultBoard, InjectedLog};
use crate::go_time;
use crate::jwt::JwtVerifier;
use crate::limits::RateLimits;
use crate::market::Exchange;
use crate::products_faults::ProductsFaults;
use crate::tap::SendTap;

/// A counter in the simulator's statistics.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the simulator has seen, for tests: limit hits among them.
#[derive(Debug, Default)]
pub struct SimStats {
    pub connections_total: Counter,
    pub connect_limit_hits: Counter,
    pub message_limit_hits: Counter,
    pub subscribe_timeouts: Counter,
    pub unknown_product_errors: Counter,
    pub unknown_channel_errors: Counter,
    pub faults_fired: Counter,
    pub frames_sent: Counter,
    /// Subscribes refused because a `refuse_subscribe` fault names one of their products.
    pub refused_subscribes: Counter,
    /// Tokens that passed, and failed, the check of `--jwt-public-key`.
    pub jwt_accepted: Counter,
    pub jwt_rejected: Counter,
    /// Close frames received from clients (a polite client sends one before leaving).
    pub client_close_frames: Counter,
}

impl SimStats {
    pub(crate) fn snapshot(&self) -> Value {
        json!({
            "connections_total": self.connections_total.get(),
            "connect_limit_hits": self.connect_limit_hits.get(),
            "message_limit_hits": self.message_limit_hits.get(),
            "subscribe_timeouts": self.subscribe_timeouts.get(),
            "unknown_product_errors": self.unknown_product_errors.get(),
            "unknown_channel_errors": self.unknown_channel_errors.get(),
            "faults_fired": self.faults_fired.get(),
            "frames_sent": self.frames_sent.get(),
            "refused_subscribes": self.refused_subscribes.get(),
            "jwt_accepted": self.jwt_accepted.get(),
            "jwt_rejected": self.jwt_rejected.get(),
            "client_close_frames": self.client_close_frames.get(),
        })
    }
}

#[derive(Debug, Clone)]
struct ConnectionInfo {
    peer: SocketAddr,
    opened: chrono::DateTime<Utc>,
    subscriptions: BTreeMap<String, BTreeSet<String>>,
}

/// State shared by the simulator's handlers.
#[derive(Debug)]
pub struct SimState {
    pub exchange: Arc<Exchange>,
    pub limits: RateLimits,
    pub faults: FaultBoard,
    /// Faults of the REST products list.
    pub products_faults: ProductsFaults,
    pub stats: SimStats,
    /// Trades faults added to frames (not in the trade log).
    pub injected: InjectedLog,
    /// Checks subscribe tokens when a public key was given.
    pub(crate) jwt: Option<JwtVerifier>,
    multi_product_frames: AtomicBool,
    connections: Mutex<BTreeMap<u64, ConnectionInfo>>,
    next_connection: AtomicU64,
    reject_jwt: AtomicBool,
    /// Milliseconds added to the server time `GET /time` answers (a drifting exchange clock,
    /// as seen from a client whose clock is off).
    clock_offset_ms: std::sync::atomic::AtomicI64,
    /// Cancelled when the simulator stops; connections close with 1001.
    pub(crate) cancel: CancellationToken,
    /// Where update frames are recorded as they leave, when configured.
    pub(crate) send_tap: Option<SendTap>,
}

impl SimState {
    /// The state of a simulator starting on `exchange`: no faults armed, no connection, no
    /// clock offset; the switches as configured.
    pub(crate) fn new(
        exchange: Arc<Exchange>,
        jwt: Option<JwtVerifier>,
        multi_product_frames: bool,
        reject_jwt: bool,
        cancel: CancellationToken,
        send_tap: Option<SendTap>,
    ) -> SimState {
        SimState {
            exchange,
            limits: RateLimits::default(),
            faults: FaultBoard::default(),
            products_faults: ProductsFaults::default(),
            stats: SimStats::default(),
            injected: InjectedLog::default(),
            jwt,
            multi_product_frames: AtomicBool::new(multi_product_frames),
            connections: Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(0),
            reject_jwt: AtomicBool::new(reject_jwt),
            clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
            cancel,
            send_tap,
        }
    }

    /// The server time `GET /time` answers.
    pub fn server_time(&self) -> chrono::DateTime<Utc> {
        let offset = self.clock_offset_ms.load(Ordering::Relaxed);
        Utc::now() + chrono::Duration::milliseconds(offset)
    }

    pub fn set_clock_offset_ms(&self, offset_ms: i64) {
        self.clock_offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    pub(crate) fn register_connection(&self, peer: SocketAddr) -> u64 {
        self.stats.connections_total.inc();
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock_connections().insert(
            id,
            ConnectionInfo {
                peer,
                opened: Utc::now(),
                subscriptions: BTreeMap::new(),
            },
        );
        id
    }

    pub(crate) fn update_connection(
        &self,
        id: u64,
        subscriptions: &BTreeMap<String, BTreeSet<String>>,
    ) {
        if let Some(info) = self.lock_connections().get_mut(&id) {
            info.subscriptions = subscriptions.clone();
        }
    }

    pub(crate) fn unregister_connection(&self, id: u64) {
        self.lock_connections().remove(&id);
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ConnectionInfo>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open connections: id, peer, opened, subscriptions (channel → products).
    pub fn connections(&self) -> Value {
        let connections = self.lock_connections();
        Value::Array(
            connections
                .iter()
                .map(|(id, c)| {
                    json!({
                        "id": id,
                        "peer": c.peer.to_string(),
                        "opened": go_time::go_time(c.opened),
                        "subscriptions": c.subscriptions,
                    })
                })
                .collect(),
        )
    }

    pub(crate) fn reject_jwt(&self) -> bool {
        self.reject_jwt.load(Ordering::Relaxed)
    }

    /// Whether a tick's trades of several products go out in one frame.
    pub fn multi_product_frames(&self) -> bool {
        self.multi_product_frames.load(Ordering::Relaxed)
    }

    pub fn set_multi_product_frames(&self, on: bool) {
        self.multi_product_frames.store(on, Ordering::Relaxed);
    }
}
