//! Router tests in process (`oneshot`), without a database: the pool points at a closed port.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::routing::get;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::config::CorsOrigins;

/// A password that must never show in an answer.
const PASSWORD: &str = "hunter2-secret";

fn unreachable_repository() -> Repository {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&format!(
            "postgres://spot:{PASSWORD}@127.0.0.1:1/spot_canvas"
        ))
        .expect("a lazy pool");
    Repository::new(pool)
}

fn state() -> AppState {
    AppState::idle(unreachable_repository())
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(router: Router, request: Request<Body>) -> Answer {
    let response = router.oneshot(request).await.expect("an answer");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body")
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get_uri(state: AppState, uri: &str) -> Answer {
    let request = Request::get(uri).body(Body::empty()).expect("request");
    send(router(state), request).await
}

#[tokio::test]
async fn bad_candle_parameters_answer_400_saying_what_is_wrong_and_what_is_accepted() {
    let cases = [
        (
            "/api/v1/candles?granularity=1m",
            "missing product, e.g. product=BTC-USD (GET /api/v1/products lists them)",
        ),
        (
            "/api/v1/candles?product=BTC-USD",
            "missing granularity, e.g. granularity=ONE_MINUTE",
        ),
        (
            "/api/v1/candles?product=BTC%20USD&granularity=1m",
            "invalid product \"BTC USD\": a product id such as BTC-USD (two codes of 1 to 16 letters or digits around one '-')",
        ),
        (
            "/api/v1/candles?product=BTC-USD&granularity=1m&limit=0",
            "invalid limit \"0\": an integer 1-1000",
        ),
        (
            "/api/v1/candles?product=BTC-USD&granularity=1m&start=yesterday",
            "invalid start \"yesterday\": Unix seconds, an integer 0-253402300799",
        ),
        (
            "/api/v1/candles?product=BTC-USD&granularity=1m&end=-5",
            "invalid end \"-5\": Unix seconds, an integer 0-253402300799",
        ),
        (
            "/api/v1/candles?product=BTC-USD&granularity=1m&start=120&end=60",
            "start 120 is not before end 60: start is inclusive, end exclusive, so start < end",
        ),
    ];
    for (uri, message) in cases {
        let answer = get_uri(state(), uri).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{uri}");
        let body = answer.json();
        assert_eq!(body["error"], message, "{uri}");
        assert_eq!(body["schema"], json::SCHEMA, "{uri}");
    }
    let answer = get_uri(state(), "/api/v1/candles?product=BTC-USD&granularity=7m").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let error = answer.json()["error"].as_str().expect("error").to_owned();
    assert!(
        error.contains("unknown granularity") && error.contains("ONE_MINUTE"),
        "{error}"
    );
}

#[tokio::test]
async fn without_a_database_the_api_answers_503_in_json_and_names_no_secret() {
    for uri in [
        "/api/v1/candles?product=BTC-USD&granularity=1m",
        "/api/v1/products",
    ] {
        let answer = get_uri(state(), uri).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        assert!(answer.json()["error"].as_str().is_some(), "{uri}: {text}");
        assert!(
            !text.contains(PASSWORD) && !text.contains("postgres://"),
            "{text}"
        );
    }
    let answer = get_uri(state(), "/health/ready").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = answer.json();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["schema"], 1);
    assert_eq!(body["checks"]["database"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["feed"]["ok"], false, "{body}");
    assert_eq!(
        body["checks"]["feed"]["detail"],
        "0 of 0 feed connections up"
    );
    assert_eq!(body["checks"]["nats"]["ok"], true, "{body}");
    assert_eq!(body["checks"]["stages"]["ok"], true, "{body}");
    let detail = body["checks"]["database"]["detail"]
        .as_str()
        .expect("detail");
    assert!(detail.starts_with("SELECT 1 "), "{detail}");
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    assert!(
        !text.contains(PASSWORD) && !text.contains("127.0.0.1:1"),
        "{text}"
    );
    // /health keeps its fields beside the checks.
    let answer = get_uri(state(), "/health").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = answer.json();
    for field in [
        "version",
        "simulated",
        "feed_url",
        "failed_stages",
        "stages",
        "feed",
        "engine",
        "store",
        "reconcile",
        "bus",
    ] {
        assert!(body.get(field).is_some(), "/health lacks {field}: {body}");
    }
    assert_eq!(body["checks"]["database"]["ok"], false);
}

#[tokio::test]
async fn health_live_answers_200_whatever_else_is_down() {
    let answer = get_uri(state(), "/health/live").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json(),
        serde_json::json!({"schema": 1, "status": "ok"})
    );
    assert_eq!(answer.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    for uri in [
        "/health/live",
        "/api/v1/candles?product=BTC-USD",
        "/no/such/route",
    ] {
        let answer = get_uri(state(), uri).await;
        assert_eq!(
            answer.header("x-content-type-options"),
            Some("nosniff"),
            "{uri}"
        );
        assert_eq!(answer.header("x-frame-options"), Some("DENY"), "{uri}");
        assert_eq!(
            answer.header("referrer-policy"),
            Some("no-referrer"),
            "{uri}"
        );
        assert_eq!(
            answer.header("content-security-policy"),
            Some("default-src 'none'; frame-ancestors 'none'"),
            "{uri}"
        );
    }
    // A page with its own policy keeps it.
    let page = Router::new().route(
        "/page",
        get(|| async {
            (
                [(header::CONTENT_SECURITY_POLICY, "default-src 'self'")],
                "<p>page</p>",
            )
        }),
    );
    let request = Request::get("/page").body(Body::empty()).expect("request");
    let answer = send(layers::wrap(page, &HttpSettings::default()), request).await;
    assert_eq!(
        answer.header("content-security-policy"),
        Some("default-src 'self'")
    );
    assert_eq!(answer.header("x-frame-options"), Some("DENY"));
}

#[tokio::test]
async fn rejections_unknown_routes_and_wrong_methods_answer_in_the_json_shape() {
    let answer = get_uri(state(), "/api/v2/candles").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let body = answer.json();
    assert_eq!(body["schema"], 1);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("no such route: GET /api/v2/candles")),
        "{body}"
    );
    let request = Request::post("/api/v1/products")
        .body(Body::empty())
        .expect("request");
    let answer = send(router(state()), request).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        answer.json()["error"],
        "method POST is not allowed on /api/v1/products; accepted: GET"
    );
    assert!(answer.header("allow").is_some_and(|a| a.contains("GET")));
    // An extractor's own rejection (plain text from axum) becomes JSON with its text.
    #[derive(serde::Deserialize)]
    struct Numbered {
        #[allow(dead_code)]
        n: u32,
    }
    let typed = Router::new().route(
        "/typed",
        get(|_: axum::extract::Query<Numbered>| async { "fine" }),
    );
    let request = Request::get("/typed?n=many")
        .body(Body::empty())
        .expect("request");
    let answer = send(layers::wrap(typed, &HttpSettings::default()), request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let error = answer.json()["error"].as_str().expect("error").to_owned();
    assert!(
        error.contains("Failed to deserialize query string"),
        "{error}"
    );
    assert!(error.contains("n: invalid digit"), "{error}");
}

