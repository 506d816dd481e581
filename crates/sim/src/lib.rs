//! The exchange simulator, `spot-canvas sim`: a Coinbase-compatible market-data server for
//! demos, tests and load, since Coinbase itself is not reachable everywhere.
//!
//! In: its [`SimConfig`]. Out: one HTTP port that serves the market-data WebSocket at `/`
//! (as `wss://advanced-trade-ws.coinbase.com`), the public REST API under
//! `/api/v3/brokerage` (as `https://api.coinbase.com/api/v3/brokerage`), and a control API
//! under `/sim` (faults of the WebSocket and of the products list among them). Point
//! `COINBASE_WS_URL` at `ws://ADDR` and `COINBASE_REST_URL` at `http://ADDR/api/v3/brokerage`.
//!
//! Its own crate of the workspace, `spot-canvas-sim`, depending on `spot-canvas-model` and
//! registry crates only: the compiler keeps it from importing the service. What stops it comes
//! from its caller ([`run`] takes the stop future; [`Simulator::stop`] for tests).

mod admin;
pub mod faults;
pub mod format;
pub mod jwt;
pub mod limits;
pub mod market;
pub mod products_faults;
mod rest;
pub mod tap;
mod ws;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post, put};
use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::faults::{FaultBoard, FaultRequest, InjectedLog};
use self::jwt::JwtVerifier;
use self::limits::RateLimits;
use self::market::{Exchange, MarketSpec};
use self::products_faults::{ProductsFault, ProductsFaults};
use self::tap::SendTap;

pub use self::rest::{MAX_CANDLES_PER_ANSWER, MAX_WINDOW_BUCKETS};
pub use self::ws::SUBSCRIBE_DEADLINE;

/// How the simulator runs.
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:8765")]
    pub listen: SocketAddr,
    /// Number of products (well-known ones first, then SIMnnn-USD).
    #[arg(long, default_value_t = 10, conflicts_with = "product_list")]
    pub products: usize,
    /// Explicit product ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub product_list: Option<Vec<String>>,
    /// Trades per second per product (average).
    #[arg(long, default_value_t = 2.0, value_parser = parse_rate)]
    pub trades_per_second: f64,
    /// Seed of the random walk, for deterministic runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Minutes of trade history generated before start (for REST backfill).
    #[arg(long, default_value_t = 120)]
    pub history_minutes: u32,
    /// Write every trade to this JSON-lines file.
    #[arg(long)]
    pub trade_log: Option<PathBuf>,
    /// Arm a fault at start (JSON, as POST /sim/faults takes); repeatable.
    #[arg(long = "fault", value_parser = parse_fault)]
    pub faults: Vec<FaultRequest>,
    /// Arm a products list fault at start (JSON, as POST /sim/products-faults takes, e.g.
    /// `{"kind":"odd_ids"}` or `{"kind":"huge"}`); repeatable.
    #[arg(long = "products-fault", value_parser = parse_products_fault)]
    pub products_faults: Vec<ProductsFault>,
    /// Answer subscribes that carry a JWT with `authentication failure`.
    #[arg(long)]
    pub reject_jwt: bool,
    /// Verify the `jwt` of subscribes with this public key (PEM `BEGIN PUBLIC KEY`, P-256 or
    /// Ed25519, or base64 of a raw Ed25519 key); tokens that fail are answered with
    /// `authentication failure`. Needs `--jwt-key-name`.
    #[arg(long, env = "SIM_JWT_PUBLIC_KEY", requires = "jwt_key_name")]
    pub jwt_public_key: Option<String>,
    /// The CDP key name tokens must carry (`kid` and `sub`).
    #[arg(long, env = "SIM_JWT_KEY_NAME")]
    pub jwt_key_name: Option<String>,
    /// Send the trades of all subscribed products of a tick in one `market_trades` frame, as
    /// Coinbase may, instead of one frame per product (also `POST /sim/options`).
    #[arg(long)]
    pub multi_product_frames: bool,
    /// Records the send instant of every `market_trades` update frame (benchmarks only).
    #[arg(skip)]
    pub send_tap: Option<SendTap>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            products: 10,
            product_list: None,
            trades_per_second: 2.0,
            seed: 1,
            history_minutes: 120,
            trade_log: None,
            faults: Vec::new(),
            products_faults: Vec::new(),
            reject_jwt: false,
            jwt_public_key: None,
            jwt_key_name: None,
            multi_product_frames: false,
            send_tap: None,
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if market::valid_rate(rate) {
        Ok(rate)
    } else {
        Err(format!(
            "must be from 0 to {}",
            market::MAX_TRADES_PER_SECOND
        ))
    }
}

fn parse_fault(s: &str) -> Result<FaultRequest, String> {
    serde_json::from_str(s).map_err(|e| format!("not a fault: {e}"))
}

fn parse_products_fault(s: &str) -> Result<ProductsFault, String> {
    serde_json::from_str(s).map_err(|e| format!("not a products list fault: {e}"))
}

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
    fn snapshot(&self) -> Value {
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
    jwt: Option<JwtVerifier>,
    multi_product_frames: AtomicBool,
    connections: Mutex<BTreeMap<u64, ConnectionInfo>>,
    next_connection: AtomicU64,
    reject_jwt: AtomicBool,
    /// Milliseconds added to the server time `GET /time` answers (a drifting exchange clock,
    /// as seen from a client whose clock is off).
    clock_offset_ms: std::sync::atomic::AtomicI64,
    /// Cancelled when the simulator stops; connections close with 1001.
    cancel: CancellationToken,
    /// Where update frames are recorded as they leave, when configured.
    send_tap: Option<SendTap>,
}

