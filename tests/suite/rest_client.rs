//! The REST candle client against a small local server that misbehaves on purpose: it pages
//! long spans in at most 300 buckets, retries rate limiting and server errors, and reports
//! client errors and malformed answers at once, naming the product.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use spot_canvas::coinbase::pacer::Priority;
use spot_canvas::model::Granularity;
use spot_canvas::reconcile::{CandleClient, RETRY_BASE, RestError};

#[derive(Default)]
struct Server {
    requests: AtomicU64,
    /// When each request arrived.
    arrivals: Mutex<Vec<Instant>>,
    /// Answer this many requests with 429 first.
    throttle: AtomicU64,
    /// Widest span asked for, in buckets.
    widest: AtomicU64,
}

async fn candles(
    State(server): State<Arc<Server>>,
    Path(product): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    server.requests.fetch_add(1, Ordering::Relaxed);
    server
        .arrivals
        .lock()
        .expect("arrivals")
        .push(Instant::now());
    if server
        .throttle
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
    }
    match product.as_str() {
        "BAD-USD" => {
            return (
                StatusCode::BAD_REQUEST,
                r#"{"error":"INVALID_ARGUMENT","message":"number of candles requested should be less than 350"}"#,
            )
                .into_response();
        }
        "JUNK-USD" => return (StatusCode::OK, r#"{"candles":[{"start":"x"}]}"#).into_response(),
        _ => {}
    }
    let start: i64 = q["start"].parse().expect("start");
    let end: i64 = q["end"].parse().expect("end");
    assert_eq!(q["granularity"], "ONE_MINUTE");
    server
        .widest
        .fetch_max(((end - start) / 60 + 1) as u64, Ordering::Relaxed);
    // Every minute traded, newest first, as Coinbase answers.
    let first = start + (60 - start.rem_euclid(60)) % 60;
    let mut minutes: Vec<i64> = (first..=end).step_by(60).collect();
    minutes.reverse();
    let body: Vec<String> = minutes
        .iter()
        .map(|m| {
            format!(
                r#"{{"start":"{m}","low":"1.5","high":"2.25","open":"2","close":"1.75","volume":"0.000000123"}}"#
            )
        })
        .collect();
    (
        StatusCode::OK,
        format!(r#"{{"candles":[{}]}}"#, body.join(",")),
    )
        .into_response()
}

async fn serve() -> (String, Arc<Server>) {
    let server = Arc::new(Server::default());
    let app = Router::new()
        .route("/market/products/{id}/candles", get(candles))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, server)
}

#[tokio::test]
async fn long_spans_come_in_pages_of_at_most_300_buckets_oldest_first() {
    let (url, server) = serve().await;
    let client = CandleClient::new(&url, 100);
    let from = 1_800_000_000;
    let to = from + 1_000 * 60;
    let candles = client
        .candles(
            &spot_canvas::model::ProductId::from_static("BTC-USD"),
            Granularity::OneMinute,
            from,
            to,
            Priority::High,
        )
        .await
        .expect("candles");
    assert_eq!(candles.len(), 1_000, "every minute of the span, once");
    assert!(candles.windows(2).all(|w| w[0].start < w[1].start));
    assert_eq!(candles[0].start.timestamp(), from);
    assert_eq!(candles[0].volume.to_string(), "0.000000123", "exact");
    assert_eq!(candles[0].trade_count, None, "unknown, not zero");
    assert_eq!(server.requests.load(Ordering::Relaxed), 4);
    assert!(server.widest.load(Ordering::Relaxed) <= 300);
}

#[tokio::test]
async fn rate_limiting_is_retried_with_backoff() {
    let (url, server) = serve().await;
    server.throttle.store(2, Ordering::Relaxed);
    let client = CandleClient::new(&url, 100);
    let candles = client
        .candles(
            &spot_canvas::model::ProductId::from_static("BTC-USD"),
            Granularity::OneMinute,
            1_800_000_000,
            1_800_000_600,
            Priority::High,
        )
        .await
        .expect("candles after two 429s");
    assert_eq!(candles.len(), 10);
    assert_eq!(server.requests.load(Ordering::Relaxed), 3);
    assert_eq!(client.stats().retries.load(Ordering::Relaxed), 2);
    // Each retry waited its backoff: at least half of RETRY_BASE · 2^n (equal jitter), however
    // fast or slow the machine is. (A loaded machine only makes the gaps longer.)
    let arrivals = server.arrivals.lock().expect("arrivals").clone();
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps.len(), 2);
    for (n, gap) in gaps.iter().enumerate() {
        let least = RETRY_BASE * 2u32.pow(n as u32) / 2;
        assert!(
            *gap >= least,
            "retry {n} came after {gap:?}, before {least:?}"
        );
    }
}

#[tokio::test]
async fn client_errors_and_malformed_answers_are_reported_at_once() {
    let (url, server) = serve().await;
    let client = CandleClient::new(&url, 100);
    let span = (1_800_000_000, 1_800_000_600);
    match client
        .candles(
            &spot_canvas::model::ProductId::from_static("BAD-USD"),
            Granularity::OneMinute,
            span.0,
            span.1,
            Priority::Low,
        )
        .await
    {
        Err(e @ RestError::Status { status: 400, .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("BAD-USD") && message.contains("less than 350"),
                "{message}"
            );
        }
        other => panic!("a 400: {other:?}"),
    }
    match client
        .candles(
            &spot_canvas::model::ProductId::from_static("JUNK-USD"),
            Granularity::OneMinute,
            span.0,
            span.1,
            Priority::Low,
        )
        .await
    {
        Err(e @ RestError::Parse { .. }) => assert!(e.to_string().contains("JUNK-USD"), "{e}"),
        other => panic!("a parse error: {other:?}"),
    }
    assert_eq!(server.requests.load(Ordering::Relaxed), 2, "no retries");
}
