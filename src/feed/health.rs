//! The feed's state for `/health` and logs: per connection, whether it is connected, its
//! products, last frame time, frame, trade, reconnect, gap, sequence-reset, malformed-frame
//! and rejected-trade counts; the products whose subscribe the exchange refused; and the
//! authentication state; the products list fetches.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::ProductId;

/// Whether subscribes are authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AuthState {
    /// No key configured: public market data needs none.
    Unauthenticated,
    /// Subscribes carry a fresh JWT.
    Authenticated { algorithm: String },
    /// The key was refused or could not be loaded: continuing unauthenticated.
    Failed { reason: String },
}

/// Where one connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    Connecting,
    Connected,
    Backoff,
    Stopped,
}

/// One connection's state and counters.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionHealth {
    pub id: usize,
    pub state: ConnectionState,
    pub connected: bool,
    pub products: Vec<ProductId>,
    pub connected_at: Option<DateTime<Utc>>,
    pub last_frame: Option<DateTime<Utc>>,
    /// When the connection's last `heartbeats` frame came (since it connected).
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub frames: u64,
    pub trades: u64,
    pub reconnects: u64,
    pub gaps: u64,
    /// Times the `sequence_num` went backwards (a new sequence, treated like a gap).
    pub sequence_resets: u64,
    /// Frames that could not be parsed at all (skipped whole).
    pub malformed: u64,
    /// Malformed trades skipped alone inside otherwise good frames.
    pub rejected_trades: u64,
    /// Malformed candles skipped alone inside otherwise good `candles` frames.
    pub rejected_candles: u64,
    /// Trades of products this connection did not subscribe, dropped.
    pub unlisted_trades: u64,
    /// `candles` of products this connection did not subscribe, dropped.
    pub unlisted_candles: u64,
    pub error_frames: u64,
    /// The backoff delays waited so far, most recent last (at most 16 kept).
    pub backoffs_ms: Vec<u64>,
    pub last_error: Option<String>,
    /// Time spent waiting for the engine to take trades (backpressure), in milliseconds.
    pub backpressure_ms: u64,
}

impl ConnectionHealth {
    fn new(id: usize, products: Vec<ProductId>) -> Self {
        ConnectionHealth {
            id,
            state: ConnectionState::Connecting,
            connected: false,
            products,
            connected_at: None,
            last_frame: None,
            last_heartbeat: None,
            frames: 0,
            trades: 0,
            reconnects: 0,
            gaps: 0,
            sequence_resets: 0,
            malformed: 0,
            rejected_trades: 0,
            unlisted_trades: 0,
            unlisted_candles: 0,
            rejected_candles: 0,
            error_frames: 0,
            backoffs_ms: Vec::new(),
            last_error: None,
            backpressure_ms: 0,
        }
    }
}

/// A product whose subscribe the exchange refused: no longer ingested until a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedProduct {
    pub product_id: ProductId,
    pub connection: usize,
    /// The exchange's error message.
    pub message: String,
    pub at: DateTime<Utc>,
}

/// Shared between the feed's tasks and the HTTP handlers.
#[derive(Debug)]
pub struct FeedHealth {
    connections: Mutex<BTreeMap<usize, ConnectionHealth>>,
    refused: Mutex<BTreeMap<ProductId, RefusedProduct>>,
    skipped: Mutex<SkippedProducts>,
    auth: Mutex<AuthState>,
    /// Products this instance's shard holds, once chosen.
    assigned: Mutex<Option<usize>>,
    /// The products list fetches (discovery and metadata).
    pub discovery: DiscoveryHealth,
}

/// What `/health` shows of the feed.
#[derive(Debug, Clone, Serialize)]
pub struct FeedReport {
    pub auth: AuthState,
    /// Products this instance's shard holds; `None` until they are chosen.
    pub assigned: Option<usize>,
    pub products: usize,
    pub connected: usize,
    /// Malformed trades skipped so far, all connections together.
    pub rejected_trades: u64,
    /// Trades of products that were not subscribed, dropped, all connections together.
    pub unlisted_trades: u64,
    /// Products of the last products list left out (an id or a field that does not parse,
    /// a product listed twice), with a few of them escaped.
    pub skipped_products: SkippedProducts,
    /// Products the exchange refused to subscribe.
    pub refused_products: Vec<RefusedProduct>,
    /// The products list fetches: counts and the last error (a list too large among them).
    pub discovery: DiscoveryReport,
    pub connections: Vec<ConnectionHealth>,
}

