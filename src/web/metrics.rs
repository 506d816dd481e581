//! `GET /metrics`: the Prometheus text format.
//!
//! In: the [`AppState`]'s stage reports, read into an [`ops::prometheus::Scrape`] at each
//! scrape, and the recorder's handle. Out: the rendered exposition, or 503 when this process
//! records no metrics (another recorder was installed first).
//!
//! [`ops::prometheus::Scrape`]: crate::ops::prometheus::Scrape

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::ops::prometheus::{self, Scrape};

/// The reports of `state` a scrape needs.
fn scrape(state: &AppState) -> Scrape {
    let live = state.live.report();
    let feed = state.reports.feed.report();
    Scrape {
        writer: state.reports.writer.report(),
        published: state.reports.publisher.report().live,
        resyncs: live.resyncs,
        clients_cut_off: live.clients_cut_off,
        stream_clients: state.streams.gate.open(),
        feed_connected: feed.connected,
        feed_configured: feed.connections.len(),
        match_ratios: [
            (
                "ws_5m",
                state.reports.engine.report().crosscheck_ws_5m.match_rate,
            ),
            (
                "rest_1m",
                state
                    .reports
                    .reconcile
                    .report()
                    .crosscheck_rest_1m
                    .match_rate,
            ),
        ],
        alarms: state.reports.alarms.report(),
        role: state.instance.role,
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.exporter.handle else {
        return super::json::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not recorded in this process",
        );
    };
    prometheus::collect(&scrape(&state));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
