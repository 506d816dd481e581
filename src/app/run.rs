//! Running the built service: every stage spawned through the [`Supervisor`], the first
//! early end of a fatal stage or the stop signal answered by the ordered stop.
//!
//! The stop runs the phases of [`Phase::ORDER`]: the streams end; the feed is cancelled and
//! closes its sockets; its channel closing stops the engine after the events it holds; the
//! engine's output closing stops the fan-out, then the writer and the publisher after their
//! last flush (the writer's is one bounded attempt: what it cannot write goes to JetStream
//! with an external NATS, else to its spool in `DATA_DIR`, and a forced stop waits up to 1 s
//! for that); then the live state, the embedded servers' watchdogs and the HTTP server.
//! Stages that stop on a closed input also watch their phase's token, cancelled only when the
//! grace period runs out, so that nothing outlives it. Whatever happens, the embedded servers
//! are stopped at the end.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{App, SHUTDOWN_GRACE, stop_embedded};
use crate::store::Repository;
use crate::supervise::{Lane, Phase, Phases, Supervisor};
use crate::web::{AppState, router};

/// How long a forced stop waits for the writer to keep what it holds.
const WRITER_FORCED_WAIT: Duration = Duration::from_secs(1);

/// Time the publisher gets to flush once the fan-out has ended, within the stages' grace.
const PUBLISHER_GRACE: Duration = Duration::from_secs(3);

/// Time open connections get to finish their requests once the HTTP server stops.
const HTTP_GRACE: Duration = Duration::from_secs(1);

/// Runs `future` until it ends or `token` is cancelled (then `Ok`): for stages that stop on a
/// closed input and have no token of their own.
async fn until(
    token: CancellationToken,
    future: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    // The token first: a future that fails because the stop took its input away (the feed's
    // product list closing) is no failure once the stop has begun.
    tokio::select! {
        biased;
        () = token.cancelled() => Ok(()),
        result = future => if token.is_cancelled() { Ok(()) } else { result },
    }
}

