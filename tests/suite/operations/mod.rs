//! Operations, on the `spot-canvas` binary against the simulator, a real PostgreSQL and a real
//! nats-server: `/metrics` counters move consistently (after a flush, every update the engine
//! produced is a written row or was superseded by a newer one of its candle) and the latency
//! histograms fill; each alarm is raised in `/health`, `/metrics` and on the board when its
//! condition holds (a product stops trading, a connection's heartbeats stop, the exchange's
//! clock drifts, the database or NATS goes away) and cleared when it ends; a web-only instance
//! serves streams that an ingest-only instance feeds through NATS, and each role is ready on
//! what it uses; the embedded nats-server refuses clients without the token made at its
//! start; a products list of 2 GiB costs tens of MiB, is reported, and the markets
//! stream once it is normal again.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{AppEnv, Service, TestDb, eventually, read_trade_log, wait_for};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use spot_canvas::bus::EmbeddedNats;
use spot_canvas_sim::{SimConfig, Simulator};

mod alarms;
mod instances;
mod metrics;
mod products_lists;

/// A generous deadline for a loaded 2-core CI.
const WITHIN: Duration = Duration::from_secs(60);

/// One scrape: `name{labels}` → value.
type Scrape = BTreeMap<String, f64>;

async fn scrape(port: u16) -> Option<Scrape> {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.ok()?;
    let mut scrape = Scrape::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').expect("`name value` lines");
        let value: f64 = value.parse().expect("a number");
        assert!(
            scrape.insert(key.to_owned(), value).is_none(),
            "{key} twice"
        );
    }
    Some(scrape)
}

fn value(scrape: &Scrape, key: &str) -> f64 {
    scrape.get(key).copied().unwrap_or(0.0)
}

async fn get_text(url: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

async fn sim_post(sim: &Simulator, path: &str, body: Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", root(sim)))
        .json(&body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the simulator answers");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
}

/// `http://ADDR`, the simulator's root (its admin API is under `/sim`).
fn root(sim: &Simulator) -> String {
    format!("http://{}", sim.addr)
}

/// The simulator with `products` products trading `trades_per_second` each, and 5 minutes of
/// history.
async fn simulator(products: usize, trades_per_second: f64) -> Simulator {
    Simulator::start(SimConfig {
        products,
        trades_per_second,
        history_minutes: 5,
        ..SimConfig::default()
    })
    .await
    .expect("sim")
}

/// A nats-server of the test's own (NATS_URL), and its directory.
async fn nats_server() -> (EmbeddedNats, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = EmbeddedNats::start(None, dir.path())
        .await
        .expect("nats-server starts");
    (nats, dir)
}
