//! Health: `GET /health/live` (the process answers), `GET /health/ready` and `GET /health`
//! (the feed when this instance ingests, NATS, the database and the stages; `/health` adds the
//! alarms, the clock comparison, the process (pid, tasks, memory) and every stage's report).
//!
//! In: the feed's connections, the NATS client's connection state, a `SELECT 1` through the
//! API pool (within [`DATABASE_TIMEOUT`]) and the stage registry. Out: 200 with
//! `"status": "ok"` when every check passes; 503 with `"status": "degraded"` otherwise, and
//! `"checks"` saying which check failed and why. `/health` adds every stage's state and counts.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use super::json;
use crate::supervise::StagesReport;

/// Longest wait for the database's `SELECT 1`.
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// One check's outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn new(ok: bool, detail: impl Into<String>) -> Check {
        Check {
            ok,
            detail: detail.into(),
        }
    }
}

/// The four checks of readiness.
#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    pub feed: Check,
    pub nats: Check,
    pub database: Check,
    pub stages: Check,
}

impl Checks {
    pub fn ok(&self) -> bool {
        self.feed.ok && self.nats.ok && self.database.ok && self.stages.ok
    }
}

/// Runs the checks (the database one waits up to [`DATABASE_TIMEOUT`]).
pub async fn checks(state: &AppState, stages: &StagesReport) -> Checks {
    let feed = feed_check(state);
    let nats = match &state.nats {
        None => Check::new(true, "not checked: no NATS client in this process"),
        Some(client) => {
            let connection = client.connection_state();
            Check::new(
                connection == async_nats::connection::State::Connected,
                format!("NATS connection {connection}"),
            )
        }
    };
    let database = match tokio::time::timeout(DATABASE_TIMEOUT, state.repository.ping()).await {
        Ok(Ok(())) => Check::new(true, "SELECT 1 answered"),
        // The kind of failure only: sqlx errors may quote connection details.
        Ok(Err(e)) => Check::new(false, format!("SELECT 1 failed: {}", error_kind(&e))),
        Err(_elapsed) => Check::new(
            false,
            format!("SELECT 1 did not answer within {DATABASE_TIMEOUT:?}"),
        ),
    };
    let stages = if stages.failed.is_empty() {
        Check::new(true, "every stage runs")
    } else {
        Check::new(
            false,
            format!("stages not running: {}", stages.failed.join(", ")),
        )
    };
    Checks {
        feed,
        nats,
        database,
        stages,
    }
}

/// The feed's part of readiness: an instance that ingests needs a connection up, unless its
/// shard holds no products; one that does not ingest is not judged by it.
fn feed_check(state: &AppState) -> Check {
    if !state.role.ingests() {
        return Check::new(
            true,
            "not checked: this instance does not ingest (ROLE=web)",
        );
    }
    let feed = state.feed.report();
    if feed.connected == 0 && feed.assigned == Some(0) {
        return Check::new(true, "this shard holds no products: no connection needed");
    }
    Check::new(
        feed.connected > 0,
        format!(
            "{} of {} feed connections up",
            feed.connected,
            feed.connections.len()
        ),
    )
}

/// What went wrong, without anything the error may quote (URLs, hosts, user names).
pub(crate) fn error_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::PoolTimedOut => "no connection available (the database does not answer)",
        sqlx::Error::PoolClosed => "the pool is closed",
        sqlx::Error::Io(_) => "connection error",
        sqlx::Error::Tls(_) => "TLS error",
        sqlx::Error::Database(_) => "the database refused the query",
        sqlx::Error::Protocol(_) => "protocol error",
        _ => "error",
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
    let stages = state.stages.report();
    let checks = checks(&state, &stages).await;
    // Stopping: no new clients here (a load balancer sends them elsewhere).
    let stopping = state.streams.stop.is_cancelled();
    let (status, word) = if stopping {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else {
        status_of(checks.ok())
    };
    json::answer(status, json!({ "status": word, "checks": checks }))
}

/// `GET /health`: the checks and every stage's state and counts.
pub async fn health(State(state): State<AppState>) -> Response {
    let stages = state.stages.report();
    let checks = checks(&state, &stages).await;
    let (status, word) = status_of(checks.ok());
    let body: Value = json!({
        "status": word,
        "checks": checks,
        "version": env!("CARGO_PKG_VERSION"),
        "role": state.role,
        "process": crate::ops::process::ProcessReport::now(),
        "alarms": state.alarms.report(),
        "clock": state.clock.as_ref().map(|c| c.report()),
        "simulated": state.simulated,
        "feed_url": crate::config::redact_url(&state.ws_url),
        "failed_stages": stages.failed,
        "stages": stages.stages,
        "feed": state.feed.report(),
        "engine": state.engine.report(),
        "store": {
            "table": state.table,
            "writer": state.writer.report(),
        },
        "reconcile": state.reconcile.report(),
        "bus": {
            "publisher": state.publisher.report(),
            "live": state.live.report(),
        },
    });
    json::answer(status, body)
}
