//! The simulator's public REST endpoints, as Coinbase's: the products list (with online,
//! delisted, trading-disabled, future and `-USDC` alias entries), one product, product
//! candles in every REST granularity from the simulator's own trades, and server time. The
//! products list carries the armed [`products_faults`] (odd ids, a duplicate, control
//! characters, or a huge or endless body instead).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::market::{Listing, MarketSpec};
use crate::products_faults::{self, ProductsFault};
use crate::state::SimState;

/// Most buckets one candles answer holds (newest first).
pub const MAX_CANDLES_PER_ANSWER: usize = 300;
/// Windows of this many buckets or more are refused, as Coinbase does.
pub const MAX_WINDOW_BUCKETS: i64 = 350;

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": code, "error_details": message, "message": message })),
    )
        .into_response()
}

fn product_json(spec: &MarketSpec, listing: &Listing, price: &str, alias: &str) -> Value {
    let id = if alias.is_empty() {
        spec.product_id.clone()
    } else {
        format!("{}-USDC", spec.base)
    };
    let quote = if alias.is_empty() {
        spec.quote.as_str()
    } else {
        "USDC"
    };
    let alias_to: Vec<String> = if alias.is_empty() && spec.quote == "USD" {
        vec![format!("{}-USDC", spec.base)]
    } else {
        Vec::new()
    };
    json!({
        "product_id": id,
        "price": price,
        "price_percentage_change_24h": "0",
        "volume_24h": "0",
        "volume_percentage_change_24h": "0",
        "base_increment": format!("{}", rust_decimal::Decimal::new(1, spec.size_dp)),
        "quote_increment": format!("{}", rust_decimal::Decimal::new(1, spec.price_dp)),
        "quote_min_size": "1",
        "quote_max_size": "150000000",
        "base_min_size": format!("{}", rust_decimal::Decimal::new(1, spec.size_dp)),
        "base_max_size": "100000000000",
        "base_name": spec.base,
        "quote_name": if quote == "USD" { "US Dollar" } else { quote },
        "watched": false,
        "is_disabled": false,
        "new": false,
        "status": listing.status,
        "cancel_only": false,
        "limit_only": false,
        "post_only": false,
        "trading_disabled": listing.trading_disabled,
        "auction_mode": false,
        "product_type": "SPOT",
        "quote_currency_id": quote,
        "base_currency_id": spec.base,
        "fcm_trading_session_details": null,
        "mid_market_price": "",
        "alias": alias,
        "alias_to": alias_to,
        "base_display_symbol": spec.base,
        "quote_display_symbol": quote,
        "view_only": false,
        "price_increment": format!("{}", rust_decimal::Decimal::new(1, spec.price_dp)),
        "display_name": id,
        "product_venue": "CBE",
        "approximate_quote_24h_volume": "0",
        "new_at": "2023-01-01T00:00:00Z",
    })
}

fn all_products(sim: &SimState) -> Vec<Value> {
    let mut out = Vec::new();
    for (spec, listing, price) in sim.exchange.products() {
        let price = price.to_string();
        out.push(product_json(&spec, &listing, &price, ""));
        if spec.quote == "USD" {
            out.push(product_json(&spec, &listing, &price, &spec.product_id));
        }
    }
    // Entries the service must leave out.
    let delisted = MarketSpec::for_product("OLD-USD");
    out.push(product_json(
        &delisted,
        &Listing {
            status: "delisted".into(),
            trading_disabled: true,
        },
        "0.01",
        "",
    ));
    let halted = MarketSpec::for_product("HALT-USD");
    out.push(product_json(
        &halted,
        &Listing {
            status: "online".into(),
            trading_disabled: true,
        },
        "1.5",
        "",
    ));
    let mut future = product_json(
        &MarketSpec::for_product("BIP-20DEC30-CDE"),
        &Listing {
            status: "online".into(),
            trading_disabled: false,
        },
        "100000",
        "",
    );
    future["product_type"] = json!("FUTURE");
    future["alias_to"] = json!([]);
    out.push(future);
    out
}

/// An extra online spot product a products list fault adds: listed, never traded.
fn extra_product(id: &str) -> Value {
    let mut entry = product_json(
        &MarketSpec::for_product(id),
        &Listing {
            status: "online".into(),
            trading_disabled: false,
        },
        "1",
        "",
    );
    entry["alias_to"] = json!([]);
    entry
}