impl App {
    /// Runs until `cancel` or until a fatal stage ends early, then stops the stages phase by
    /// phase ([`Phase::ORDER`]). Returns an error when a stage ended early or the stop overran
    /// its grace period, so that the process exits non-zero.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let App {
            listener,
            metrics_listener,
            ingest,
            channels,
            nats,
            embedded,
            embedded_nats,
            state,
            stages,
            repository,
        } = self;
        if state.instance.simulated && state.instance.role.ingests() {
            tracing::warn!(ws_url = %crate::config::redact(&state.instance.ws_url), "running on a SIMULATED feed, not Coinbase");
        }
        tracing::info!(role = state.instance.role.as_str(), "role");
        let mut supervisor = Supervisor::new(stages.clone());
        let mut phases = Phases::new().with_token(Phase::Streams, state.streams.stop.clone());

        if let Some(pg) = embedded.clone() {
            let watchdog = supervisor.spawn_fatal(
                "postgres",
                phases.token(Phase::Watchdogs),
                move |token| async move {
                    pg.supervise(token).await;
                    Ok(())
                },
            );
            phases.track(Phase::Watchdogs, "postgres", watchdog);
        }
        if let Some(n) = embedded_nats.clone() {
            let watchdog = supervisor.spawn_fatal(
                "nats-server",
                phases.token(Phase::Watchdogs),
                move |token| async move {
                    n.supervise(token).await;
                    Ok(())
                },
            );
            phases.track(Phase::Watchdogs, "nats-server", watchdog);
        }
        // The web role's view of the candles comes from NATS; an ingest-only instance has no
        // stream clients, and its own updates reach its live state through the fan-out.
        if state.instance.role.serves_web() {
            let (live, client, kv) = (state.live.clone(), nats.0.clone(), nats.1.clone());
            let task = supervisor.spawn_restarting(
                "live-state",
                phases.token(Phase::Live),
                move |token| live.clone().run(client.clone(), kv.clone(), token),
            );
            phases.track(Phase::Live, "live-state", task);
        }
        let (engine, writer, feed) = (
            state.reports.engine.clone(),
            state.reports.writer.clone(),
            state.reports.feed.clone(),
        );
        let summary =
            supervisor.spawn_restarting("summary", phases.token(Phase::Helpers), move |token| {
                crate::ops::summary::summarize(engine.clone(), writer.clone(), feed.clone(), token)
            });
        phases.track(Phase::Helpers, "summary", summary);
        if state.instance.role.serves_web() {
            let (day, repository) = (state.live.day().clone(), state.repository.clone());
            let seed = supervisor.spawn_restarting(
                "day-seed",
                phases.token(Phase::Helpers),
                move |token| crate::live::seed_day(day.clone(), repository.clone(), token),
            );
            phases.track(Phase::Helpers, "day-seed", seed);
        }
        let watch = crate::ops::monitor::Watch {
            channels: channels.clone(),
            probe: state.probe(),
            stages: state.reports.stages.clone(),
            stopping: state.streams.stop.clone(),
            metrics: state.exporter.handle.clone(),
            activity: state.live.activity().clone(),
            clock: state.reports.clock.clone(),
            alarms: state.reports.alarms.clone(),
        };
        let database = repository.clone();
        let monitor =
            supervisor.spawn_restarting("monitor", phases.token(Phase::Helpers), move |token| {
                crate::ops::monitor::run(watch.clone(), database.clone(), token)
            });
        phases.track(Phase::Helpers, "monitor", monitor);
        // The publisher's own end: cancelled with the sinks' phase when forced, or once the
        // fan-out has ended and it has had PUBLISHER_GRACE to flush.
        let publisher_stop = phases.token(Phase::Sinks).child_token();
        // Cancelled when the writer's task ends (or at once without one).
        let writer_done = CancellationToken::new();
        // Held until the stages on it have stopped (the end of this function).
        let _lane = match ingest {
            Some(ingest) => Some(spawn_ingest(
                &mut supervisor,
                &mut phases,
                ingest,
                &state,
                repository,
                &publisher_stop,
                writer_done.clone(),
            )?),
            None => {
                writer_done.cancel();
                None
            }
        };
        let routes = router(state.clone());
        let http = supervisor.spawn_fatal("http", phases.token(Phase::Http), |token| async move {
            crate::web::serve::serve(listener, routes, token, HTTP_GRACE)
                .await
                .map_err(anyhow::Error::from)
        });
        phases.track(Phase::Http, "http", http);
        if let Some(listener) = metrics_listener {
            let routes = crate::web::metrics_router(state.clone());
            let task = supervisor.spawn_fatal(
                "metrics-http",
                phases.token(Phase::Http),
                |token| async move {
                    crate::web::serve::serve(listener, routes, token, HTTP_GRACE)
                        .await
                        .map_err(anyhow::Error::from)
                },
            );
            phases.track(Phase::Http, "metrics-http", task);
        }
        tracing::info!("serving");

        let early = tokio::select! {
            () = cancel.cancelled() => None,
            end = supervisor.early_end() => Some(end),
        };
        stages.begin_stop();
        tracing::info!("stopping");
        metrics::gauge!("spot_canvas_ready").set(0.0);
        let streams = phases.stop(Phase::Streams);
        let intake = phases.stop(Phase::Intake);
        let pipeline = phases.drain(Phase::Pipeline, None);
        let sinks = phases.drain(Phase::Sinks, None);
        let live = phases.token(Phase::Live).clone();
        let live_joined = phases.drain(Phase::Live, None);
        let helpers = phases.drain(Phase::Helpers, None);
        let writer_report = state.reports.writer.clone();
        let stopped = async {
            streams.await;
            intake.await;
            pipeline.await;
            // Once the fan-out has ended, the publisher has PUBLISHER_GRACE to flush: NATS
            // carries live updates and the KV a cache of them, while the writer's rows are the
            // record and keep the whole grace. A NATS cluster in the middle of an election must
            // not make the stop overrun.
            let give_up = async {
                tokio::time::sleep(PUBLISHER_GRACE).await;
                tracing::error!(
                    grace = ?PUBLISHER_GRACE,
                    "the writer and the publisher did not finish in time; ending the publisher \
                     (the NATS KV may miss the last updates)"
                );
                publisher_stop.cancel();
                std::future::pending::<()>().await
            };
            tokio::select! {
                () = sinks => {}
                () = give_up => {}
            }
            live.cancel();
            live_joined.await;
            if tokio::time::timeout(Duration::from_secs(2), nats.0.flush())
                .await
                .is_err()
            {
                tracing::warn!("NATS flush timed out at stop");
            }
            let report = writer_report.report();
            tracing::info!(
                written = report.written_rows,
                pending = report.pending,
                kept = report.kept_at_stop,
                "writer flushed"
            );
            helpers.await;
        };
        let in_time = tokio::time::timeout(SHUTDOWN_GRACE, stopped).await.is_ok();
        if !in_time {
            tracing::error!(grace = ?SHUTDOWN_GRACE, "stages did not stop in time; forcing them");
            phases.force();
            // The writer keeps what it holds as a step of its stop: wait for it, bounded.
            if tokio::time::timeout(WRITER_FORCED_WAIT, writer_done.cancelled())
                .await
                .is_err()
            {
                tracing::error!(wait = ?WRITER_FORCED_WAIT, "the writer did not keep its rows in time after the forced stop");
            }
        }
        // The watchdogs end before the servers stop, so that none starts a server again.
        // Each within 2 s (one caught restarting its server must not keep the other running).
        phases
            .stop_each(Phase::Watchdogs, Duration::from_secs(2))
            .await;
        // The servers go last, whatever happened above.
        stop_embedded(embedded.as_deref(), embedded_nats.as_ref()).await;
        if tokio::time::timeout(
            HTTP_GRACE + Duration::from_secs(1),
            phases.stop(Phase::Http),
        )
        .await
        .is_err()
        {
            tracing::warn!("HTTP server did not stop in time");
        }
        if let Some((stage, why)) = early {
            anyhow::bail!("stage {stage} ended before the stop signal: {why}");
        }
        if !in_time {
            anyhow::bail!("stages did not stop within {SHUTDOWN_GRACE:?}");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Spawns the ingest stages, each tracked under the phase it stops in: the feed and its
/// product catalog and clock check in [`Phase::Intake`]; the engine, the reconciler and the fan-out in
/// [`Phase::Pipeline`] and the writer in [`Phase::Sinks`] (they stop on their closed inputs,
/// or on their phase's token when the grace runs out); the publisher on `publisher_stop`.
/// `writer_done` is cancelled when the writer's task ends. The feed, the engine and the
/// fan-out run on the returned [`Lane`].
fn spawn_ingest(
    supervisor: &mut Supervisor,
    phases: &mut Phases,
    ingest: super::Ingest,
    state: &AppState,
    repository: Repository,
    publisher_stop: &CancellationToken,
    writer_done: CancellationToken,
) -> anyhow::Result<Lane> {
    let super::Ingest {
        feed,
        engine,
        reconciler,
        writer,
        publisher,
        updates,
        to_writer,
        to_publisher,
        clock,
    } = ingest;
    let intake = phases.token(Phase::Intake).clone();
    let pipeline = phases.token(Phase::Pipeline).clone();
    let sinks = phases.token(Phase::Sinks).clone();
    let catalog = feed.catalog();
    // The path from a frame to the live state runs on a lane of its own: a burst of frames
    // is not queued behind the writes of every stream client.
    let lane = Lane::start("ingest")
        .map_err(|e| anyhow::anyhow!("cannot start the ingest thread: {e}"))?;
    let on = lane.handle().clone();
    // The feed first: its end closes the engine's input.
    let task = supervisor.spawn_fatal_on(&on, "feed", &intake, |token| feed.run(token));
    phases.track(Phase::Intake, "feed", task);
    let task = supervisor.spawn_restarting("catalog", &intake, move |token| {
        until(
            token,
            crate::store::keep_products(catalog.clone(), repository.clone()),
        )
    });
    phases.track(Phase::Intake, "catalog", task);
    if let Some(clock) = clock {
        let task =
            supervisor.spawn_restarting("clock", &intake, move |token| clock.clone().run(token));
        phases.track(Phase::Intake, "clock", task);
    }
    let task = supervisor.spawn_fatal_on(&on, "engine", &pipeline, |token| engine.run(token));
    phases.track(Phase::Pipeline, "engine", task);
    let task = supervisor.spawn_fatal("reconciler", &pipeline, |token| reconciler.run(token));
    phases.track(Phase::Pipeline, "reconciler", task);
    let live = state.live.clone();
    let task = supervisor.spawn_fatal_on(&on, "fan-out", &pipeline, |token| {
        until(
            token,
            crate::live::fan_out(updates, live, to_writer, to_publisher),
        )
    });
    phases.track(Phase::Pipeline, "fan-out", task);
    // The writer ends itself on its phase's token: it keeps what it holds first (an awaited
    // step).
    let task = supervisor.spawn_fatal("writer", &sinks, move |token| async move {
        let _done = writer_done.drop_guard();
        writer.run_until(token).await
    });
    phases.track(Phase::Sinks, "writer", task);
    let task = supervisor.spawn_fatal("publisher", publisher_stop, |token| {
        until(token, publisher.run())
    });
    phases.track(Phase::Sinks, "publisher", task);
    Ok(lane)
}
