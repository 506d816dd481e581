//! The embedded servers: no secret in their environment, stopped by dropping their last owner or by
//! a panic.

use super::*;

#[tokio::test]
async fn the_embedded_servers_get_no_secret_in_their_environment() {
    use base64::Engine;
    let sim = simulator().await;
    let data = DataDir::new();
    let key_name = "organizations/o-lifecycle/apiKeys/k-lifecycle-9f3c".to_owned();
    let signing = ed25519_dalek::SigningKey::from_bytes(&[11u8; 32]);
    let mut secret = signing.to_bytes().to_vec();
    secret.extend_from_slice(signing.verifying_key().as_bytes());
    let private_key = base64::engine::general_purpose::STANDARD.encode(&secret);
    let mut envs = feed(&sim);
    envs.push(("COINBASE_API_KEY", key_name.clone()));
    envs.push(("COINBASE_PRIVATE_KEY", private_key.clone()));
    envs.push(("SPOT_CANVAS_TEST_MARKER", "marker-7d1e".into()));
    let mut serve = Serve::start(&data, &envs);
    serve.wait_healthy().await;
    let password = std::fs::read_to_string(data.path.join("postgres.password"))
        .expect("password file")
        .trim()
        .to_owned();

    let postmaster = postmaster_pid(&data.cluster()).expect("the database runs");
    let nats = nats_pids(&data);
    assert_eq!(nats.len(), 1, "one nats-server: {nats:?}");
    let children = processes_of(&data.path);
    assert!(children.contains(&postmaster), "{children:?}");
    for pid in children {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        let environ = String::from_utf8_lossy(&environ).into_owned();
        let vars: Vec<&str> = environ.split('\0').filter(|v| !v.is_empty()).collect();
        let name = cmdline(pid).first().cloned().unwrap_or_default();
        for var in &vars {
            assert!(
                !var.starts_with("COINBASE_") && !var.starts_with("DATABASE_URL"),
                "{name} ({pid}) has {}",
                var.split('=').next().unwrap_or_default()
            );
            assert!(
                !var.starts_with("SPOT_CANVAS_TEST_MARKER"),
                "{name} ({pid}) inherits the service's environment"
            );
        }
        for (what, value) in [
            ("the key name", key_name.as_str()),
            ("the private key", private_key.as_str()),
            ("the database password", password.as_str()),
        ] {
            assert!(!environ.contains(value), "{name} ({pid}) holds {what}");
        }
    }
    stop_cleanly(serve, &data).await;
    sim.stop().await;
}

#[tokio::test]
async fn dropping_the_last_owner_of_an_embedded_postgres_stops_its_server() {
    let data = DataDir::new();
    let pg = Arc::new(
        EmbeddedPostgres::start(&data.path)
            .await
            .expect("the cluster starts"),
    );
    let postmaster = postmaster_pid(&data.cluster()).expect("running");
    let url = pg.url();
    let other = pg.clone();
    drop(pg);
    assert!(alive(postmaster), "another owner keeps it running");
    let pool = spot_canvas::store::connect(&url)
        .await
        .expect("it still answers");
    pool.close().await;

    drop(other);
    // Drop stops it synchronously: gone by the time drop returns.
    assert!(
        !alive(postmaster),
        "the postmaster {postmaster} was left running"
    );
    assert_eq!(processes_of(&data.path), Vec::<u32>::new());
    assert_eq!(postmaster_pid(&data.cluster()), None, "a clean shutdown");
}

#[tokio::test]
async fn dropping_the_last_clone_of_an_embedded_nats_stops_it() {
    let data = DataDir::new();
    let nats = EmbeddedNats::start(None, &data.path)
        .await
        .expect("nats-server starts");
    let pid = nats.pid().await.expect("running");
    let other = nats.clone();
    drop(nats);
    assert!(alive(pid), "another clone keeps it running");
    let client = spot_canvas::bus::connect_plain(&other.client_url())
        .await
        .expect("it still answers");
    client.flush().await.expect("flush");
    drop(client);

    drop(other);
    assert!(!alive(pid), "the nats-server {pid} was left running");
    assert_eq!(nats_pids(&data), Vec::<u32>::new());
}

#[tokio::test]
async fn a_panic_while_holding_the_embedded_servers_stops_them() {
    let data = DataDir::new();
    let path = data.path.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let pg = EmbeddedPostgres::start(&path).await.expect("starts");
        let nats = EmbeddedNats::start(None, &path).await.expect("starts");
        let postmaster = postmaster_pid(pg.cluster_dir()).expect("running");
        let nats_pid = nats.pid().await.expect("running");
        tx.send((postmaster, nats_pid)).expect("send");
        panic!("a bug while the servers run (expected by this test)");
    });
    let (postmaster, nats_pid) = rx.await.expect("both started");
    assert!(task.await.is_err(), "the task panicked");
    assert!(
        !alive(postmaster),
        "the postmaster {postmaster} was left running"
    );
    assert!(
        !alive(nats_pid),
        "the nats-server {nats_pid} was left running"
    );
    assert_eq!(processes_of(&data.path), Vec::<u32>::new());
}
