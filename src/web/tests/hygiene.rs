//! The hygiene layers: security headers, JSON rejections, CORS, no compression of event
//! streams, the request timeout.

use super::*;

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
