//! HTTP hygiene around the routes: request tracing, CORS, security headers, compression, a
//! request timeout (not on the SSE streams), and error answers in the API's JSON shape.
//!
//! In: a [`Router`] and the [`HttpSettings`]. Out: the same routes, wrapped. From the outside
//! in: the access log (one line per request), security headers on every
//! answer, CORS, compression (tower-http's default predicate: never `text/event-stream`, images
//! or tiny bodies), and the rewriting of non-JSON error answers (axum's own rejections, 404,
//! 405) into `{"schema": 1, "error": …}`. [`with_timeout`] is applied to the request/response
//! routes only.

use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use super::json;
use crate::config::{Config, CorsOrigins};

/// The Content-Security-Policy of answers that set none (JSON: nothing to load, never framed).
pub const JSON_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
/// How long a browser may cache a CORS preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);
/// The largest error body rewritten into JSON (axum's rejections are a line of text).
const MAX_ERROR_BODY: usize = 16 * 1024;

/// The HTTP layer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub cors_origins: CorsOrigins,
    /// Longest a request/response route may take; then 503.
    pub request_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            cors_origins: CorsOrigins::None,
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpSettings {
    pub fn from_config(config: &Config) -> Self {
        HttpSettings {
            cors_origins: config.cors_origins.clone(),
            request_timeout: Duration::from_secs(config.request_timeout_secs),
        }
    }
}

/// Answers 503 in the API's shape when the routes of `router` take longer than `timeout` to
/// answer (the headers; a body already streaming is not cut).
pub fn with_timeout(router: Router, timeout: Duration) -> Router {
    router.layer(middleware::from_fn_with_state(timeout, deadline))
}

async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => {
            tracing::warn!(%method, path, ?timeout, "request timed out");
            json::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the request was not answered within {} s (REQUEST_TIMEOUT_SECS); try again",
                    timeout.as_secs_f64()
                ),
            )
        }
    }
}

/// Wraps every route (the streams included) in the hygiene layers.
pub fn wrap(router: Router, settings: &HttpSettings) -> Router {
    let router = router
        .layer(middleware::from_fn(json_errors))
        .layer(CompressionLayer::new());
    let router = match cors(&settings.cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        // Pages (later) bring their own policy.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(JSON_CSP),
        ))
        .layer(middleware::from_fn(access_log))
}

/// One log line per request, when its answer's headers go out (a stream's when it opens):
/// method, path (never the query, which a client may fill with anything), status and the time
/// to answer. Headers (cookies, authorization) are never logged. Errors log at `warn`; health
/// probes and metrics scrapes at `debug` (they come every few seconds).
async fn access_log(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    // Probes and scrapes come every few seconds: debug, unless they fail.
    let routine = path.starts_with("/health") || path == "/metrics";
    if response.status().is_server_error() && !routine {
        tracing::warn!(target: "spot_canvas::http", %method, path, status, latency_ms, "request");
    } else if routine {
        tracing::debug!(target: "spot_canvas::http", %method, path, status, latency_ms, "request");
    } else {
        tracing::info!(target: "spot_canvas::http", %method, path, status, latency_ms, "request");
    }
    response
}

/// The CORS layer for `origins`; `None` sends no CORS headers at all.
fn cors(origins: &CorsOrigins) -> Option<CorsLayer> {
    let allow = match origins {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(
            list.iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::HEAD])
            // EventSource reconnects send Last-Event-ID; Datastar's fetches send
            // Datastar-Request.
            .allow_headers([
                header::ACCEPT,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("datastar-request"),
            ])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

/// Turns an error answer that is not JSON (axum's rejections, no such route, wrong method) into
/// the API's `{"schema": 1, "error": …}`, keeping its status (and `Allow`).
async fn json_errors(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    // JSON answers are in shape; HTML ones are the pages' own error pages.
    let shaped = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if shaped {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match status {
        StatusCode::NOT_FOUND => format!(
            "no such route: {method} {path}; the API serves /health, /health/live, \
             /health/ready and /api/v1/… (see README)"
        ),
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("method {method} is not allowed on {path}; accepted: GET")
        }
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned(),
        _ => text,
    };
    let mut rewritten = json::error(status, message);
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        rewritten.headers_mut().insert(header::ALLOW, allow.clone());
    }
    rewritten
}
