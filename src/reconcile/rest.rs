//! Coinbase's public REST candles, fetched politely.
//!
//! In: a product, a granularity and a span `[from, to)` of bucket starts. Out: the candles
//! Coinbase has for it (no candle means no trades), oldest first, fetched in pages of at most
//! [`PAGE_BUCKETS`] buckets at no more than the configured request rate (one [`Pacer`] shared
//! by every caller). Transient failures (network errors, 429, 5xx) are retried with backoff;
//! the rest are returned as errors naming the request, the last one kept for `/health`. Each
//! answer's body is read with a cap ([`CANDLES_MAX_BYTES`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;

use crate::backoff::equal_jitter;
use crate::coinbase::body::{BodyError, CANDLES_MAX_BYTES, read_capped};
use crate::coinbase::pacer::{Pacer, Priority};
use crate::coinbase::rest::{parse_candles, parse_error};
use crate::coinbase::url::candles_url;
use crate::model::{Candle, Granularity, ProductId, shown};

/// Buckets per request: Coinbase rejects windows of 350 or more (it was 300 in 2023).
pub const PAGE_BUCKETS: i64 = 300;
/// Time allowed for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an idle connection to the REST API is kept for the next request (it closes at the
/// pool's next sweep after that, so within twice this).
pub const POOL_IDLE: Duration = Duration::from_secs(10);
/// Attempts per page before giving up.
const ATTEMPTS: u32 = 6;
/// Backoff of a page's retries: retry `n` (0-based) waits between `RETRY_BASE · 2^n / 2` and
/// `RETRY_BASE · 2^n`, at most [`RETRY_CAP`].
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// The longest wait between two attempts of a page.
pub const RETRY_CAP: Duration = Duration::from_secs(30);

/// Why candles could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("candles request for {product} failed: {source}")]
    Http {
        product: ProductId,
        source: reqwest::Error,
    },
    #[error("candles request for {product} answered {status}: {}", shown(message))]
    Status {
        product: ProductId,
        status: u16,
        message: String,
    },
    #[error("candles answer for {product} is malformed: {source}")]
    Parse {
        product: ProductId,
        source: crate::coinbase::FrameError,
    },
    #[error("candles request for {product}: {source}")]
    Url {
        product: ProductId,
        source: crate::coinbase::url::BadBaseUrl,
    },
    /// The body was larger than [`CANDLES_MAX_BYTES`], or broke off.
    #[error("candles answer for {product} not read: {source}")]
    Body {
        product: ProductId,
        source: BodyError,
    },
}

impl RestError {
    /// Worth another attempt: the network, rate limiting or the server's own trouble.
    fn is_transient(&self) -> bool {
        match self {
            RestError::Http { .. } => true,
            RestError::Status { status, .. } => *status == 429 || *status >= 500,
            RestError::Parse { .. } | RestError::Url { .. } => false,
            // A transfer that broke off may go through next time; a body too large will not.
            RestError::Body { source, .. } => matches!(source, BodyError::Read(_)),
        }
    }
}

/// The pages `[start, end)` of bucket starts covering the starts in `[from, to)`, oldest
/// first; each page starts on a bucket.
pub fn pages(from: i64, to: i64, granularity: Granularity) -> Vec<(i64, i64)> {
    let width = granularity.seconds();
    let mut start = granularity.bucket_start_secs(from.saturating_add(width - 1));
    let mut out = Vec::new();
    while start < to {
        let end = (start + PAGE_BUCKETS * width).min(to);
        out.push((start, end));
        start = end;
    }
    out
}

