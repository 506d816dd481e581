//! The JSON history API: `GET /api/v1/candles`.
//!
//! In: `product`, `granularity` (any accepted spelling), optional `limit` (1–1000, default
//! 300) and `end` (Unix seconds, exclusive; default: now and later). Out: the newest `limit`
//! stored candles before `end`, oldest first, decimals as exact strings; 400 with a message
//! naming the bad parameter, 503 when the database cannot answer (within [`QUERY_TIMEOUT`]).
//! Reads go through the API's own small pool (`AppState::repository`), never the writer's.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;

use super::AppState;
use crate::model::Granularity;

/// Most candles one request returns.
pub const MAX_LIMIT: u32 = 1_000;
/// Candles returned when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 300;
/// Longest wait for the database (a server that stopped answering): then 503.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// One candle as the API returns it.
#[derive(Debug, Serialize)]
pub struct ApiCandle {
    /// Bucket start, Unix seconds.
    pub timestamp: i64,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    /// `null` when unknown (the candle comes at least partly from Coinbase's REST candles).
    pub trade_count: Option<u64>,
    pub buy_volume: Option<Decimal>,
    pub complete: bool,
    pub backfilled: bool,
}

/// A request's parameters, validated.
#[derive(Debug, PartialEq)]
pub struct HistoryQuery {
    pub product: String,
    pub granularity: Granularity,
    pub limit: u32,
    pub end: Option<DateTime<Utc>>,
}

/// Validates the query string; the error names the parameter and what it accepts.
pub fn parse_query(query: &HashMap<String, String>) -> Result<HistoryQuery, String> {
    let product = query
        .get("product")
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .ok_or("missing product, e.g. product=BTC-USD")?;
    if product.len() > 64
        || !product
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(format!(
            "invalid product {product:?}: letters, digits and '-' only"
        ));
    }
    let granularity = query
        .get("granularity")
        .ok_or("missing granularity, e.g. granularity=ONE_MINUTE")?
        .parse::<Granularity>()
        .map_err(|e| e.to_string())?;
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(format!("invalid limit {raw:?}: an integer 1-{MAX_LIMIT}")),
        },
    };
    let end = match query.get("end") {
        None => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .ok()
                .and_then(|s| DateTime::from_timestamp(s, 0))
                .ok_or_else(|| format!("invalid end {raw:?}: Unix seconds"))?,
        ),
    };
    Ok(HistoryQuery {
        product,
        granularity,
        limit,
        end,
    })
}

/// `GET /api/v1/candles`.
pub async fn candles(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let q = match parse_query(&query) {
        Ok(q) => q,
        Err(message) => {
            return (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response();
        }
    };
    // Buckets start at most one bucket before now; a day of slack covers clock skew.
    let end = q
        .end
        .unwrap_or_else(|| Utc::now() + chrono::TimeDelta::days(1));
    let query = state.repository.candles(
        &q.product,
        q.granularity,
        DateTime::UNIX_EPOCH,
        end,
        q.limit,
    );
    let rows = match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(rows) => rows.map_err(|e| e.to_string()),
        Err(_elapsed) => Err(format!("no answer within {QUERY_TIMEOUT:?}")),
    };
    match rows {
        Ok(rows) => {
            let candles: Vec<ApiCandle> = rows
                .into_iter()
                .map(|s| ApiCandle {
                    timestamp: s.candle.start.timestamp(),
                    open: s.candle.open,
                    high: s.candle.high,
                    low: s.candle.low,
                    close: s.candle.close,
                    volume: s.candle.volume,
                    trade_count: s.candle.trade_count,
                    buy_volume: s.candle.buy_volume,
                    complete: s.complete,
                    backfilled: s.backfilled,
                })
                .collect();
            Json(json!({
                "product": q.product,
                "granularity": q.granularity,
                "candles": candles,
            }))
            .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "history query failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "the candle store is not available, try again" })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn accepts_every_granularity_spelling_and_defaults_the_limit() {
        let spellings = [
            ("ONE_MINUTE", Granularity::OneMinute),
            ("1m", Granularity::OneMinute),
            ("FIVE_MINUTE", Granularity::FiveMinutes),
            ("FIVE_MINUTES", Granularity::FiveMinutes),
        ];
        for (g, expected) in spellings {
            let q =
                parse_query(&query(&[("product", "BTC-USD"), ("granularity", g)])).expect("valid");
            assert_eq!(q.granularity, expected, "{g}");
            assert_eq!(q.limit, DEFAULT_LIMIT);
            assert_eq!(q.end, None);
        }
    }

    #[test]
    fn limit_is_capped_and_end_is_unix_seconds() {
        let base = [("product", "BTC-USD"), ("granularity", "1h")];
        let with = |extra: (&'static str, &'static str)| {
            let mut pairs = base.to_vec();
            pairs.push(extra);
            parse_query(&query(&pairs))
        };
        assert_eq!(with(("limit", "1000")).expect("the cap").limit, MAX_LIMIT);
        assert_eq!(with(("limit", "1")).expect("the floor").limit, 1);
        for bad in ["1001", "-1", "1e3", ""] {
            let error = with(("limit", bad)).expect_err(bad);
            assert!(error.contains("invalid limit"), "{bad}: {error}");
        }
        let q = with(("end", "1790000040")).expect("valid end");
        assert_eq!(q.end, DateTime::from_timestamp(1_790_000_040, 0));
        assert_eq!(q.granularity, Granularity::OneHour);
        for bad in ["-", "1.5", "99999999999999999999"] {
            let error = with(("end", bad)).expect_err(bad);
            assert!(error.contains("invalid end"), "{bad}: {error}");
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases = [
            (query(&[("granularity", "1m")]), "missing product"),
            (query(&[("product", "BTC-USD")]), "missing granularity"),
            (
                query(&[("product", "BTC-USD"), ("granularity", "7m")]),
                "unknown granularity",
            ),
            (
                query(&[("product", "BTC USD;"), ("granularity", "1m")]),
                "invalid product",
            ),
            (
                query(&[
                    ("product", "BTC-USD"),
                    ("granularity", "1m"),
                    ("limit", "0"),
                ]),
                "invalid limit",
            ),
            (
                query(&[
                    ("product", "BTC-USD"),
                    ("granularity", "1m"),
                    ("end", "soon"),
                ]),
                "invalid end",
            ),
        ];
        for (q, expected) in cases {
            let error = parse_query(&q).expect_err(expected);
            assert!(error.contains(expected), "{error}");
        }
    }
}
