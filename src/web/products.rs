//! `GET /api/v1/products`: every product in `trading_pairs`, with its shard, whether this
//! instance ingests it and whether live data flows.
//!
//! In: the products table as the product catalog caches it (read through the API pool at
//! most every 30 s, or once a second while reads fail: not one query per request), the feed's
//! connections and the live state's activity. Out: JSON sorted by id; 503 when the database
//! cannot answer and no earlier list is at hand. The whole answer is computed at most once a
//! second and shared, so the live state (whose lock the ingest path takes) is walked at most
//! once a second whatever the request rate. Query parameters are ignored.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;

use super::AppState;
use super::catalog::carried;
use super::error::read;
use crate::feed::shard::instance_for;

/// Longest wait for the database: then 503.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// A product whose newest live update arrived within this long counts as live.
pub const LIVE_WITHIN: Duration = Duration::from_secs(300);

/// One product as the API returns it.
#[derive(Debug, Serialize, PartialEq)]
pub struct ApiProduct {
    pub id: String,
    pub base: String,
    pub quote: String,
    /// Coinbase's status: `online`, `delisted`, …
    pub status: String,
    pub trading_disabled: bool,
    /// Exact decimal string; `null` when Coinbase did not say.
    pub price_increment: Option<Decimal>,
    /// The instance (0-based, of `SHARD_COUNT`) whose feed the product belongs to.
    pub shard: u32,
    /// A feed connection of this instance carries the product now.
    pub ingested: bool,
    /// The live state received an update of the product within the last 5 minutes.
    pub live: bool,
    /// When the newest live update of the product arrived (`null`: none since start).
    pub last_update: Option<DateTime<Utc>>,
}

/// `GET /api/v1/products`, at most a second old.
pub async fn products(State(state): State<AppState>) -> Response {
    let shared = state.answers.products.clone();
    shared.get(0, || compute(state)).await
}

/// The answer now.
async fn compute(state: AppState) -> (StatusCode, serde_json::Value) {
    let listing = match read("the products list", QUERY_TIMEOUT, state.products.listing()).await {
        Ok(listing) => listing,
        Err(_) => return unavailable(),
    };
    let ingested = carried(&state.reports.feed);
    let activity: HashMap<crate::model::ProductId, DateTime<Utc>> = state.live.product_activity();
    let live_since = Utc::now()
        - chrono::TimeDelta::from_std(LIVE_WITHIN).unwrap_or(chrono::TimeDelta::minutes(5));
    let products: Vec<ApiProduct> = listing
        .rows
        .iter()
        .map(|p| {
            let last_update = activity.get(&p.product_id).copied();
            ApiProduct {
                shard: instance_for(&p.product_id, state.instance.shard_count),
                ingested: ingested.contains(&p.product_id),
                live: last_update.is_some_and(|t| t >= live_since),
                last_update,
                id: p.product_id.to_string(),
                base: p.base.to_string(),
                quote: p.quote.to_string(),
                status: p.status.clone(),
                trading_disabled: p.trading_disabled,
                price_increment: p.price_increment,
            }
        })
        .collect();
    (
        StatusCode::OK,
        json!({
            "shard_index": state.instance.shard_index,
            "shard_count": state.instance.shard_count,
            "products": products,
        }),
    )
}

fn unavailable() -> (StatusCode, serde_json::Value) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": "the product list is not available, try again" }),
    )
}
