//! The `spot-canvas` binary: `serve` against the simulator answers `/health`, says it is on a
//! simulated feed, and stops cleanly on SIGTERM, closing its sockets politely.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use spot_canvas::sim::{SimConfig, Simulator};

struct Service {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
    /// Log lines up to the one that gave the port.
    startup: Vec<String>,
}

/// Starts `spot-canvas serve` with JSON logs and waits for its port.
fn start_service(envs: &[(&str, String)]) -> Service {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spot-canvas"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let port = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("the service logs its port ({e}); it said: {seen:#?}"));
        seen.push(line.clone());
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["message"] == "listening"
        {
            break v["port"].as_u64().expect("port") as u16;
        }
    };
    Service {
        child,
        port,
        lines,
        startup: seen,
    }
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn serve_reports_health_on_a_simulated_feed_and_stops_on_sigterm() {
    let sim = Simulator::start(SimConfig {
        products: 2,
        trades_per_second: 5.0,
        history_minutes: 5,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let data_dir = tempfile::tempdir().expect("tempdir");
    // As root the database runs as `postgres`, which must reach the directory.
    std::fs::set_permissions(
        data_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let mut service = start_service(&[
        ("COINBASE_WS_URL", sim.ws_url()),
        ("COINBASE_REST_URL", sim.rest_url()),
        ("COINBASE_API_KEY", "organizations/o/apiKeys/k".into()),
        ("COINBASE_PRIVATE_KEY", "bm90LWEtcmVhbC1rZXk=".into()),
        // No DATABASE_URL: the embedded PostgreSQL under DATA_DIR.
        ("DATA_DIR", data_dir.path().display().to_string()),
    ]);
    let url = format!("http://127.0.0.1:{}/health", service.port);
    let mut health = Value::Null;
    for _ in 0..100 {
        if let Ok(response) = reqwest::get(&url).await
            && response.status() == 200
        {
            health = response.json().await.expect("json");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["simulated"], true);
    let connection = &health["feed"]["connections"][0];
    assert_eq!(connection["connected"], true);
    assert_eq!(
        connection["products"],
        serde_json::json!(["BTC-USD", "ETH-USD"])
    );
    for field in ["last_frame", "frames", "reconnects", "gaps"] {
        assert!(!connection[field].is_null(), "{field} in {connection}");
    }
    assert_eq!(health["store"]["table"], "plain", "{health}");
    // trading_pairs follows the feed's product list, statuses included.
    let pg_port = service
        .startup
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "embedded PostgreSQL running")
        .and_then(|v| v["port"].as_u64())
        .expect("the embedded database logs its port");
    let password =
        std::fs::read_to_string(data_dir.path().join("postgres.password")).expect("password file");
    let pool = sqlx::PgPool::connect(&format!(
        "postgres://spot:{}@127.0.0.1:{pg_port}/spot_canvas",
        password.trim()
    ))
    .await
    .expect("connects to the embedded database");
    let mut pairs: Vec<(String, String)> = Vec::new();
    for _ in 0..50 {
        pairs = sqlx::query_as("SELECT product_id, status FROM trading_pairs ORDER BY product_id")
            .fetch_all(&pool)
            .await
            .expect("query");
        if !pairs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        pairs.contains(&("BTC-USD".into(), "online".into())),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&("OLD-USD".into(), "delisted".into())),
        "{pairs:?}"
    );
    assert!(
        !pairs.iter().any(|(p, _)| p == "BTC-USDC"),
        "aliases are not pairs: {pairs:?}"
    );
    pool.close().await;
    // The engine's counts per granularity.
    let granularities = health["engine"]["granularities"]
        .as_array()
        .expect("counts");
    assert_eq!(granularities.len(), 8);
    assert!(
        health["engine"]["trades"].as_u64().expect("trades") > 0,
        "{health}"
    );
    assert!(
        granularities
            .iter()
            .all(|g| g["updates"].as_u64() > Some(0)),
        "{health}"
    );
    // The key is unusable: /health says the feed runs unauthenticated.
    assert_eq!(health["feed"]["auth"]["state"], "failed", "{health}");

    terminate(&service.child);
    let mut waited = 0;
    let status = loop {
        if let Some(status) = service.child.try_wait().expect("wait") {
            break status;
        }
        assert!(waited < 150, "the service stops within 15 s of SIGTERM");
        waited += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status}");
    let logs: Vec<String> = service.lines.try_iter().collect();
    let all = logs.join("\n");
    assert!(
        all.contains("SIMULATED"),
        "the logs say the feed is simulated"
    );
    assert!(
        !all.contains("hunter2pw"),
        "the database password never reaches the logs"
    );
    assert!(
        !all.contains("bm90LWEtcmVhbC1rZXk"),
        "the key never reaches the logs"
    );
    assert_eq!(
        sim.state.stats.client_close_frames.get(),
        1,
        "closed politely"
    );
    sim.stop().await;
}

#[test]
fn an_invalid_variable_stops_the_binary_with_a_message_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_spot-canvas"))
        .arg("serve")
        .env_clear()
        .env("SHARD_COUNT", "zero")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SHARD_COUNT"), "{stderr}");
    assert!(stderr.contains("accepted"), "{stderr}");
}

#[test]
fn an_unreachable_database_is_a_clear_error_without_the_password() {
    let output = Command::new(env!("CARGO_BIN_EXE_spot-canvas"))
        .arg("serve")
        .env_clear()
        .env("PORT", "0")
        .env("DATABASE_URL", "postgres://spot:hunter2pw@127.0.0.1:1/spot")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect to PostgreSQL"), "{stderr}");
    assert!(!stderr.contains("hunter2pw"), "{stderr}");
}
