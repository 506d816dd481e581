//! `GET /stream` and `GET /api/v1/stream`: candle changes as Datastar server-sent events.
//!
//! In: the query (see `params.rs`), the client's address, `Last-Event-ID`. Out:
//! `text/event-stream` with one `datastar-patch-elements` event per candle change holding a
//! `<spot-candle>` element (see `live::element`): first the current candle of every subscribed
//! series, then the live changes, then keep-alive comments when idle. Each event has an `id:`;
//! a client that comes back with `Last-Event-ID` gets a full, consistent snapshot again (the
//! latest state of each series, then the changes after it). A client that falls behind is
//! resynced to the latest state of each series; one that stays behind is disconnected. 400 for
//! bad parameters, 429 beyond the per-address cap, 503 beyond the instance's cap or while
//! stopping.

pub mod params;

use std::sync::Arc;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;

pub use params::{StreamRequest, parse};

use super::AppState;
use super::catalog::{UNAVAILABLE, carried};
use super::error::ApiError;
use super::serve::Connection;
use super::session::{Events, KeepAlive, View};
use crate::live::LiveEntry;
use crate::model::ProductId;

pub use super::session::{Refusal, StreamGate, Streams};

/// The handler of both stream routes.
pub async fn stream(
    State(state): State<AppState>,
    connection: Option<Extension<Connection>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let streams = &state.streams;
    streams.open()?;
    let request =
        parse(query.as_deref(), streams.config.max_series).map_err(ApiError::bad_request)?;
    let connection = connection.map(|Extension(c)| c);
    let session = streams.admit(connection.as_ref(), &headers)?;
    // After the caps (a refused client costs no database read). A product is unknown when it
    // is not in `trading_pairs` (not merely outside this shard) and this instance's feed does
    // not carry it (its list reaches `trading_pairs` a moment after the feed subscribes: a
    // client of a fresh instance must not be refused what it streams).
    let unknown = state
        .products
        .unknown(&request.products)
        .await
        .map(|unknown| not_carried(&state, unknown))
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot check the stream's products");
            ApiError::unavailable(UNAVAILABLE, "5")
        })?;
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "unknown product(s): {}{}; accepted: products Coinbase lists (GET /api/v1/products)",
            unknown
                .iter()
                .take(10)
                .map(|id| id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if unknown.len() > 10 { ", …" } else { "" }
        )));
    }
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let opening = match resumed {
        // Any id, ours or not: the snapshot that follows replaces whatever the client holds.
        Some(id) if id.len() <= 32 && id.bytes().all(|b| b.is_ascii_digit()) => {
            format!("resumed after event {id}: full snapshot follows")
        }
        _ => "spot-canvas candle stream".to_owned(),
    };
    let (subscription, initial) =
        session.subscribe(&state.live, request.filter(), streams.client_settings());
    let view = Candles {
        opening,
        latency: metrics::histogram!(crate::telemetry::END_TO_END_SECONDS),
    };
    Ok(session.respond(view, initial, subscription, KeepAlive::Comment))
}

/// The candle stream's view: every change of every subscribed series, as it comes.
struct Candles {
    /// The opening comment.
    opening: String,
    /// Exchange frame received → event handed to the connection.
    latency: metrics::Histogram,
}

impl View for Candles {
    fn open(&mut self, initial: Vec<Arc<LiveEntry>>, out: &mut Events) {
        out.comment(&self.opening);
        for entry in &initial {
            out.push_rendered(entry.event().clone());
        }
    }

    fn note(&mut self, entries: &[Arc<LiveEntry>], resync: bool, out: &mut Events) {
        let now = chrono::Utc::now();
        for entry in entries {
            if !resync
                && let Some(seconds) = crate::telemetry::latency::trade_latency(&entry.update, now)
            {
                self.latency.record(seconds);
            }
            out.push_rendered(entry.event().clone());
        }
    }
}

/// The products of `ids` this instance's feed does not carry.
fn not_carried<'a>(state: &AppState, ids: Vec<&'a ProductId>) -> Vec<&'a ProductId> {
    if ids.is_empty() {
        return ids;
    }
    let carried = carried(&state.reports.feed);
    ids.into_iter()
        .filter(|id| !carried.contains(*id))
        .collect()
}