impl SimState {
    /// The server time `GET /time` answers.
    pub fn server_time(&self) -> chrono::DateTime<Utc> {
        let offset = self.clock_offset_ms.load(Ordering::Relaxed);
        Utc::now() + chrono::Duration::milliseconds(offset)
    }

    pub fn set_clock_offset_ms(&self, offset_ms: i64) {
        self.clock_offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    fn register_connection(&self, peer: SocketAddr) -> u64 {
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

    fn update_connection(&self, id: u64, subscriptions: &BTreeMap<String, BTreeSet<String>>) {
        if let Some(info) = self.lock_connections().get_mut(&id) {
            info.subscriptions = subscriptions.clone();
        }
    }

    fn unregister_connection(&self, id: u64) {
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
                        "opened": format::go_time(c.opened),
                        "subscriptions": c.subscriptions,
                    })
                })
                .collect(),
        )
    }

    fn reject_jwt(&self) -> bool {
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

/// A running simulator.
#[derive(Debug)]
pub struct Simulator {
    pub addr: SocketAddr,
    pub state: Arc<SimState>,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    generator: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Builds the markets (with their history), binds the port and starts serving.
    pub async fn start(config: SimConfig) -> anyhow::Result<Simulator> {
        let product_ids = config
            .product_list
            .clone()
            .unwrap_or_else(|| MarketSpec::product_ids(config.products));
        let now = Utc::now();
        let exchange = Arc::new(Exchange::new(
            &product_ids,
            config.trades_per_second,
            config.seed,
            TimeDelta::minutes(i64::from(config.history_minutes)),
            now,
            config.trade_log.as_deref(),
        )?);
        let jwt = match (&config.jwt_public_key, &config.jwt_key_name) {
            (Some(key), Some(name)) => Some(JwtVerifier::new(name, key)?),
            (Some(_), None) => anyhow::bail!("--jwt-public-key needs --jwt-key-name"),
            (None, _) => None,
        };
        let cancel = CancellationToken::new();
        let state = Arc::new(SimState {
            exchange: exchange.clone(),
            limits: RateLimits::default(),
            faults: FaultBoard::default(),
            products_faults: ProductsFaults::default(),
            stats: SimStats::default(),
            injected: InjectedLog::default(),
            jwt,
            multi_product_frames: AtomicBool::new(config.multi_product_frames),
            connections: Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(0),
            reject_jwt: AtomicBool::new(config.reject_jwt),
            clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
            cancel: cancel.clone(),
            send_tap: config.send_tap.clone(),
        });
        for fault in config.faults {
            state.faults.arm(fault);
        }
        for fault in config.products_faults {
            state.products_faults.arm(fault);
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        let app = router(state.clone());
        let server = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await
            }
        });
        let generator = tokio::spawn(generate(exchange, now, cancel.clone()));
        tracing::info!(%addr, products = product_ids.len(), "exchange simulator listening");
        Ok(Simulator {
            addr,
            state,
            cancel,
            server,
            generator,
        })
    }

    /// `ws://ADDR`, for `COINBASE_WS_URL`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `http://ADDR/api/v3/brokerage`, for `COINBASE_REST_URL`.
    pub fn rest_url(&self) -> String {
        format!("http://{}/api/v3/brokerage", self.addr)
    }

    /// Arms a fault.
    pub fn arm(&self, fault: FaultRequest) -> u64 {
        self.state.faults.arm(fault)
    }

    /// Stops serving: connections close with 1001, as in a Coinbase restart.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _server = self.server.await;
        let _generator = self.generator.await;
    }
}

fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/", get(ws::upgrade))
        .route("/api/v3/brokerage/market/products", get(rest::products))
        .route("/api/v3/brokerage/market/products/{id}", get(rest::product))
        .route(
            "/api/v3/brokerage/market/products/{id}/candles",
            get(rest::candles),
        )
        .route("/api/v3/brokerage/time", get(rest::time))
        .route("/sim/stats", get(admin::stats))
        .route("/sim/connections", get(admin::connections))
        .route("/sim/faults", post(admin::arm_fault))
        .route(
            "/sim/products-faults",
            get(admin::products_faults)
                .post(admin::arm_products_fault)
                .delete(admin::clear_products_faults),
        )
        .route("/sim/injected-trades", get(admin::injected_trades))
        .route("/sim/options", post(admin::set_options))
        .route("/sim/products", post(admin::add_product))
        .route("/sim/products/{id}/listing", put(admin::set_listing))
        .route("/sim/late-trades", post(admin::late_trades))
        .route("/sim/pause", post(admin::pause))
        .route("/sim/clock", post(admin::set_clock))
        .with_state(state)
}

/// The longest span one tick trades for: a tick held up longer (a stalled machine, the wall
/// clock stepped forward) trades for this much, as if the market had been quiet before, rather
/// than for the whole span at once (at the highest rates, millions of trades).
const MAX_TICK_SPAN: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// Ticks the exchange every 250 ms (Coinbase batches `market_trades` over 250 ms).
async fn generate(
    exchange: Arc<Exchange>,
    start: chrono::DateTime<Utc>,
    cancel: CancellationToken,
) {
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut from = start;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => {
                let to = Utc::now();
                if to > from {
                    exchange.tick(from.max(to - MAX_TICK_SPAN), to);
                    from = to;
                }
            }
        }
    }
}

/// `spot-canvas sim`: runs until `stop` resolves (the caller passes its SIGINT or SIGTERM).
pub async fn run(config: SimConfig, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let sim = Simulator::start(config).await?;
    // Scripts read this line to learn the address.
    println!("sim listening on {}", sim.addr);
    println!("COINBASE_WS_URL={}", sim.ws_url());
    println!("COINBASE_REST_URL={}", sim.rest_url());
    stop.await;
    sim.stop().await;
    Ok(())
}
