//! Running the built service: every stage spawned through the [`Supervisor`], the first
//! early end of a fatal stage or the stop signal answered by the ordered stop.
//!
//! The stop signal reaches every stage in order: the feed is cancelled and closes its sockets;
//! its channel closing stops the engine after the events it holds; the engine's output closing
//! stops the fan-out, then the writer and the publisher after their last flush (the writer's
//! is one bounded attempt: what it cannot write goes to JetStream with an external NATS, else to
//! its spool in `DATA_DIR`, and a forced stop waits up to 1 s for that); then the live
//! state, the embedded servers' watchdogs and the HTTP server. Stages that stop on a closed input
//! also get a token that is cancelled when the grace period runs out, so that nothing outlives
//! it. Whatever happens, the embedded servers are stopped at the end.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{App, SHUTDOWN_GRACE, stop_embedded};
use crate::store::Repository;
use crate::supervise::Supervisor;
use crate::web::{AppState, router};

/// How long a forced stop waits for the writer to keep what it holds.
const WRITER_FORCED_WAIT: Duration = Duration::from_secs(1);

/// Time the publisher gets to flush once the fan-out has ended, within the stages' grace.
const PUBLISHER_GRACE: Duration = Duration::from_secs(3);

/// Time open connections get to finish their requests once the HTTP server stops.
const HTTP_GRACE: Duration = Duration::from_secs(1);

