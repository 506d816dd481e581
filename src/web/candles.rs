//! The JSON history API: `GET /api/v1/candles`.
//!
//! In: `product` (one in `trading_pairs`), `granularity` (any accepted spelling), optional
//! `limit` (1–1000, default 300), `start` (Unix seconds, inclusive; default: the beginning) and
//! `end` (Unix seconds, exclusive; default: now and later). Out: the newest `limit` stored
//! candles in `[start, end)`, oldest first, decimals as exact strings, and `next` (the request
//! for the candles before these) while older ones exist in the range: following `next` until it
//! is absent walks the whole range, without gaps or repeats. 400 with a message naming the bad
//! parameter and what it accepts; 503 when the database cannot answer (within
//! [`QUERY_TIMEOUT`]). Reads go through the API's own small pool (`AppState::repository`),
//! never the writer's.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;

use super::AppState;
use super::error::{ApiError, read};
use super::json;
use crate::model::{BadProductId, Granularity, ProductId, UnknownGranularity};

/// Most candles one request returns.
pub const MAX_LIMIT: u32 = 1_000;
/// Candles returned when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 300;
/// Longest wait for the database (a server that stopped answering): then 503.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// The latest `start` or `end` accepted: 9999-12-31T23:59:59Z.
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;

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
    pub product: ProductId,
    pub granularity: Granularity,
    pub limit: u32,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
}

impl HistoryQuery {
    /// The request for the candles before `oldest` (the oldest one returned), same range start.
    pub fn next_url(&self, oldest: i64) -> String {
        let mut url = format!(
            "/api/v1/candles?product={}&granularity={}&limit={}",
            self.product,
            self.granularity.as_str(),
            self.limit
        );
        if let Some(start) = self.start {
            url.push_str(&format!("&start={}", start.timestamp()));
        }
        url.push_str(&format!("&end={oldest}"));
        url
    }
}

/// What is wrong with a history request: the parameter, and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHistoryQuery {
    #[error("missing product, e.g. product=BTC-USD (GET /api/v1/products lists them)")]
    MissingProduct,
    #[error("invalid product {}: {}", .0.shown(), BadProductId::ACCEPTED)]
    Product(BadProductId),
    #[error("missing granularity, e.g. granularity=ONE_MINUTE")]
    MissingGranularity,
    #[error(transparent)]
    Granularity(#[from] UnknownGranularity),
    /// The limit as given.
    #[error("invalid limit {0:?}: an integer 1-{MAX_LIMIT}")]
    Limit(String),
    /// `start` or `end`, and the value as given.
    #[error("invalid {name} {raw:?}: Unix seconds, an integer 0-{MAX_TIMESTAMP}")]
    Timestamp { name: &'static str, raw: String },
    #[error(
        "start {start} is not before end {end}: start is inclusive, end exclusive, so start < end"
    )]
    StartNotBeforeEnd { start: i64, end: i64 },
}

/// A Unix-seconds parameter.
fn timestamp(name: &'static str, raw: &str) -> Result<DateTime<Utc>, BadHistoryQuery> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|s| (0..=MAX_TIMESTAMP).contains(s))
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .ok_or_else(|| BadHistoryQuery::Timestamp {
            name,
            raw: raw.to_owned(),
        })
}

/// Validates the query string; the error names the parameter and what it accepts.
pub fn parse_query(query: &HashMap<String, String>) -> Result<HistoryQuery, BadHistoryQuery> {
    let product = query
        .get("product")
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .ok_or(BadHistoryQuery::MissingProduct)?;
    let product = ProductId::from_client(product).map_err(BadHistoryQuery::Product)?;
    let granularity = query
        .get("granularity")
        .ok_or(BadHistoryQuery::MissingGranularity)?
        .parse::<Granularity>()?;
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(BadHistoryQuery::Limit(raw.clone())),
        },
    };
    let start = query
        .get("start")
        .map(|raw| timestamp("start", raw))
        .transpose()?;
    let end = query
        .get("end")
        .map(|raw| timestamp("end", raw))
        .transpose()?;
    if let (Some(s), Some(e)) = (start, end)
        && s >= e
    {
        return Err(BadHistoryQuery::StartNotBeforeEnd {
            start: s.timestamp(),
            end: e.timestamp(),
        });
    }
    Ok(HistoryQuery {
        product,
        granularity,
        limit,
        start,
        end,
    })
}

