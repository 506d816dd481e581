//! Readiness: whether this instance can do its role now.
//!
//! In: a [`Probe`] (the feed's connections, the NATS client's connection state, a database
//! pool to send `SELECT 1` through within [`DATABASE_TIMEOUT`], the role) and the stage
//! registry's report. Out: the four [`Checks`], each with a detail saying why it failed; the
//! web layer answers `/health/ready` and `/health` with them, the monitor sets
//! `spot_canvas_ready` from them.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::Role;
use crate::feed::FeedHealth;
use crate::store::Repository;
use crate::supervise::StagesReport;

/// Longest wait for the database's `SELECT 1`.
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// What readiness looks at.
#[derive(Debug, Clone)]
pub struct Probe {
    pub feed: Arc<FeedHealth>,
    pub role: Role,
    /// The service's NATS client (`None`: not checked).
    pub nats: Option<async_nats::Client>,
    /// The pool `SELECT 1` goes through.
    pub database: Repository,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn new(ok: bool, detail: impl Into<String>) -> Check {
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
pub async fn checks(probe: &Probe, stages: &StagesReport) -> Checks {
    let feed = feed_check(probe);
    let nats = match &probe.nats {
        None => Check::new(true, "not checked: no NATS client in this process"),
        Some(client) => {
            let connection = client.connection_state();
            Check::new(
                connection == async_nats::connection::State::Connected,
                format!("NATS connection {connection}"),
            )
        }
    };
    let database = match tokio::time::timeout(DATABASE_TIMEOUT, probe.database.ping()).await {
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
fn feed_check(probe: &Probe) -> Check {
    if !probe.role.ingests() {
        return Check::new(
            true,
            "not checked: this instance does not ingest (ROLE=web)",
        );
    }
    let feed = probe.feed.report();
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
pub fn error_kind(e: &sqlx::Error) -> &'static str {
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