/// Awaits a stage's end, for the ordered stop.
async fn joined(handle: JoinHandle<()>) {
    // A panic is caught inside the stage's task; an abort only happens at runtime shutdown.
    let _ended = handle.await;
}

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
    /// Runs until `cancel` or until a fatal stage ends early, then stops the stages in order
    /// (see the module docs). Returns an error when a stage ended early or the stop overran its
    /// grace period, so that the process exits non-zero.
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
        if state.simulated && state.role.ingests() {
            tracing::warn!(ws_url = %crate::config::redact(&state.ws_url), "running on a SIMULATED feed, not Coinbase");
        }
        tracing::info!(role = state.role.as_str(), "role");
        let mut supervisor = Supervisor::new(stages.clone());
        // Cancelled in stop order.
        let feed_stop = CancellationToken::new();
        let catalog_stop = CancellationToken::new();
        let live_stop = CancellationToken::new();
        let watchdog_stop = CancellationToken::new();
        let http_stop = CancellationToken::new();
        // Cancelled only when the grace period runs out.
        let overdue = CancellationToken::new();

        let pg_watchdog = embedded.clone().map(|pg| {
            supervisor.spawn_fatal("postgres", &watchdog_stop, move |token| async move {
                pg.supervise(token).await;
                Ok(())
            })
        });
        let nats_watchdog = embedded_nats.clone().map(|n| {
            supervisor.spawn_fatal("nats-server", &watchdog_stop, move |token| async move {
                n.supervise(token).await;
                Ok(())
            })
        });
        // The web role's view of the candles comes from NATS; an ingest-only instance has no
        // stream clients, and its own updates reach its live state through the fan-out.
        let live_task = state.role.serves_web().then(|| {
            let (live, client, kv) = (state.live.clone(), nats.0.clone(), nats.1.clone());
            supervisor.spawn_restarting("live-state", &live_stop, move |token| {
                live.clone().run(client.clone(), kv.clone(), token)
            })
        });
        let summary_task = {
            let (engine, writer, feed) = (
                state.engine.clone(),
                state.writer.clone(),
                state.feed.clone(),
            );
            supervisor.spawn_restarting("summary", &catalog_stop, move |token| {
                crate::ops::summary::summarize(engine.clone(), writer.clone(), feed.clone(), token)
            })
        };
        let seed_task = state.role.serves_web().then(|| {
            let (day, repository) = (state.live.day().clone(), state.repository.clone());
            supervisor.spawn_restarting("day-seed", &catalog_stop, move |token| {
                crate::live::seed_day(day.clone(), repository.clone(), token)
            })
        });
        let monitor_task = {
            let watch = crate::ops::monitor::Watch {
                channels: channels.clone(),
                probe: state.probe(),
                stages: state.stages.clone(),
                stopping: state.streams.stop.clone(),
                metrics: state.metrics.clone(),
                activity: state.live.activity().clone(),
                clock: state.clock.clone(),
                alarms: state.alarms.clone(),
            };
            let database = repository.clone();
            supervisor.spawn_restarting("monitor", &catalog_stop, move |token| {
                crate::ops::monitor::run(watch.clone(), database.clone(), token)
            })
        };
        // The publisher's own end: cancelled with `overdue`, or once its input has closed and
        // it has had PUBLISHER_GRACE to flush.
        let publisher_stop = overdue.child_token();
        // Cancelled when the writer's task ends (or at once without one).
        let writer_done = CancellationToken::new();
        let pipeline = match ingest {
            Some(ingest) => Some(spawn_ingest(
                &mut supervisor,
                ingest,
                &state,
                repository,
                [&feed_stop, &catalog_stop, &overdue, &publisher_stop],
                writer_done.clone(),
            )),
            None => {
                writer_done.cancel();
                None
            }
        };
        let routes = router(state.clone());
        let http_task = supervisor.spawn_fatal("http", &http_stop, |token| async move {
            crate::web::serve::serve(listener, routes, token, HTTP_GRACE)
                .await
                .map_err(anyhow::Error::from)
        });
        let metrics_task = metrics_listener.map(|listener| {
            let routes = crate::web::metrics_router(state.clone());
            supervisor.spawn_fatal("metrics-http", &http_stop, |token| async move {
                crate::web::serve::serve(listener, routes, token, HTTP_GRACE)
                    .await
                    .map_err(anyhow::Error::from)
            })
        });
        tracing::info!("serving");

        let early = tokio::select! {
            () = cancel.cancelled() => None,
            end = supervisor.early_end() => Some(end),
        };
        stages.begin_stop();
        tracing::info!("stopping");
        metrics::gauge!("spot_canvas_ready").set(0.0);
        // Streams end first: their clients reconnect (to another instance) at once.
        state.streams.stop.cancel();
        let writer_report = state.writer.clone();
        let stopped = async {
            // The helpers beside the feed first, so that none sees the feed's end as a failure.
            catalog_stop.cancel();
            feed_stop.cancel();
            if let Some(pipeline) = pipeline {
                pipeline.joined(&publisher_stop).await;
            }
            live_stop.cancel();
            if let Some(live_task) = live_task {
                joined(live_task).await;
            }
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
            joined(summary_task).await;
            joined(monitor_task).await;
            if let Some(seed_task) = seed_task {
                joined(seed_task).await;
            }
        };
        let in_time = tokio::time::timeout(SHUTDOWN_GRACE, stopped).await.is_ok();
        if !in_time {
            tracing::error!(grace = ?SHUTDOWN_GRACE, "stages did not stop in time; forcing them");
            overdue.cancel();
            feed_stop.cancel();
            live_stop.cancel();
            // The writer keeps what it holds as a step of its stop: wait for it, bounded.
            if tokio::time::timeout(WRITER_FORCED_WAIT, writer_done.cancelled())
                .await
                .is_err()
            {
                tracing::error!(wait = ?WRITER_FORCED_WAIT, "the writer did not keep its rows in time after the forced stop");
            }
        }
        // The watchdogs end before the servers stop, so that none starts a server again.
        watchdog_stop.cancel();
        for watchdog in [pg_watchdog, nats_watchdog].into_iter().flatten() {
            if tokio::time::timeout(Duration::from_secs(2), joined(watchdog))
                .await
                .is_err()
            {
                tracing::warn!("an embedded server's watchdog did not stop within 2 s");
            }
        }
        // The servers go last, whatever happened above.
        stop_embedded(embedded.as_deref(), embedded_nats.as_ref()).await;
        http_stop.cancel();
        let servers = async {
            joined(http_task).await;
            if let Some(metrics_task) = metrics_task {
                joined(metrics_task).await;
            }
        };
        if tokio::time::timeout(HTTP_GRACE + Duration::from_secs(1), servers)
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