fn with_cors(origins: CorsOrigins) -> AppState {
    let mut state = state();
    state.http.cors_origins = origins;
    state
}

async fn preflight(state: AppState, origin: &str) -> Answer {
    let request = Request::options("/api/v1/products")
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "last-event-id")
        .body(Body::empty())
        .expect("request");
    send(router(state), request).await
}

#[tokio::test]
async fn cors_allows_the_configured_origins_only() {
    let listed = || {
        with_cors(CorsOrigins::List(vec![
            "https://charts.example.com".to_owned(),
        ]))
    };
    let allowed = preflight(listed(), "https://charts.example.com").await;
    assert!(allowed.status.is_success(), "{:?}", allowed.status);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://charts.example.com")
    );
    assert!(
        allowed
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("GET"))
    );
    assert!(
        allowed
            .header("access-control-allow-headers")
            .is_some_and(|h| h.contains("last-event-id"))
    );
    let refused = preflight(listed(), "https://evil.example.com").await;
    assert_eq!(refused.header("access-control-allow-origin"), None);
    // A simple GET from an allowed origin gets the header too.
    let request = Request::get("/health/live")
        .header(header::ORIGIN, "https://charts.example.com")
        .body(Body::empty())
        .expect("request");
    let answer = send(router(listed()), request).await;
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("https://charts.example.com")
    );
    // `*`: any origin.
    let any = preflight(with_cors(CorsOrigins::Any), "https://anyone.example").await;
    assert_eq!(any.header("access-control-allow-origin"), Some("*"));
    // Unset: no CORS headers at all.
    let none = preflight(with_cors(CorsOrigins::None), "https://charts.example.com").await;
    assert_eq!(none.header("access-control-allow-origin"), None);
}

