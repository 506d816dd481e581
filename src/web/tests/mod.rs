//! Router tests in process (`oneshot`), without a database: the pool points at a closed port.
//!
//! In: an [`AppState`] around an unreachable pool. Out: the answers the router gives: the API's
//! (`api.rs`), the hygiene layers' (`hygiene.rs`) and what each role serves (`roles.rs`).

mod api;
mod hygiene;
mod roles;

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
