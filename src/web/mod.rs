//! HTTP: the router and its handlers, one file per concern.
//!
//! In: the [`AppState`] the service hands over (stage reports, live state, repository). Out:
//! an axum [`Router`] serving `GET /health` and `GET /api/v1/candles`.

pub mod candles;
pub mod health;
pub mod serve;
pub mod stream;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::bus::{LiveState, PublisherStats};
use crate::candles::EngineStats;
use crate::feed::FeedHealth;
use crate::reconcile::ReconcileStats;
use crate::store::{Repository, TableKind, WriterStats};
use crate::supervise::Stages;

/// State the HTTP handlers read.
#[derive(Debug, Clone)]
pub struct AppState {
    pub feed: Arc<FeedHealth>,
    pub engine: Arc<EngineStats>,
    pub writer: Arc<WriterStats>,
    pub publisher: Arc<PublisherStats>,
    pub reconcile: Arc<ReconcileStats>,
    pub live: LiveState,
    pub table: Option<TableKind>,
    /// Reads for the API (its own small pool, so API reads cannot starve the writer).
    pub repository: Repository,
    /// Which stages run, and which ended before the stop signal.
    pub stages: Arc<Stages>,
    /// The feed is the exchange simulator, not Coinbase.
    pub simulated: bool,
    pub ws_url: String,
    /// The SSE streams' limits, caps and stop.
    pub streams: stream::Streams,
}

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/api/v1/candles", get(candles::candles))
        .route("/stream", get(stream::stream))
        .route("/api/v1/stream", get(stream::stream))
        .with_state(state)
}
