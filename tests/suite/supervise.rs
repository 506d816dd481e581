//! Supervision end to end, on the whole service in-process with its embedded PostgreSQL and
//! nats-server: a stage ended as a fault would is handled by the README's policy. `live-state`
//! (like `catalog` and `summary`) is restarted with backoff while `/health` names it; `engine`
//! (like every other stage) stops the service in order, `run_until_stopped` returns an error
//! naming it, and the embedded servers are stopped.

use crate::common;

use std::time::Duration;

use common::{AppEnv, TestApp, processes_mentioning};
use serde_json::Value;
use spot_canvas_sim::{SimConfig, Simulator};

async fn sim() -> Simulator {
    Simulator::start(SimConfig {
        products: 2,
        trades_per_second: 5.0,
        history_minutes: 3,
        ..SimConfig::default()
    })
    .await
    .expect("sim")
}

fn failed_stages(h: &Value) -> Vec<&str> {
    h["failed_stages"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// `/health` is 200 and every stage, embedded servers' watchdogs included, runs.
async fn wait_until_healthy(app: &TestApp) -> Value {
    app.wait_for_health(
        "the service to be up",
        Duration::from_secs(90),
        |status, h| {
            status == 200
                && h["status"] == "ok"
                && ["postgres", "nats-server", "engine", "live-state"]
                    .iter()
                    .all(|s| h["stages"][s]["state"] == "running")
        },
    )
    .await
}

#[tokio::test]
async fn an_ended_live_state_is_restarted_while_health_names_it() {
    let sim = sim().await;
    let data = common::data_dir();
    let app = TestApp::start(&AppEnv::for_sim(&sim, data.path()), |_| {}).await;
    let before = wait_until_healthy(&app).await;
    assert_eq!(before["stages"]["live-state"]["policy"], "restart");
    assert_eq!(before["stages"]["live-state"]["restarts"], 0);

    assert!(app.stages.end_stage("live-state"), "a known stage");
    // The backoff of the first restart is 0.25–0.5 s: /health says so meanwhile.
    let restarting = app
        .wait_for_health(
            "/health to name the restarting stage",
            Duration::from_secs(10),
            |status, h| status == 503 && failed_stages(h) == ["live-state"],
        )
        .await;
    assert_eq!(restarting["status"], "degraded");
    assert_eq!(
        restarting["stages"]["live-state"]["state"], "restarting",
        "{restarting:#}"
    );
    let after = app
        .wait_for_health(
            "the stage to run again",
            Duration::from_secs(30),
            |status, h| status == 200 && h["stages"]["live-state"]["state"] == "running",
        )
        .await;
    assert_eq!(after["stages"]["live-state"]["restarts"], 1, "{after:#}");
    assert!(failed_stages(&after).is_empty(), "{after:#}");
    // The rest of the service never stopped.
    assert_eq!(after["stages"]["engine"]["restarts"], 0);
    assert_eq!(after["stages"]["engine"]["state"], "running");
    // The restarted live state works: it hears NATS again.
    let messages = after["bus"]["live"]["messages"].as_u64().unwrap_or(0);
    app.wait_for_health(
        "the restarted live state to take messages from NATS",
        Duration::from_secs(60),
        |_, h| h["bus"]["live"]["messages"].as_u64() > Some(messages),
    )
    .await;
    app.stop().await.expect("stops cleanly after the restart");
    sim.stop().await;
}

#[tokio::test]
async fn an_ended_engine_stops_the_service_with_an_error_naming_it() {
    let sim = sim().await;
    let data = common::data_dir();
    let mut app = TestApp::start(&AppEnv::for_sim(&sim, data.path()), |_| {}).await;
    let before = wait_until_healthy(&app).await;
    assert_eq!(before["stages"]["engine"]["policy"], "fatal");
    assert!(
        !processes_mentioning(data.path()).is_empty(),
        "the embedded servers run for the DATA_DIR"
    );

    assert!(app.stages.end_stage("engine"), "a known stage");
    // While the ordered stop runs (the writer flushes, the servers stop), /health says why;
    // the HTTP server is the last to stop.
    let stopping = app
        .wait_for_health(
            "/health to name the failed engine",
            Duration::from_secs(30),
            |status, h| status == 503 && failed_stages(h).contains(&"engine"),
        )
        .await;
    assert_eq!(
        stopping["stages"]["engine"]["state"], "failed",
        "{stopping:#}"
    );

    let error = app
        .finished(common::STOP_WITHIN)
        .await
        .expect_err("a fatal stage's end is an error (a non-zero exit)");
    let message = format!("{error:#}");
    assert!(message.contains("engine"), "{message}");
    // The ordered stop ran to its end: the HTTP server is gone, and no embedded server is left
    // for the DATA_DIR.
    assert!(app.health().await.is_none(), "the HTTP server stopped");
    common::wait_for(
        "no process left for the DATA_DIR",
        Duration::from_secs(30),
        || async { processes_mentioning(data.path()).is_empty() },
    )
    .await;
    assert!(
        !data.path().join("postgres/postmaster.pid").exists(),
        "PostgreSQL shut down"
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_stage_spawned_on_a_lane_runs_on_its_thread_and_its_spawns_stay_there() {
    let lane = spot_canvas::supervise::Lane::start("test-lane").expect("lane");
    let names = lane
        .handle()
        .spawn(async {
            let outer = std::thread::current().name().map(str::to_owned);
            let inner = tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                .await
                .expect("inner");
            (outer, inner)
        })
        .await
        .expect("joined from another runtime");
    assert_eq!(
        names,
        (Some("test-lane".to_owned()), Some("test-lane".to_owned()))
    );
    // Its tasks count in the process's figures while it runs.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let held = lane.handle().spawn(async move {
        let _ = rx.await;
    });
    assert!(spot_canvas::supervise::lane_tasks() >= 1);
    drop(tx);
    held.await.expect("ends");
}
