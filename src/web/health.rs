//! `GET /health`: the feed's connections, every stage's state and counts.
//!
//! Out: 200 with `"status": "ok"` while a feed connection is up and every stage runs; 503 with
//! `"status": "degraded"` otherwise, naming the stages that ended (`"failed_stages"`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::AppState;

/// The handler.
pub async fn health(State(state): State<AppState>) -> Response {
    let feed = state.feed.report();
    let stages = state.stages.report();
    let ok = feed.connected > 0 && stages.failed.is_empty();
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "simulated": state.simulated,
        "feed_url": crate::config::redact_url(&state.ws_url),
        "failed_stages": stages.failed,
        "stages": stages.stages,
        "feed": feed,
        "engine": state.engine.report(),
        "store": {
            "table": state.table,
            "writer": state.writer.report(),
        },
        "reconcile": state.reconcile.report(),
        "bus": {
            "publisher": state.publisher.report(),
            "live": state.live.report(),
        },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
