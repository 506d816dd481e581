//! Part of the fault suite (`task test:faults`): 10,000 stream connects and disconnects
//! against one `spot-canvas serve` process, fed by the simulator. Every stream opens and gets
//! its first event; afterwards no stream is open, the same process is ready, and its tokio
//! tasks and resident memory are back near where they were before.

use crate::common;

use std::time::Duration;

use common::footprint::{back_near, footprint};
use common::{AppEnv, Service, TestDb};
use futures_util::StreamExt;
use spot_canvas_sim::market::MarketSpec;
use spot_canvas_sim::{SimConfig, Simulator};

/// A generous deadline for a loaded 2-core CI.
const WITHIN: Duration = Duration::from_secs(60);
const CONNECTS: u64 = 10_000;
const AT_ONCE: usize = 40;
/// Tasks allowed above the baseline afterwards (readings are the lowest of five samples): a
/// task left behind by one stream in a thousand would exceed it.
const TASK_SLACK: usize = 4;
/// Resident memory allowed above the baseline afterwards: a leak of 2 KiB per stream would
/// exceed it (10,000 × 2 KiB is about 19.5 MiB).
const RSS_SLACK: u64 = 16 << 20;

/// One stream: it opens, its first event (the snapshot of BTC-USD) arrives, and it is dropped.
async fn once(client: reqwest::Client, url: String) -> Result<(), String> {
    let attempt = async {
        let mut response = client.get(&url).send().await.map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("status {}", response.status()));
        }
        let mut text = String::new();
        while !text.contains("data-product=\"BTC-USD\"") {
            match response.chunk().await.map_err(|e| e.to_string())? {
                Some(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Err(format!("ended before a BTC-USD event: {text:?}")),
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(20), attempt)
        .await
        .unwrap_or_else(|_| Err("no first event within 20 s".to_owned()))
}

/// `n` streams, `AT_ONCE` at a time; returns the failures.
async fn churn(client: &reqwest::Client, url: &str, n: u64) -> Vec<String> {
    futures_util::stream::iter(0..n)
        .map(|_| once(client.clone(), url.to_owned()))
        .buffer_unordered(AT_ONCE)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await
}

/// One unlabelled value of `/metrics`.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let text = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn ten_thousand_stream_connects_and_disconnects_leave_the_process_as_it_was() {
    let sim = Simulator::start(SimConfig {
        products: 3,
        trades_per_second: 5.0,
        history_minutes: 5,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let db = TestDb::new().await;
    let data = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let env = AppEnv::for_sim(&sim, data.path())
        .database(&db)
        .set("PRODUCTS", MarketSpec::product_ids(3).join(","))
        // All from 127.0.0.1: the per-address cap is not the subject.
        .set("STREAM_MAX_PER_ADDRESS", "100000")
        .set("CLOCK_CHECK_SECS", "0");
    let mut service = Service::start(&env, &logs.path().join("serve.log")).await;
    let port = service.port;
    let url = format!("http://127.0.0.1:{port}/api/v1/stream?products=BTC-USD&granularity=1m");
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    service
        .wait_for_health("ready with BTC-USD trades", WITHIN, |s, h| {
            s == 200 && h["engine"]["trades"].as_u64() > Some(20)
        })
        .await;
    // A warm-up round, then the baseline with no stream open.
    assert_eq!(churn(&client, &url, 200).await, Vec::<String>::new());
    common::wait_for("the warm-up streams closed", WITHIN, || async {
        metric(port, "spot_canvas_stream_clients").await == Some(0.0)
    })
    .await;
    let baseline = footprint(&service).await.expect("a footprint");
    eprintln!("baseline: pid {}, {baseline}", service.pid());

    let started = std::time::Instant::now();
    let failures = churn(&client, &url, CONNECTS).await;
    eprintln!(
        "{CONNECTS} connects and disconnects in {:?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {CONNECTS} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    common::wait_for("no stream open any more", WITHIN, || async {
        metric(port, "spot_canvas_stream_clients").await == Some(0.0)
    })
    .await;
    let pid = u64::from(service.pid());
    service
        .wait_for_health("ready, the same process", WITHIN, |s, h| {
            s == 200 && h["process"]["pid"].as_u64() == Some(pid)
        })
        .await;
    assert!(service.running());
    back_near(
        &service,
        baseline,
        (TASK_SLACK, RSS_SLACK),
        "10,000 stream connects",
        WITHIN,
    )
    .await;
    let log = service.log();
    assert!(!log.contains("panicked"), "{log}");
    drop(service);
    sim.stop().await;
}
