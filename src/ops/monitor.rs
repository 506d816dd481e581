//! The monitor stage: once a second, the backpressure of every bounded channel and the alarms.
//!
//! In: [`Watch`]: the bounded channels between the stages (held weakly: the monitor never keeps
//! a channel open), the readiness probe, the live view's product activity, the clock
//! comparison, the database. Out: the gauges
//! `spot_canvas_channel_{length,capacity,utilization}`, `spot_canvas_ready`, the alarm report
//! (every second; the database and readiness checks every [`CHECK_EVERY`] rounds, each within
//! the health check's timeout), and the exporter's upkeep.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::alarms::{self, Alarms, Readings};
use super::clock::ClockState;
use super::readiness::{DATABASE_TIMEOUT, Probe, error_kind};
use crate::supervise::Stages;
use crate::telemetry::Channels;

/// Seconds between rounds.
const ROUND: Duration = Duration::from_secs(1);
/// Rounds between readiness checks (a database round trip) and exporter upkeeps.
const CHECK_EVERY: u64 = 5;

/// Failed pings in a row before the database alarm is raised: one slow answer under load is
/// not an outage.
const DATABASE_FAILURES: u32 = 2;

/// Pings the database through `database` (the service's own pool, not the API's, which a busy
/// API may have in use): `None` when it answered within the health check's timeout.
async fn ping(database: &crate::store::Repository) -> Option<String> {
    match tokio::time::timeout(DATABASE_TIMEOUT, database.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("SELECT 1 failed: {}", error_kind(&e))),
        Err(_elapsed) => Some(format!(
            "SELECT 1 did not answer within {DATABASE_TIMEOUT:?}"
        )),
    }
}

/// What the monitor watches and where its judgement goes.
#[derive(Debug, Clone)]
pub struct Watch {
    pub channels: Channels,
    /// Readiness, through the API's pool (as `/health/ready` sees it).
    pub probe: Probe,
    pub stages: Arc<Stages>,
    /// Cancelled when the instance stops taking clients: not ready any more.
    pub stopping: CancellationToken,
    /// The exporter, for its upkeep (`None`: no metrics in this process).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The live view's product activity (the quiet-product alarm).
    pub activity: Arc<crate::live::ActivityTracker>,
    pub clock: Option<Arc<ClockState>>,
    pub alarms: Arc<Alarms>,
}

/// Runs the rounds until `token`. `database` is the service's own pool.
pub async fn run(
    watch: Watch,
    database: crate::store::Repository,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let Watch {
        channels,
        probe,
        stages,
        stopping,
        metrics: exporter,
        activity,
        clock,
        alarms: judged,
    } = watch;
    let mut every = tokio::time::interval(ROUND);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    let mut database_failures: u32 = 0;
    let mut database_error: Option<String> = None;
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        crate::telemetry::channels::sample(&channels);
        if round.is_multiple_of(CHECK_EVERY) {
            let stages = stages.report();
            let (checks, pinged) = tokio::select! {
                () = token.cancelled() => return Ok(()),
                both = async {
                    tokio::join!(super::readiness::checks(&probe, &stages), ping(&database))
                } => both,
            };
            match pinged {
                None => {
                    database_failures = 0;
                    database_error = None;
                }
                Some(why) => {
                    database_failures = database_failures.saturating_add(1);
                    database_error = Some(why);
                }
            }
            let ready = checks.ok() && !stopping.is_cancelled();
            metrics::gauge!("spot_canvas_ready").set(if ready { 1.0 } else { 0.0 });
            if let Some(handle) = &exporter {
                handle.run_upkeep();
            }
        }
        round = round.wrapping_add(1);
        let nats = probe.nats.as_ref().and_then(|client| {
            let connection = client.connection_state();
            (connection != async_nats::connection::State::Connected)
                .then(|| format!("NATS connection {connection}"))
        });
        let now = chrono::Utc::now();
        let readings = Readings {
            tracked_products: activity.products(),
            feed: probe.role.ingests().then(|| probe.feed.report()),
            quiet: activity.quiet(now),
            clock: clock.as_ref().map(|c| c.report()),
            database: (database_failures >= DATABASE_FAILURES)
                .then(|| database_error.clone())
                .flatten(),
            nats,
        };
        judged.set(alarms::evaluate(readings, now));
    }
}
