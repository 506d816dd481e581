//! Product discovery from Coinbase's public REST products list.
//!
//! In: `GET {COINBASE_REST_URL}/market/products`, its body read with a cap
//! ([`PRODUCTS_MAX_BYTES`]; a larger list is an error, not a 2 GiB buffer). Out: the ids of
//! online, tradable spot products, without `-USDC` aliases of `-USD` products (Coinbase sends
//! aliases the same data). Each fetch's outcome is kept for `/health`
//! ([`DiscoveryReport`](super::health::DiscoveryReport)). A malformed product costs only
//! itself: it is skipped, counted and logged (once per fetch, with a few examples), and the
//! others are used.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::coinbase::body::{BodyError, PRODUCTS_MAX_BYTES, read_capped};
use crate::coinbase::rest::{ProductIssue, parse_error, parse_products};
use crate::feed::health::FeedHealth;
use crate::model::{Product, ProductId};

/// Time allowed for one REST request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The request failed; the error carries no URL.
    #[error("products request failed: {0}")]
    Http(reqwest::Error),
    #[error("products request answered {status}: {}", crate::model::shown(message))]
    Status { status: u16, message: String },
    #[error("products answer is malformed: {0}")]
    Parse(#[from] crate::coinbase::FrameError),
    /// The answer's body was too large (more than [`PRODUCTS_MAX_BYTES`]) or broke off.
    #[error("products answer not read: {0}")]
    Body(#[from] BodyError),
    #[error("products request: {0}")]
    Url(#[from] crate::coinbase::url::BadBaseUrl),
}

impl From<reqwest::Error> for DiscoveryError {
    fn from(e: reqwest::Error) -> Self {
        DiscoveryError::Http(e.without_url())
    }
}

/// Fetches the products list and records the outcome in `health`.
pub async fn fetch_reported(
    http: &reqwest::Client,
    rest_url: &str,
    health: &FeedHealth,
) -> Result<Vec<Product>, DiscoveryError> {
    let outcome = fetch_products(http, rest_url, health).await;
    match &outcome {
        Ok(products) => health.discovery.record_success(products.len()),
        Err(e) => health.discovery.record_failure(
            e.to_string(),
            matches!(e, DiscoveryError::Body(BodyError::TooLarge { .. })),
        ),
    }
    outcome
}

/// Products named in one log line about a fetch's malformed products.
const ISSUES_LOGGED: usize = 5;

/// Fetches the products list. The products left out of the list (ids or fields that do not
/// parse, duplicates) are noted in `health` and counted in
/// `spot_canvas_feed_skipped_products_total`.
pub async fn fetch_products(
    http: &reqwest::Client,
    rest_url: &str,
    health: &FeedHealth,
) -> Result<Vec<Product>, DiscoveryError> {
    let url = crate::coinbase::url::endpoint(rest_url, &["market", "products"])?;
    let response = http
        .get(url)
        .query(&[("product_type", "SPOT")])
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await?;
    let status = response.status();
    let body = read_capped(response, PRODUCTS_MAX_BYTES, "products").await?;
    if !status.is_success() {
        let message = parse_error(&body).map_or_else(
            || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            |e| format!("{}: {}", e.error, e.message),
        );
        return Err(DiscoveryError::Status {
            status: status.as_u16(),
            message,
        });
    }
    let list = parse_products(&body)?;
    report_issues(
        &list.skipped,
        list.skipped_count,
        "skipped malformed products",
    );
    report_issues(
        &list.degraded,
        list.degraded_count,
        "products kept with unreadable optional fields left out",
    );
    metrics::counter!("spot_canvas_feed_skipped_products_total")
        .increment(list.skipped_count as u64);
    health.set_skipped_products(
        list.skipped_count,
        list.skipped
            .iter()
            .take(ISSUES_LOGGED)
            .map(|i| format!("{}: {}", i.product_id, i.reason))
            .collect(),
    );
    Ok(list.products)
}

/// Logs a fetch's product issues in one line: how many, and the first few.
fn report_issues(issues: &[ProductIssue], count: usize, what: &'static str) {
    if count == 0 {
        return;
    }
    let examples: Vec<String> = issues
        .iter()
        .take(ISSUES_LOGGED)
        .map(|i| format!("{}: {}", i.product_id, i.reason))
        .collect();
    tracing::warn!(count, ?examples, "{what}");
}

/// The ids the service ingests from a products list, sorted.
pub fn ingestible_ids(products: &[Product]) -> Vec<ProductId> {
    // A product some other product lists in `alias_to` is an alias, even if its own `alias`
    // field is empty.
    let aliases: BTreeSet<&ProductId> = products.iter().flat_map(|p| &p.alias_to).collect();
    let ids: BTreeSet<ProductId> = products
        .iter()
        .filter(|p| p.is_ingestible() && !aliases.contains(&p.product_id))
        .map(|p| p.product_id.clone())
        .collect();
    ids.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_request_does_not_name_its_url() {
        // Nothing listens on port 9 of loopback in the test environment: the connect fails.
        let http = reqwest::Client::new();
        let health = FeedHealth::new(crate::feed::health::AuthState::Unauthenticated);
        let err = fetch_products(&http, "http://127.0.0.1:9/secret-path", &health)
            .await
            .expect_err("no server");
        assert!(matches!(err, DiscoveryError::Http(_)), "{err:?}");
        let text = format!("{err} {err:?}");
        // The connect error's socket address may remain; the URL (path, query) must not.
        assert!(!text.contains("secret-path"), "{text}");
    }
}
