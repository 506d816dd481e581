//! The `spot-canvas` binary: `serve` against the simulator answers `/health`, says it is on a
//! simulated feed, signs its subscribes with the configured Coinbase key, keeps its secrets
//! (the embedded database's password, the private key) out of its log, `/health` and its
//! children's environment, and stops cleanly on SIGTERM, closing its sockets politely.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{AppEnv, Service, environment_of, processes_mentioning};
use p256::pkcs8::LineEnding;
use spot_canvas_sim::{SimConfig, Simulator};

/// A CDP key name and a valid SEC1 EC private key (as in tests/suite/jwt.rs).
const KEY_NAME: &str = "organizations/org-1234/apiKeys/key-5678";

fn private_key_pem() -> String {
    p256::SecretKey::from_slice(&[0x42; 32])
        .expect("a valid scalar")
        .to_sec1_pem(LineEnding::LF)
        .expect("pem")
        .to_string()
}

/// Pieces of `text` long enough that finding one elsewhere means `text` leaked: every line of
/// a PEM body (so a log that escapes the newlines is caught too), or the whole value.
fn secret_pieces(text: &str) -> Vec<String> {
    let pieces: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect();
    if pieces.is_empty() {
        vec![text.trim().to_owned()]
    } else {
        pieces
    }
}

fn assert_no_secret(place: &str, text: &str, secrets: &[(&str, Vec<String>)]) {
    for (name, pieces) in secrets {
        for piece in pieces {
            assert!(!text.contains(piece.as_str()), "{name} appears in {place}");
        }
    }
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
    let data_dir = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let pem = private_key_pem();
    // No DATABASE_URL: the embedded PostgreSQL under DATA_DIR.
    let env = AppEnv::for_sim(&sim, data_dir.path())
        .set("COINBASE_API_KEY", KEY_NAME)
        .set("COINBASE_PRIVATE_KEY", pem.as_str());
    let mut service = Service::start(&env, &logs.path().join("serve.log")).await;
    let health = service
        .wait_for_health(
            "status ok with trades in every granularity",
            Duration::from_secs(60),
            |status, h| {
                status == 200
                    && h["status"] == "ok"
                    && h["engine"]["trades"].as_u64() > Some(0)
                    && h["engine"]["granularities"].as_array().is_some_and(|g| {
                        g.len() == 8 && g.iter().all(|g| g["updates"].as_u64() > Some(0))
                    })
            },
        )
        .await;
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
    // The key is valid and the simulator takes its JWTs: subscribes are signed.
    assert_eq!(health["feed"]["auth"]["state"], "authenticated", "{health}");

    // trading_pairs follows the feed's product list, statuses included.
    let pg_port = service
        .log_lines()
        .iter()
        .find(|v| v["message"] == "embedded PostgreSQL running")
        .and_then(|v| v["port"].as_u64())
        .expect("the embedded database logs its port");
    // Where src/store/embedded/ keeps the generated password.
    let password = std::fs::read_to_string(data_dir.path().join("postgres.password"))
        .expect("password file")
        .trim()
        .to_owned();
    assert!(password.len() >= 16, "a generated password");
    let pool = sqlx::PgPool::connect(&format!(
        "postgres://spot:{password}@127.0.0.1:{pg_port}/spot_canvas"
    ))
    .await
    .expect("connects to the embedded database");
    let pairs: Vec<(String, String)> =
        common::eventually("trading pairs stored", Duration::from_secs(30), || async {
            let pairs: Vec<(String, String)> =
                sqlx::query_as("SELECT product_id, status FROM trading_pairs ORDER BY product_id")
                    .fetch_all(&pool)
                    .await
                    .expect("query");
            (!pairs.is_empty()).then_some(pairs)
        })
        .await;
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

    // The secrets in play: the embedded database's password and the private key.
    let secrets = [
        ("the database password", secret_pieces(&password)),
        ("the Coinbase private key", secret_pieces(&pem)),
    ];
    let (_, body) = service.health().await.expect("/health answers");
    assert_no_secret("/health", &body.to_string(), &secrets);
    // Nor do the embedded servers get them in their environment: nats-server is a child;
    // PostgreSQL (started through pg_ctl, so not a child) runs with DATA_DIR in its command line.
    let mut servers = service.descendants();
    let postgres: Vec<u32> = processes_mentioning(data_dir.path())
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    assert!(!postgres.is_empty(), "PostgreSQL runs for the DATA_DIR");
    servers.extend(postgres);
    let mut read = 0;
    for pid in servers {
        // A short-lived helper (pg_ctl status) may be gone by now: nothing to read then.
        let environment = environment_of(pid);
        read += usize::from(!environment.is_empty());
        for entry in environment {
            let name = entry.split('=').next().unwrap_or_default();
            assert!(
                !["COINBASE_PRIVATE_KEY", "COINBASE_API_KEY", "DATABASE_URL"].contains(&name),
                "process {pid} inherited {name}"
            );
            assert_no_secret(
                &format!("the environment of process {pid}"),
                &entry,
                &secrets,
            );
        }
    }
    assert!(
        read >= 2,
        "the environments of nats-server and PostgreSQL were read"
    );

    let status = service.stop().await;
    assert!(status.success(), "exit status {status}");
    let all = service.log();
    assert!(
        all.contains("SIMULATED"),
        "the logs say the feed is simulated"
    );
    assert_no_secret("the log", &all, &secrets);
    // A JWT is a credential for two minutes: none in the log either (its header starts `eyJ`).
    assert!(!all.contains("eyJ"), "a JWT appears in the log");
    common::wait_for("the close frame", Duration::from_secs(30), || async {
        sim.state.stats.client_close_frames.get() > 0
    })
    .await;
    assert_eq!(
        sim.state.stats.client_close_frames.get(),
        1,
        "closed politely, once"
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
