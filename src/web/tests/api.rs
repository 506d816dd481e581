//! The API's answers: 400s that say what is wrong, 503s that name no secret, liveness.

use super::*;

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
