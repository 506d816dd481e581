//! The simulator's control API for tests and demos, under `/sim`: statistics (including how
//! often a client hit a limit), open connections, fault injection (of the WebSocket, and of the
//! products list under `/sim/products-faults`; and the trades faults
//! added to frames), options (multi-product frames, the trade rate), adding and delisting products, and late
//! trades.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::faults::FaultRequest;
use crate::market::Listing;
use crate::products_faults::ProductsFault;
use crate::state::SimState;

/// `GET /sim/stats`
pub(super) async fn stats(State(sim): State<Arc<SimState>>) -> Response {
    let mut stats = sim.stats.snapshot();
    stats["trades_total"] = json!(sim.exchange.trades_total());
    Json(stats).into_response()
}

/// `GET /sim/connections`
pub(super) async fn connections(State(sim): State<Arc<SimState>>) -> Response {
    Json(sim.connections()).into_response()
}

/// `POST /sim/faults` with a [`FaultRequest`].
pub(super) async fn arm_fault(
    State(sim): State<Arc<SimState>>,
    Json(request): Json<FaultRequest>,
) -> Response {
    let id = sim.faults.arm(request);
    (StatusCode::CREATED, Json(json!({ "id": id }))).into_response()
}

/// `POST /sim/products-faults` with a [`ProductsFault`]: armed until cleared. Answers how many
/// are armed.
pub(super) async fn arm_products_fault(
    State(sim): State<Arc<SimState>>,
    Json(fault): Json<ProductsFault>,
) -> Response {
    let armed = sim.products_faults.arm(fault);
    (StatusCode::CREATED, Json(json!({ "armed": armed }))).into_response()
}

/// `GET /sim/products-faults`: the products list faults armed now.
pub(super) async fn products_faults(State(sim): State<Arc<SimState>>) -> Response {
    Json(sim.products_faults.all()).into_response()
}

/// `DELETE /sim/products-faults`: the products list is normal again.
pub(super) async fn clear_products_faults(State(sim): State<Arc<SimState>>) -> Response {
    sim.products_faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /sim/injected-trades`: every trade a fault added to a frame (not in the trade log).
pub(super) async fn injected_trades(State(sim): State<Arc<SimState>>) -> Response {
    Json(sim.injected.all()).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct Options {
    #[serde(default)]
    multi_product_frames: Option<bool>,
    #[serde(default)]
    trades_per_second: Option<f64>,
}

/// `POST /sim/options` with `{"multi_product_frames": true|false}` (one `market_trades` frame
/// per tick for all subscribed products of a connection, or one per product) and/or
/// `{"trades_per_second": n}` (the average rate per product from the next tick on, 0–10000:
/// a burst or a lull). Answers the options in force; 400 for a rate out of range.
pub(super) async fn set_options(
    State(sim): State<Arc<SimState>>,
    Json(options): Json<Options>,
) -> Response {
    if let Some(rate) = options.trades_per_second
        && !sim.exchange.set_trades_per_second(rate)
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!(
                "trades_per_second must be 0-{}", super::market::MAX_TRADES_PER_SECOND
            ) })),
        )
            .into_response();
    }
    if let Some(on) = options.multi_product_frames {
        sim.set_multi_product_frames(on);
    }
    Json(json!({
        "multi_product_frames": sim.multi_product_frames(),
        "trades_per_second": sim.exchange.trades_per_second(),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct NewProduct {
    product_id: String,
    #[serde(default)]
    price: Option<f64>,
}

/// `POST /sim/products`: lists a new trading product.
pub(super) async fn add_product(
    State(sim): State<Arc<SimState>>,
    Json(new): Json<NewProduct>,
) -> Response {
    let id = new.product_id.trim().to_ascii_uppercase();
    if !id.contains('-') || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "product_id must look like BASE-QUOTE" })),
        )
            .into_response();
    }
    if sim.exchange.add_product(&id, new.price) {
        (StatusCode::CREATED, Json(json!({ "product_id": id }))).into_response()
    } else {
        (
            StatusCode::OK,
            Json(json!({ "product_id": id, "existed": true })),
        )
            .into_response()
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ListingChange {
    status: String,
    #[serde(default)]
    trading_disabled: bool,
}

/// `PUT /sim/products/{id}/listing`: delists or disables a product (it stops trading).
pub(super) async fn set_listing(
    State(sim): State<Arc<SimState>>,
    Path(id): Path<String>,
    Json(change): Json<ListingChange>,
) -> Response {
    let listing = Listing {
        status: change.status,
        trading_disabled: change.trading_disabled,
    };
    if sim.exchange.set_listing(&id, listing) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct LateTrades {
    product_id: String,
    count: u32,
}

/// `POST /sim/late-trades`: the next tick carries `count` trades of `product_id` whose time
/// lies in an earlier, already complete minute.
pub(super) async fn late_trades(
    State(sim): State<Arc<SimState>>,
    Json(late): Json<LateTrades>,
) -> Response {
    if late.count == 0 || late.count > 10_000 {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "count must be 1-10000" })),
        )
            .into_response();
    }
    if sim
        .exchange
        .inject_late_trades(&late.product_id, late.count)
    {
        StatusCode::ACCEPTED.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Pause {
    paused: bool,
}

/// `POST /sim/pause` with `{"paused": true|false}`: halts or resumes all trading.
pub(super) async fn pause(State(sim): State<Arc<SimState>>, Json(pause): Json<Pause>) -> Response {
    sim.exchange.set_paused(pause.paused);
    Json(json!({ "paused": pause.paused })).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct ClockOffset {
    offset_ms: i64,
}

/// `POST /sim/clock` with `{"offset_ms": n}`: `GET /time` answers `n` ms from now (at most a
/// day either way).
pub(super) async fn set_clock(
    State(sim): State<Arc<SimState>>,
    Json(clock): Json<ClockOffset>,
) -> Response {
    if clock.offset_ms.abs() > 86_400_000 {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "offset_ms must be within a day (±86400000)" })),
        )
            .into_response();
    }
    sim.set_clock_offset_ms(clock.offset_ms);
    Json(json!({ "offset_ms": clock.offset_ms })).into_response()
}
