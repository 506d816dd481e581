//! SIGTERM at each step of the start: waiting for NATS, creating the cluster, migrating.

use super::*;

/// A loopback port where nothing answers.
fn silent_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test]
async fn sigterm_while_waiting_for_nats_stops_the_database_and_the_next_start_works() {
    let sim = simulator().await;
    let data = DataDir::new();
    let mut envs = feed(&sim);
    envs.push(("NATS_URL", format!("nats://127.0.0.1:{}", silent_port())));
    let mut serve = Serve::start(&data, &envs);
    serve.wait_logged("embedded PostgreSQL running").await;
    let postmaster = postmaster_pid(&data.cluster()).expect("the database runs");
    assert!(alive(postmaster));
    assert!(
        serve.logged("listening").is_none(),
        "without NATS the service cannot have finished starting"
    );

    signal(serve.pid(), "-TERM");
    let status = serve.wait_exit().await;
    assert!(status.success(), "exit {status}: {}", serve.log());
    // The service stops its children before it exits: nothing to wait for.
    assert!(
        !alive(postmaster),
        "the postmaster {postmaster} was left running"
    );
    assert_eq!(processes_of(&data.path), Vec::<u32>::new());
    assert_eq!(postmaster_pid(&data.cluster()), None, "a clean shutdown");

    // The next start in the same directory (embedded NATS this time) comes up.
    let mut again = Serve::start(&data, &feed(&sim));
    again.wait_healthy().await;
    stop_cleanly(again, &data).await;
    sim.stop().await;
}

#[tokio::test]
async fn sigterm_while_the_cluster_is_created_leaves_nothing_and_the_next_start_works() {
    let data = DataDir::new();
    let nats = format!("nats://127.0.0.1:{}", silent_port());
    let mut serve = Serve::start(&data, &[("NATS_URL", nats)]);
    // initdb (or whatever it started) runs in the directory.
    wait_for("initdb to run", START, || {
        let running = !processes_of(&data.path).is_empty();
        async move { running }
    })
    .await;
    signal(serve.pid(), "-TERM");
    let status = serve.wait_exit().await;
    assert!(status.success(), "exit {status}: {}", serve.log());
    assert_eq!(
        processes_of(&data.path),
        Vec::<u32>::new(),
        "initdb or the server outlived the service"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_spot-canvas"))
        .args(["migrate", "up"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", data.text())
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "the next start works: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(processes_of(&data.path), Vec::<u32>::new());
}

#[tokio::test]
async fn sigterm_during_migrate_leaves_no_database_running_and_the_next_migrate_works() {
    let data = DataDir::new();
    let migrate = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_spot-canvas"));
        command
            .args(["migrate", "up"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATA_DIR", data.text())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        command
    };
    let mut child = migrate().spawn().expect("migrate starts");
    wait_for("migrate to start the database", START, || {
        let running = !processes_of(&data.path).is_empty();
        async move { running }
    })
    .await;
    signal(child.id(), "-TERM");
    let status = common::eventually("migrate to exit", START, || {
        let exited = child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    assert!(
        !status.success(),
        "an interrupted migrate says so in its exit code"
    );
    assert_eq!(
        processes_of(&data.path),
        Vec::<u32>::new(),
        "initdb or the server outlived migrate"
    );
    let output = migrate().output().expect("runs");
    assert!(
        output.status.success(),
        "the next migrate works: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(processes_of(&data.path), Vec::<u32>::new());
}