/// `GET /api/v3/brokerage/market/products` (as the armed products list faults bend it).
pub(super) async fn products(
    State(sim): State<Arc<SimState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match sim.products_faults.replacement() {
        Some(ProductsFault::Huge {
            bytes,
            content_length,
        }) => {
            let entry = extra_product("HUGE-USD");
            let (body, length) = products_faults::huge_body(
                bytes.unwrap_or(products_faults::HUGE_BYTES),
                &entry,
                sim.cancel.clone(),
            );
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if content_length {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
            }
            return response;
        }
        Some(ProductsFault::Endless { interval_ms }) => {
            let interval = Duration::from_millis(
                interval_ms
                    .unwrap_or(products_faults::ENDLESS_INTERVAL_MS)
                    .max(1),
            );
            let body = products_faults::endless_body(
                interval,
                &extra_product("ENDLESS-USD"),
                sim.cancel.clone(),
            );
            return ([(CONTENT_TYPE, "application/json")], body).into_response();
        }
        _ => {}
    }
    let mut products = all_products(&sim);
    sim.products_faults.apply(&mut products, &extra_product);
    if let Some(kind) = query.get("product_type") {
        products.retain(|p| p["product_type"] == kind.as_str());
    }
    Json(json!({
        "products": products,
        "num_products": products.len(),
        "pagination": {"prev_cursor": "", "next_cursor": "", "has_next": false, "has_prev": false}
    }))
    .into_response()
}

/// `GET /api/v3/brokerage/market/products/{id}`
pub(super) async fn product(State(sim): State<Arc<SimState>>, Path(id): Path<String>) -> Response {
    match all_products(&sim)
        .into_iter()
        .find(|p| p["product_id"] == id.as_str())
    {
        Some(p) => Json(p).into_response(),
        None => error(StatusCode::NOT_FOUND, "NOT_FOUND", "product not found"),
    }
}

/// Bucket width of a REST granularity name (singular, as Coinbase spells them).
fn granularity_seconds(name: &str) -> Option<i64> {
    Some(match name {
        "ONE_MINUTE" => 60,
        "FIVE_MINUTE" => 300,
        "FIFTEEN_MINUTE" => 900,
        "THIRTY_MINUTE" => 1_800,
        "ONE_HOUR" => 3_600,
        "TWO_HOUR" => 7_200,
        "FOUR_HOUR" => 14_400,
        "SIX_HOUR" => 21_600,
        "ONE_DAY" => 86_400,
        _ => return None,
    })
}

/// `GET /api/v3/brokerage/market/products/{id}/candles?start=&end=&granularity=&limit=`:
/// buckets whose start lies in `[start, end)`, newest first.
pub(super) async fn candles(
    State(sim): State<Arc<SimState>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", m);
    let Some(width) = query
        .get("granularity")
        .and_then(|g| granularity_seconds(g))
    else {
        return bad("granularity argument is invalid");
    };
    let (Some(start), Some(end)) = (
        query.get("start").and_then(|s| s.parse::<i64>().ok()),
        query.get("end").and_then(|s| s.parse::<i64>().ok()),
    ) else {
        return bad("start and end argument is invalid");
    };
    if end < start {
        return bad("start and end argument is invalid - end must be after start");
    }
    if (end - start) / width >= MAX_WINDOW_BUCKETS {
        return bad("number of candles requested should be less than 350");
    }
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => MAX_CANDLES_PER_ANSWER,
        Some(Ok(l)) if l > 0 => l.min(MAX_CANDLES_PER_ANSWER),
        Some(_) => return bad("limit argument is invalid"),
    };
    let Some(candles) = sim.exchange.candles(&id, width, start, end) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "product not found");
    };
    let candles: Vec<Value> = candles
        .into_iter()
        .take(limit)
        .map(|c| {
            json!({
                "start": c.start.to_string(),
                "low": c.low.to_string(),
                "high": c.high.to_string(),
                "open": c.open.to_string(),
                "close": c.close.to_string(),
                "volume": c.volume.to_string(),
            })
        })
        .collect();
    Json(json!({ "candles": candles })).into_response()
}

/// `GET /api/v3/brokerage/time` (shifted by the offset `POST /sim/clock` set).
pub(super) async fn time(State(sim): State<Arc<SimState>>) -> Response {
    let now = sim.server_time();
    Json(json!({
        "iso": crate::go_time::go_time(now),
        "epochSeconds": now.timestamp().to_string(),
        "epochMillis": now.timestamp_millis().to_string(),
    }))
    .into_response()
}
