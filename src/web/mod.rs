//! HTTP: the router and its handlers, one file per concern.
//!
//! In: the [`AppState`] the service hands over (stage reports, live state, repository, NATS
//! client, known products). Out: an axum [`Router`] serving `GET /health`, `/health/live`,
//! `/health/ready`, `/metrics`, `/api/v1/candles`, `/api/v1/products`, the SSE streams `/stream`
//! and `/api/v1/stream`, and the dashboard ([`pages`]: `/`, `/markets/{product}`, their
//! streams and `/static/*`), wrapped in the hygiene layers
//! ([`layers`]). Every JSON answer carries `"schema": 1` ([`json::SCHEMA`]).

pub mod candles;
pub mod catalog;
pub mod error;
pub mod health;
pub mod json;
pub mod layers;
pub mod metrics;
pub mod pages;
pub mod products;
pub mod serve;
pub mod session;
pub mod stream;

#[cfg(test)]
mod tests;

use axum::Router;
use axum::routing::get;

use crate::live::LiveState;
use crate::ops::reports::Reports;
use crate::store::{Repository, TableKind};

pub use catalog::{Catalog, CatalogError};
pub use layers::HttpSettings;

/// The product catalog under the name the wiring knows it by.
pub type ProductDirectory = Catalog;

/// What this instance is: its role, its shard and its exchange connection.
#[derive(Debug, Clone)]
pub struct Instance {
    /// What this instance runs: readiness and the routes follow it.
    pub role: crate::config::Role,
    /// This instance's shard, `0 ≤ shard_index < shard_count`.
    pub shard_index: u32,
    pub shard_count: u32,
    /// The feed is the exchange simulator, not Coinbase.
    pub simulated: bool,
    pub ws_url: String,
    /// How `live_candles` is stored (`None`: not known here).
    pub table: Option<TableKind>,
}

impl Default for Instance {
    /// Both roles, shard 0 of 1, on the simulator.
    fn default() -> Self {
        Instance {
            role: crate::config::Role::Both,
            shard_index: 0,
            shard_count: 1,
            simulated: true,
            ws_url: "ws://127.0.0.1:1".to_owned(),
            table: None,
        }
    }
}

/// The Prometheus exporter and where `/metrics` is served.
#[derive(Debug, Clone, Default)]
pub struct Exporter {
    /// `None`: `/metrics` answers 503 (another recorder came first).
    pub handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// `/metrics` has its own port (`METRICS_PORT`): not on the main router.
    pub separate: bool,
}

/// Answers computed at most once a second and shared by the requests meanwhile.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    /// `/health`'s.
    pub health: health::SharedAnswer,
    /// `/api/v1/products`'s.
    pub products: health::SharedAnswer,
}

/// State the HTTP handlers read: the stages' reports, and the web layer's own state.
#[derive(Debug, Clone)]
pub struct AppState {
    /// What the stages publish (read only here).
    pub reports: Reports,
    pub instance: Instance,
    /// The live view this instance's streams and pages read.
    pub live: LiveState,
    /// Reads for the API (its own small pool, so API reads cannot starve the writer).
    pub repository: Repository,
    /// The product catalog: `trading_pairs`, cached (reads through `repository`).
    pub products: Catalog,
    /// The service's NATS client, for the readiness check (`None`: not checked).
    pub nats: Option<async_nats::Client>,
    /// CORS origins and the request timeout.
    pub http: HttpSettings,
    /// The SSE streams' limits, caps and stop.
    pub streams: stream::Streams,
    /// The dashboard's assets and development reload.
    pub pages: pages::Pages,
    pub exporter: Exporter,
    pub answers: Answers,
}

impl AppState {
    /// State around `repository` with idle reports, no NATS client, the default instance
    /// ([`Instance::default`]) and default HTTP and stream settings: for tests of the handlers.
    pub fn idle(repository: Repository) -> AppState {
        AppState {
            reports: Reports::default(),
            instance: Instance::default(),
            live: LiveState::new(),
            products: Catalog::new(repository.clone()),
            repository,
            nats: None,
            http: HttpSettings::default(),
            streams: stream::Streams::new(crate::config::StreamConfig::default()),
            pages: pages::Pages::new(std::path::Path::new("static"), None),
            exporter: Exporter::default(),
            answers: Answers::default(),
        }
    }

    /// What readiness looks at: the feed, the role, the NATS client and the API pool.
    pub fn probe(&self) -> crate::ops::readiness::Probe {
        crate::ops::readiness::Probe {
            feed: self.reports.feed.clone(),
            role: self.instance.role,
            nats: self.nats.clone(),
            database: self.repository.clone(),
        }
    }
}

/// Every route of the service: an ingest-only instance serves health and metrics alone.
pub fn router(state: AppState) -> Router {
    // Request/response routes: each answers within the request timeout.
    let mut api = Router::new()
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready));
    if !state.exporter.separate {
        api = api.route("/metrics", get(metrics::metrics));
    }
    if !state.instance.role.serves_web() {
        let routes =
            layers::with_timeout(api.with_state(state.clone()), state.http.request_timeout);
        return layers::wrap(routes, &state.http);
    }
    api = api
        .route("/api/v1/candles", get(candles::candles))
        .route("/api/v1/products", get(products::products))
        .route("/", get(pages::board_page))
        .route("/markets/{product}", get(pages::market_page));
    let api = api.with_state(state.clone());
    // The streams last: outside the timeout, inside the hygiene layers (CORS, headers,
    // tracing; compression skips `text/event-stream`).
    let streams = Router::new()
        .route("/stream", get(stream::stream))
        .route("/api/v1/stream", get(stream::stream))
        .route("/board/stream", get(pages::board_stream))
        .route("/markets/{product}/stream", get(pages::chart_stream))
        .with_state(state.clone());
    let routes = layers::with_timeout(api, state.http.request_timeout)
        .merge(streams)
        .merge(state.pages.assets.router());
    layers::wrap(routes, &state.http)
}

/// The router of `METRICS_PORT`: `/metrics` alone.
pub fn metrics_router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/metrics", get(metrics::metrics))
        .with_state(state.clone());
    layers::wrap(
        layers::with_timeout(routes, state.http.request_timeout),
        &state.http,
    )
}
