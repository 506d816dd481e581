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
mod config;
pub mod faults;
pub mod format;
pub mod go_time;
pub mod jwt;
pub mod limits;
pub mod market;
pub mod products_faults;
mod rest;
mod state;
pub mod tap;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post, put};
use chrono::{TimeDelta, Utc};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::faults::FaultRequest;
use self::jwt::JwtVerifier;
use self::market::{Exchange, MarketSpec};

pub use self::config::SimConfig;
pub use self::rest::{MAX_CANDLES_PER_ANSWER, MAX_WINDOW_BUCKETS};
pub use self::state::{Counter, SimState, SimStats};
pub use self::ws::SUBSCRIBE_DEADLINE;

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
        let state = Arc::new(SimState::new(
            exchange.clone(),
            jwt,
            config.multi_product_frames,
            config.reject_jwt,
            cancel.clone(),
            config.send_tap.clone(),
        ));
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