/// The products a products list held that were left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SkippedProducts {
    /// In the last list fetched.
    pub last_list: usize,
    /// In every list fetched since the start.
    pub total: u64,
    /// A few of the last list's, each its id (escaped and clipped) and why.
    pub examples: Vec<String>,
}

impl FeedHealth {
    /// Notes the products a fetched list left out.
    pub fn set_skipped_products(&self, count: usize, examples: Vec<String>) {
        let mut skipped = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        skipped.last_list = count;
        skipped.total = skipped.total.saturating_add(count as u64);
        skipped.examples = examples;
    }

    pub fn new(auth: AuthState) -> Self {
        FeedHealth {
            connections: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            skipped: Mutex::default(),
            auth: Mutex::new(auth),
            assigned: Mutex::new(None),
            discovery: DiscoveryHealth::default(),
        }
    }

    /// Registers a connection (or resets its product list).
    pub fn register(&self, id: usize, products: Vec<ProductId>) {
        let mut connections = self.lock();
        connections
            .entry(id)
            .and_modify(|c| c.products = products.clone())
            .or_insert_with(|| ConnectionHealth::new(id, products));
    }

    /// Applies `change` to connection `id`'s entry.
    pub fn update(&self, id: usize, change: impl FnOnce(&mut ConnectionHealth)) {
        if let Some(c) = self.lock().get_mut(&id) {
            change(c);
        }
    }

    /// When connection `id` last received a frame.
    pub fn last_frame(&self, id: usize) -> Option<DateTime<Utc>> {
        self.lock().get(&id).and_then(|c| c.last_frame)
    }

    /// Records that the exchange refused `product_id` on connection `connection`.
    pub fn refuse(
        &self,
        product_id: &ProductId,
        connection: usize,
        message: String,
        at: DateTime<Utc>,
    ) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                product_id.to_owned(),
                RefusedProduct {
                    product_id: product_id.to_owned(),
                    connection,
                    message,
                    at,
                },
            );
    }

    pub fn remove(&self, id: usize) {
        self.lock().remove(&id);
    }

    /// Records how many products this instance's shard holds.
    pub fn set_assigned(&self, products: usize) {
        *self.assigned.lock().unwrap_or_else(|e| e.into_inner()) = Some(products);
    }

    pub fn auth(&self) -> AuthState {
        self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_auth(&self, auth: AuthState) {
        *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = auth;
    }

    pub fn report(&self) -> FeedReport {
        let connections: Vec<ConnectionHealth> = self.lock().values().cloned().collect();
        let refused_products = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        FeedReport {
            auth: self.auth(),
            assigned: *self.assigned.lock().unwrap_or_else(|e| e.into_inner()),
            products: connections.iter().map(|c| c.products.len()).sum(),
            connected: connections.iter().filter(|c| c.connected).count(),
            rejected_trades: connections.iter().map(|c| c.rejected_trades).sum(),
            unlisted_trades: connections.iter().map(|c| c.unlisted_trades).sum(),
            skipped_products: self
                .skipped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            refused_products,
            discovery: self.discovery.report(),
            connections,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, ConnectionHealth>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What `/health` shows of discovery (`feed.discovery`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DiscoveryReport {
    /// Products list requests made, and those that failed.
    pub fetches: u64,
    pub failures: u64,
    /// Lists refused for being larger than the products list's cap.
    pub too_large: u64,
    /// Products in the last list read.
    pub last_products: Option<usize>,
    pub last_success: Option<chrono::DateTime<chrono::Utc>>,
    /// Why the last fetch failed, cleared by the next that succeeds.
    pub last_error: Option<String>,
}

/// Discovery's outcomes, shared with `/health`.
#[derive(Debug, Default)]
pub struct DiscoveryHealth {
    report: std::sync::Mutex<DiscoveryReport>,
}

impl DiscoveryHealth {
    pub fn report(&self) -> DiscoveryReport {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiscoveryReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fetch that read `products` products.
    pub fn record_success(&self, products: usize) {
        let mut report = self.lock();
        report.fetches += 1;
        report.last_products = Some(products);
        report.last_success = Some(chrono::Utc::now());
        report.last_error = None;
    }

    /// A fetch that failed with `error` (`too_large`: the list was over its cap).
    pub fn record_failure(&self, error: String, too_large: bool) {
        let mut report = self.lock();
        report.fetches += 1;
        report.failures += 1;
        if too_large {
            report.too_large += 1;
        }
        report.last_error = Some(error);
    }
}
