//! Health: `GET /health/live` (the process answers), `GET /health/ready` and `GET /health`
//! (the feed when this instance ingests, NATS, the database and the stages; `/health` adds the
//! alarms, the clock comparison, the process (pid, tasks, memory) and every stage's report).
//!
//! In: the feed's connections, the NATS client's connection state, a `SELECT 1` through the
//! API pool (within [`DATABASE_TIMEOUT`]) and the stage registry. Out: 200 with
//! `"status": "ok"` when every check passes; 503 with `"status": "degraded"` otherwise, and
//! `"checks"` saying which check failed and why. `/health` adds every stage's state and counts.
//!
//! `/health` is computed at most once per [`HEALTH_MAX_AGE`] and shared ([`SharedAnswer`]):
//! concurrent requests wait for the one computation in flight, so a flood of them costs one
//! `SELECT 1` and one walk of the reports a second, not one each.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::AppState;
use super::json;

pub use crate::ops::readiness::{Check, Checks, DATABASE_TIMEOUT, error_kind};
/// `/health` is computed at most this often; requests meanwhile get the same answer.
pub const HEALTH_MAX_AGE: Duration = Duration::from_secs(1);

/// A JSON answer computed at most once per `max_age` and shared by every request meanwhile;
/// concurrent requests wait for the one computation in flight rather than each starting one.
/// Cheap to clone (one shared slot).
#[derive(Debug, Clone)]
pub struct SharedAnswer {
    max_age: Duration,
    slot: Arc<tokio::sync::Mutex<Option<Computed>>>,
}

#[derive(Debug)]
struct Computed {
    key: u64,
    at: Instant,
    status: StatusCode,
    /// The serialized body (with `"schema"`).
    body: Bytes,
}

impl SharedAnswer {
    pub fn new(max_age: Duration) -> SharedAnswer {
        SharedAnswer {
            max_age,
            slot: Arc::default(),
        }
    }

    /// The answer computed within `max_age` for the same `key`, or `compute`'s (then kept).
    /// The key is what must not be served stale (the stages' generation: a stage that ends,
    /// restarts or stops shows at once).
    pub async fn get<F, Fut>(&self, key: u64, compute: F) -> Response
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (StatusCode, Value)>,
    {
        let mut slot = self.slot.lock().await;
        let fresh = slot
            .as_ref()
            .filter(|c| c.key == key && c.at.elapsed() < self.max_age)
            .map(|c| (c.status, c.body.clone()));
        let (status, body) = match fresh {
            Some(answer) => answer,
            None => {
                let (status, mut value) = compute().await;
                if let Value::Object(map) = &mut value {
                    map.insert("schema".to_owned(), json!(json::SCHEMA));
                }
                // A `Value` always serializes.
                let body = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
                *slot = Some(Computed {
                    key,
                    at: Instant::now(),
                    status,
                    body: body.clone(),
                });
                (status, body)
            }
        };
        (status, [(CONTENT_TYPE, "application/json")], body).into_response()
    }
}

impl Default for SharedAnswer {
    /// Computed at most once per [`HEALTH_MAX_AGE`].
    fn default() -> Self {
        SharedAnswer::new(HEALTH_MAX_AGE)
    }
}

fn status_of(ok: bool) -> (StatusCode, &'static str) {
    if ok {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "degraded")
    }
}

/// `GET /health/live`: 200 while the process answers; nothing else is checked.
pub async fn live() -> Response {
    json::answer(StatusCode::OK, json!({ "status": "ok" }))
}

/// `GET /health/ready`: the checks alone.
pub async fn ready(State(state): State<AppState>) -> Response {
    let stages = state.reports.stages.report();
    let checks = crate::ops::readiness::checks(&state.probe(), &stages).await;
    // Stopping: no new clients here (a load balancer sends them elsewhere).
    let stopping = state.streams.stop.is_cancelled();
    let (status, word) = if stopping {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else {
        status_of(checks.ok())
    };
    json::answer(status, json!({ "status": word, "checks": checks }))
}

/// `GET /health`: the checks and every stage's state and counts, at most a second old.
pub async fn health(State(state): State<AppState>) -> Response {
    let shared = state.answers.health.clone();
    let generation = state.reports.stages.generation();
    shared.get(generation, || compute(state)).await
}

/// The `/health` answer now.
async fn compute(state: AppState) -> (StatusCode, Value) {
    let stages = state.reports.stages.report();
    let checks = crate::ops::readiness::checks(&state.probe(), &stages).await;
    let (status, word) = status_of(checks.ok());
    let body: Value = json!({
        "status": word,
        "checks": checks,
        "version": env!("CARGO_PKG_VERSION"),
        "role": state.instance.role,
        "process": crate::ops::process::ProcessReport::now(),
        "alarms": state.reports.alarms.report(),
        "clock": state.reports.clock.as_ref().map(|c| c.report()),
        "simulated": state.instance.simulated,
        "feed_url": crate::config::redact_url(&state.instance.ws_url),
        "failed_stages": stages.failed,
        "stages": stages.stages,
        "feed": state.reports.feed.report(),
        "engine": state.reports.engine.report(),
        "store": {
            "table": state.instance.table,
            "writer": state.reports.writer.report(),
        },
        "reconcile": state.reports.reconcile.report(),
        "bus": {
            "publisher": state.reports.publisher.report(),
            "live": state.live.report(),
        },
    });
    (status, body)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_shared_answer_is_computed_once_a_second_and_concurrent_callers_wait_for_one() {
        let shared = SharedAnswer::default();
        let computed = Arc::new(AtomicUsize::new(0));
        let ask = |shared: SharedAnswer, computed: Arc<AtomicUsize>| async move {
            shared
                .get(7, || async move {
                    let n = computed.fetch_add(1, Ordering::SeqCst) + 1;
                    // A slow check (the database's `SELECT 1`).
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    (StatusCode::OK, json!({ "n": n }))
                })
                .await
        };
        let started = Instant::now();
        let waiting: Vec<_> = (0..50)
            .map(|_| tokio::spawn(ask(shared.clone(), computed.clone())))
            .collect();
        for request in waiting {
            let response = request.await.expect("join");
            assert_eq!(response.status(), StatusCode::OK);
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            let value: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(value, json!({ "n": 1, "schema": json::SCHEMA }));
        }
        assert_eq!(computed.load(Ordering::SeqCst), 1, "one computation for 50");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(500),
            "not 50 in a row"
        );
        // Within the second: the same answer; after it, a new one.
        let _ = ask(shared.clone(), computed.clone()).await;
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        tokio::time::advance(HEALTH_MAX_AGE).await;
        let _ = ask(shared.clone(), computed.clone()).await;
        assert_eq!(computed.load(Ordering::SeqCst), 2);
        // Another key (a stage changed state) is computed at once, within the second.
        let _ = shared
            .get(8, || async { (StatusCode::OK, json!({})) })
            .await;
        let _ = ask(shared.clone(), computed.clone()).await;
        assert_eq!(
            computed.load(Ordering::SeqCst),
            3,
            "the key changed back: computed"
        );
    }
}