/// An SSE route beside a JSON route, both bigger than the compression threshold.
fn sse_and_json() -> Router {
    let events = "data: ".to_owned() + &"x".repeat(2_000) + "\n\n";
    let json_body = serde_json::json!({ "padding": "y".repeat(2_000) }).to_string();
    Router::new()
        .route(
            "/test-sse",
            get(move || {
                let events = events.clone();
                async move { ([(header::CONTENT_TYPE, "text/event-stream")], events) }
            }),
        )
        .route(
            "/test-json",
            get(move || {
                let body = json_body.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
}

/// The stream routes can point here once they exist: `text/event-stream` is never compressed.
#[tokio::test]
async fn an_sse_answer_is_never_compressed_even_when_gzip_is_accepted() {
    let call = |uri: &'static str| async move {
        let request = Request::get(uri)
            .header(header::ACCEPT_ENCODING, "gzip")
            .body(Body::empty())
            .expect("request");
        send(
            layers::wrap(sse_and_json(), &HttpSettings::default()),
            request,
        )
        .await
    };
    let json = call("/test-json").await;
    assert_eq!(
        json.header("content-encoding"),
        Some("gzip"),
        "JSON is compressed"
    );
    let sse = call("/test-sse").await;
    assert_eq!(sse.header("content-encoding"), None);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert!(sse.body.starts_with(b"data: xxx") && sse.body.len() == 2_008);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_answers_503_on_api_routes_but_not_on_routes_merged_outside_it() {
    // Time is the subject here: handlers that take longer than the timeout.
    let slow = || async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        "late"
    };
    let api = layers::with_timeout(
        Router::new().route("/slow", get(slow)),
        Duration::from_secs(10),
    );
    let app = layers::wrap(
        api.merge(Router::new().route("/stream-like", get(slow))),
        &HttpSettings::default(),
    );
    let request = Request::get("/slow").body(Body::empty()).expect("request");
    let answer = send(app.clone(), request).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.json()["error"],
        "the request was not answered within 10 s (REQUEST_TIMEOUT_SECS); try again"
    );
    let request = Request::get("/stream-like")
        .body(Body::empty())
        .expect("request");
    let answer = send(app, request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, b"late");
}

#[tokio::test]
async fn readiness_of_the_feed_follows_the_role() {
    use crate::config::Role;
    use crate::web::health::checks;
    let state = state();
    let stages = state.stages.report();
    // Ingesting, with products and no connection up: not ready.
    state
        .feed
        .register(0, vec![crate::model::ProductId::from_static("BTC-USD")]);
    state.feed.set_assigned(1);
    let feed = checks(&state, &stages).await.feed;
    assert!(!feed.ok, "{}", feed.detail);
    // A shard that holds no products needs no connection.
    let empty = AppState::idle(unreachable_repository());
    empty.feed.set_assigned(0);
    let feed = checks(&empty, &empty.stages.report()).await.feed;
    assert!(feed.ok, "{}", feed.detail);
    assert!(feed.detail.contains("no products"));
    // Before the shard's products are chosen, it is not ready either.
    let choosing = AppState::idle(unreachable_repository());
    assert!(!checks(&choosing, &choosing.stages.report()).await.feed.ok);
    // A web instance does not ingest: the feed is not its business.
    let web = AppState {
        role: Role::Web,
        ..AppState::idle(unreachable_repository())
    };
    let feed = checks(&web, &web.stages.report()).await.feed;
    assert!(
        feed.ok && feed.detail.contains("does not ingest"),
        "{}",
        feed.detail
    );
}

#[tokio::test]
async fn an_ingest_instance_serves_health_and_metrics_only_and_metrics_can_move_out() {
    use crate::config::Role;
    let ingest = AppState {
        role: Role::Ingest,
        ..state()
    };
    let get = |router: Router, uri: &'static str| async move {
        send(
            router,
            Request::get(uri).body(Body::empty()).expect("a request"),
        )
        .await
    };
    assert_eq!(
        get(router(ingest.clone()), "/").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(router(ingest.clone()), "/api/v1/stream").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(router(ingest.clone()), "/health/live").await.status,
        StatusCode::OK
    );
    // No recorder in this state: the route is there and says so.
    assert_eq!(
        get(router(ingest.clone()), "/metrics").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let separate = AppState {
        separate_metrics: true,
        ..ingest
    };
    assert_eq!(
        get(router(separate.clone()), "/metrics").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(metrics_router(separate.clone()), "/metrics")
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(metrics_router(separate), "/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_product_the_feed_carries_streams_before_it_reaches_trading_pairs() {
    let state = AppState {
        products: catalog::Catalog::fixed(vec![crate::model::ProductId::from_static("ETH-USD")]),
        ..state()
    };
    let status = |state: AppState, uri: &'static str| async move {
        let request = Request::get(uri).body(Body::empty()).expect("request");
        let response = router(state).oneshot(request).await.expect("an answer");
        // The status only: a stream's body does not end.
        response.status()
    };
    let uri = "/api/v1/stream?products=BTC-USD&granularity=1m";
    // In neither trading_pairs nor the feed: unknown.
    assert_eq!(status(state.clone(), uri).await, StatusCode::BAD_REQUEST);
    // The feed carries it (its list not yet in trading_pairs): streamed.
    state
        .feed
        .register(0, vec![crate::model::ProductId::from_static("BTC-USD")]);
    assert_eq!(status(state.clone(), uri).await, StatusCode::OK);
    // Known from trading_pairs alone, as before.
    assert_eq!(
        status(
            state.clone(),
            "/api/v1/stream?products=ETH-USD&granularity=1m"
        )
        .await,
        StatusCode::OK
    );
    // One product carried, one in neither: unknown.
    assert_eq!(
        status(
            state,
            "/api/v1/stream?products=BTC-USD,SOL-USD&granularity=1m"
        )
        .await,
        StatusCode::BAD_REQUEST
    );
}