/// `GET /api/v1/candles`.
pub async fn candles(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let q = parse_query(&query).map_err(ApiError::bad_request)?;
    let known = state.products.contains(&q.product).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot check the product");
        unavailable()
    })?;
    if !known {
        return Err(ApiError::bad_request(format!(
            "unknown product {:?}: a product id listed by GET /api/v1/products",
            q.product
        )));
    }
    // Buckets start at most one bucket before now; a day of slack covers clock skew.
    let end = q
        .end
        .unwrap_or_else(|| Utc::now() + chrono::TimeDelta::days(1));
    let start = q.start.unwrap_or(DateTime::UNIX_EPOCH);
    // One more than asked: whether older candles remain in the range.
    let query = state
        .repository
        .candles(&q.product, q.granularity, start, end, q.limit + 1);
    let mut rows = read("the history query", QUERY_TIMEOUT, query)
        .await
        .map_err(|_| unavailable())?;
    let more = rows.len() > q.limit as usize;
    if more {
        // Oldest first: the extra row is the first.
        rows.remove(0);
    }
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
    let mut body = json!({
        "product": q.product,
        "granularity": q.granularity,
        "candles": candles,
    });
    if more && let Some(oldest) = candles.first().map(|c| c.timestamp) {
        body["next"] = json!({ "end": oldest, "url": q.next_url(oldest) });
    }
    Ok(json::answer(StatusCode::OK, body))
}

/// 503 (no `Retry-After`: a program retries on its own schedule).
fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the candle store is not available, try again",
    )
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
            assert_eq!(q.start, None);
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
            let error = with(("limit", bad)).expect_err(bad).to_string();
            assert!(error.contains("invalid limit"), "{bad}: {error}");
        }
        let q = with(("end", "1790000040")).expect("valid end");
        assert_eq!(q.end, DateTime::from_timestamp(1_790_000_040, 0));
        assert_eq!(q.granularity, Granularity::OneHour);
        for bad in [
            "-",
            "1.5",
            "99999999999999999999",
            "-60",
            "253402300800",
            "1e9",
        ] {
            let error = with(("end", bad)).expect_err(bad).to_string();
            assert!(error.contains("invalid end"), "{bad}: {error}");
            assert!(
                error.contains("Unix seconds, an integer 0-"),
                "{bad}: {error}"
            );
            let error = with(("start", bad)).expect_err(bad).to_string();
            assert!(error.contains("invalid start"), "{bad}: {error}");
        }
        let q = with(("start", "1790000040")).expect("valid start");
        assert_eq!(q.start, DateTime::from_timestamp(1_790_000_040, 0));
    }

    #[test]
    fn start_must_come_before_end() {
        let with = |start: &str, end: &str| {
            parse_query(&query(&[
                ("product", "BTC-USD"),
                ("granularity", "1m"),
                ("start", start),
                ("end", end),
            ]))
        };
        let q = with("60", "120").expect("start < end");
        assert_eq!(
            (q.start.map(|t| t.timestamp()), q.end.map(|t| t.timestamp())),
            (Some(60), Some(120))
        );
        for (start, end) in [("120", "120"), ("180", "120")] {
            let error = with(start, end).expect_err("start >= end").to_string();
            assert_eq!(
                error,
                format!(
                    "start {start} is not before end {end}: start is inclusive, end exclusive, \
                     so start < end"
                )
            );
        }
    }

    #[test]
    fn next_keeps_the_range_start_and_moves_the_end() {
        let mut q = parse_query(&query(&[
            ("product", "ETH-USD"),
            ("granularity", "5m"),
            ("limit", "2"),
        ]))
        .expect("valid");
        assert_eq!(
            q.next_url(600),
            "/api/v1/candles?product=ETH-USD&granularity=FIVE_MINUTES&limit=2&end=600"
        );
        q.start = DateTime::from_timestamp(300, 0);
        assert_eq!(
            q.next_url(600),
            "/api/v1/candles?product=ETH-USD&granularity=FIVE_MINUTES&limit=2&start=300&end=600"
        );
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
            let error = parse_query(&q).expect_err(expected).to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