/// Counts of requests, for `/health`.
#[derive(Debug, Default)]
pub struct RestStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub failures: AtomicU64,
    pub candles: AtomicU64,
    /// The last request that failed for good, and why (`None`: none yet).
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl RestStats {
    /// The last request that failed for good.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The REST candles client.
#[derive(Debug, Clone)]
pub struct CandleClient {
    http: reqwest::Client,
    rest_url: String,
    pacer: Arc<Pacer>,
    stats: Arc<RestStats>,
}

impl CandleClient {
    /// A client for `rest_url` making at most `requests_per_second` requests.
    pub fn new(rest_url: &str, requests_per_second: u32) -> Self {
        CandleClient {
            // Windows come in bursts: a connection idle for 10 s is closed rather than kept
            // for reqwest's default 90 s (each idle connection holds a task and a socket).
            http: reqwest::Client::builder()
                .pool_idle_timeout(POOL_IDLE)
                .build()
                .unwrap_or_else(|e| {
                    // Only a TLS backend that cannot start fails here, and would fail the
                    // default client too: said, not hidden.
                    tracing::error!(error = %e, "REST client settings refused: the default client");
                    reqwest::Client::new()
                }),
            rest_url: rest_url.trim_end_matches('/').to_owned(),
            pacer: Arc::new(Pacer::new(
                Duration::from_secs(1) / requests_per_second.max(1),
            )),
            stats: Arc::new(RestStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<RestStats> {
        self.stats.clone()
    }

    /// Coinbase's candles of `product_id` with starts in `[from, to)`, oldest first.
    pub async fn candles(
        &self,
        product_id: &ProductId,
        granularity: Granularity,
        from: i64,
        to: i64,
        priority: Priority,
    ) -> Result<Vec<Candle>, RestError> {
        let mut out = Vec::new();
        for (start, end) in pages(from, to, granularity) {
            let mut page = self
                .page(product_id, granularity, start, end, priority)
                .await?;
            page.retain(|c| (start..end).contains(&c.start.timestamp()));
            page.reverse();
            out.extend(page);
        }
        self.stats
            .candles
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// One page, retried while the failure is transient.
    async fn page(
        &self,
        product_id: &ProductId,
        granularity: Granularity,
        start: i64,
        end: i64,
        priority: Priority,
    ) -> Result<Vec<Candle>, RestError> {
        let mut attempt = 0;
        loop {
            self.pacer.acquire(priority).await;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("spot_canvas_rest_requests_total").increment(1);
            match self.request(product_id, granularity, start, end).await {
                Ok(candles) => return Ok(candles),
                Err(e) if e.is_transient() && attempt + 1 < ATTEMPTS => {
                    let delay =
                        equal_jitter(RETRY_BASE, RETRY_CAP, attempt, rand::rng().random::<f64>());
                    tracing::warn!(
                        error = %e,
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        "REST candles: retrying"
                    );
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    *self
                        .stats
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                    return Err(e);
                }
            }
        }
    }

    async fn request(
        &self,
        product_id: &ProductId,
        granularity: Granularity,
        start: i64,
        end: i64,
    ) -> Result<Vec<Candle>, RestError> {
        let url = candles_url(&self.rest_url, product_id).map_err(|source| RestError::Url {
            product: product_id.clone(),
            source,
        })?;
        // The URL is left out of the error: a REST base URL may carry credentials.
        let http = |source: reqwest::Error| RestError::Http {
            product: product_id.clone(),
            source: source.without_url(),
        };
        // `end` is inclusive at Coinbase: ask up to the last second before the next page.
        let response = self
            .http
            .get(url)
            .query(&[
                ("start", start.to_string()),
                ("end", (end - 1).to_string()),
                ("granularity", granularity.rest_name().to_owned()),
                ("limit", PAGE_BUCKETS.to_string()),
            ])
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(http)?;
        let status = response.status();
        let body = read_capped(response, CANDLES_MAX_BYTES, "candles")
            .await
            .map_err(|source| RestError::Body {
                product: product_id.clone(),
                source,
            })?;
        if !status.is_success() {
            let message = parse_error(&body).map_or_else(
                || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                |e| format!("{}: {}", e.error, e.message),
            );
            return Err(RestError::Status {
                product: product_id.clone(),
                status: status.as_u16(),
                message,
            });
        }
        parse_candles(&body, product_id, granularity).map_err(|source| RestError::Parse {
            product: product_id.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_hold_at_most_300_buckets_and_cover_the_span() {
        let g = Granularity::OneMinute;
        let from = 1_800_000_000 + 17; // not aligned to the minute
        let to = from + 1_000 * 60;
        let pages = pages(from, to, g);
        assert_eq!(
            pages.first().map(|p| p.0),
            Some(from - 17 + 60),
            "the first start after from"
        );
        assert_eq!(pages.last().map(|p| p.1), Some(to));
        for (start, end) in &pages {
            assert!((end - start) / 60 <= PAGE_BUCKETS, "{start}..{end}");
        }
        for pair in pages.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "contiguous");
        }
        assert_eq!(pages.len(), 4);
        assert!(super::pages(100, 100, g).is_empty());
    }
}