/// The running ingest pipeline's tasks, joined in stop order.
struct Pipeline {
    feed: JoinHandle<()>,
    catalog: JoinHandle<()>,
    clock: Option<JoinHandle<()>>,
    engine: JoinHandle<()>,
    reconciler: JoinHandle<()>,
    fanout: JoinHandle<()>,
    writer: JoinHandle<()>,
    publisher: JoinHandle<()>,
}

impl Pipeline {
    /// Waits for the stages in order: the feed first (its channel closing stops the engine),
    /// the sinks last (after their final flush). Once the fan-out has ended, the publisher has
    /// [`PUBLISHER_GRACE`] to flush, then `publisher_stop` ends it: NATS carries live updates
    /// and the KV a cache of them, while the writer's rows are the record and keep the whole
    /// grace. A NATS cluster in the middle of an election must not make the stop overrun.
    async fn joined(self, publisher_stop: &CancellationToken) {
        joined(self.feed).await;
        joined(self.catalog).await;
        if let Some(clock) = self.clock {
            joined(clock).await;
        }
        joined(self.engine).await;
        joined(self.reconciler).await;
        joined(self.fanout).await;
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
        let sinks = async {
            joined(self.writer).await;
            joined(self.publisher).await;
        };
        tokio::select! {
            () = sinks => {}
            () = give_up => {}
        }
    }
}

/// Spawns the ingest stages. `feed_stop` stops the feed, `catalog_stop` the helpers beside it;
/// the rest stop on their closed inputs, or on `overdue` when the grace runs out.
/// `writer_done` is cancelled when the writer's task ends.
fn spawn_ingest(
    supervisor: &mut Supervisor,
    ingest: super::Ingest,
    state: &AppState,
    repository: Repository,
    [feed_stop, catalog_stop, overdue, publisher_stop]: [&CancellationToken; 4],
    writer_done: CancellationToken,
) -> Pipeline {
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
    let catalog = {
        let catalog = feed.catalog();
        supervisor.spawn_restarting("catalog", catalog_stop, move |token| {
            until(token, keep_products(catalog.clone(), repository.clone()))
        })
    };
    let clock = clock.map(|clock| {
        supervisor.spawn_restarting("clock", catalog_stop, move |token| clock.clone().run(token))
    });
    let feed = supervisor.spawn_fatal("feed", feed_stop, |token| feed.run(token));
    let engine = supervisor.spawn_fatal("engine", overdue, |token| engine.run(token));
    let reconciler = supervisor.spawn_fatal("reconciler", overdue, |token| reconciler.run(token));
    let fanout = {
        let live = state.live.clone();
        supervisor.spawn_fatal("fan-out", overdue, |token| {
            until(
                token,
                crate::live::fan_out(updates, live, to_writer, to_publisher),
            )
        })
    };
    // The writer ends itself on `overdue`: it keeps what it holds first (an awaited step).
    let writer = supervisor.spawn_fatal("writer", overdue, move |token| async move {
        let _done = writer_done.drop_guard();
        writer.run_until(token).await
    });
    let publisher = supervisor.spawn_fatal("publisher", publisher_stop, |token| {
        until(token, publisher.run())
    });
    Pipeline {
        feed,
        catalog,
        clock,
        engine,
        reconciler,
        fanout,
        writer,
        publisher,
    }
}

/// Keeps `trading_pairs` in step with the feed's product list; ends when the feed does.
async fn keep_products(
    mut catalog: tokio::sync::watch::Receiver<Vec<crate::model::Product>>,
    repository: Repository,
) -> anyhow::Result<()> {
    // A restart re-reads the current list.
    catalog.mark_changed();
    while catalog.changed().await.is_ok() {
        let products = catalog.borrow_and_update().clone();
        if products.is_empty() {
            continue;
        }
        match repository.upsert_products(&products).await {
            Ok(written) => tracing::info!(
                products = written.changed,
                merged = written.merged,
                refused = written.refused.len(),
                "trading pairs updated"
            ),
            // The next refresh (every 10 minutes) tries again.
            Err(e) => tracing::warn!(error = %e, "cannot update trading pairs"),
        }
    }
    anyhow::bail!("the feed's product list closed")
}
