//! The whole pipeline into a real PostgreSQL, fed by the simulator: the database stops
//! abruptly and comes back while trades flow; the service is stopped with SIGTERM while
//! updates are in flight. Afterwards the table equals an aggregation of the simulator's
//! trade log.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{LoggedTrade, TestDb, aggregate, read_trade_log, stored_candles};
use secrecy::ExposeSecret;
use spot_canvas::candles::{Engine, EngineSettings};
use spot_canvas::feed::{Feed, FeedSettings};
use spot_canvas::model::FeedEvent;
use spot_canvas::model::{CandleUpdate, SystemClock};
use spot_canvas::sim::{SimConfig, Simulator};
use spot_canvas::store::{BatchWriter, Repository, WriterSettings};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

async fn sim_with_log(dir: &std::path::Path, products: usize, tps: f64) -> Simulator {
    Simulator::start(SimConfig {
        products,
        trades_per_second: tps,
        history_minutes: 3,
        trade_log: Some(dir.join("trades.jsonl")),
        ..SimConfig::default()
    })
    .await
    .expect("sim")
}

/// Compares the table with the log's trades of ids `[first, last]` per product.
async fn assert_table_matches_log(
    db: &TestDb,
    log: &[LoggedTrade],
    windows: &BTreeMap<String, (u64, u64)>,
) {
    let seen: Vec<&LoggedTrade> = log
        .iter()
        .filter(|t| {
            windows
                .get(&t.product_id)
                .is_some_and(|(first, last)| (*first..=*last).contains(&t.trade_id))
        })
        .collect();
    let expected = aggregate(&seen);
    let stored = stored_candles(&db.pool).await;
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the same candles"
    );
    for (key, e) in &expected {
        assert_eq!(&stored[key], e, "{key:?}");
    }
}

#[tokio::test]
async fn candles_survive_a_database_crash_while_trades_flow() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = sim_with_log(dir.path(), 3, 10.0).await;
    let config = spot_canvas::config::Config::from_lookup(|name| match name {
        "COINBASE_WS_URL" => Some(sim.ws_url()),
        "COINBASE_REST_URL" => Some(sim.rest_url()),
        "PRODUCTS" => Some("BTC-USD,ETH-USD,SOL-USD".into()),
        _ => None,
    })
    .expect("config");
    let (feed_tx, mut feed_rx) = mpsc::channel(64);
    let (engine_tx, engine_rx) = mpsc::channel(64);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<CandleUpdate>>(64);
    let (writer_tx, writer_rx) = mpsc::channel(64);
    let feed = Feed::new(FeedSettings::from_config(&config), feed_tx);
    let engine = Engine::new(
        EngineSettings::default(),
        Arc::new(SystemClock),
        engine_rx,
        out_tx,
    );
    let writer = BatchWriter::new(
        Repository::new(db.pool.clone()),
        WriterSettings {
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(1),
            ..WriterSettings::default()
        },
        writer_rx,
    );
    let writer_stats = writer.stats();
    let cancel = CancellationToken::new();
    let feed_task = tokio::spawn(feed.run(cancel.clone()));
    let engine_task = tokio::spawn(engine.run(CancellationToken::new()));
    let writer_task = tokio::spawn(writer.run());
    // Taps: the oldest trade id of each product's first snapshot, and the engine's output.
    let tap = tokio::spawn(async move {
        let mut first: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(event) = feed_rx.recv().await {
            if let FeedEvent::Trades(b) = &event
                && b.snapshot
                && let Some(min) = b.trades.iter().map(|t| t.trade_id.0).min()
            {
                first.entry(b.trades[0].product_id.clone()).or_insert(min);
            }
            if engine_tx.send(event).await.is_err() {
                break;
            }
        }
        first
    });
    let emitted = Arc::new(AtomicU64::new(0));
    let counter = emitted.clone();
    let out_tap = tokio::spawn(async move {
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(batch) = out_rx.recv().await {
            counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
            for u in &batch {
                let id = last.entry(u.candle.product_id.clone()).or_default();
                *id = (*id).max(u.version().last_trade_id.0);
            }
            if writer_tx.send(batch).await.is_err() {
                break;
            }
        }
        last
    });

    tokio::time::sleep(Duration::from_secs(3)).await;
    db.pg
        .stop_with("immediate")
        .await
        .expect("PostgreSQL stops abruptly");
    let before = emitted.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = emitted.load(Ordering::Relaxed) - before;
    assert!(
        during > 50,
        "the engine's output keeps flowing while the database is down: {during}"
    );
    assert!(
        writer_stats.report().failures > 0,
        "the writer saw the outage"
    );
    db.pg.restart().await.expect("PostgreSQL starts again");
    tokio::time::sleep(Duration::from_secs(3)).await;

    cancel.cancel();
    feed_task.await.expect("feed").expect("feed ok");
    let first = tap.await.expect("tap");
    engine_task.await.expect("engine").expect("engine ok");
    let last = out_tap.await.expect("out tap");
    tokio::time::timeout(Duration::from_secs(30), writer_task)
        .await
        .expect("the writer flushes")
        .expect("join")
        .expect("writer ok");
    sim.stop().await;
    assert_eq!(writer_stats.report().pending, 0);
    let windows: BTreeMap<String, (u64, u64)> = first
        .iter()
        .map(|(p, f)| (p.clone(), (*f, last[p])))
        .collect();
    assert_eq!(windows.len(), 3);
    assert_table_matches_log(
        &db,
        &read_trade_log(&dir.path().join("trades.jsonl")),
        &windows,
    )
    .await;
}

#[tokio::test]
async fn sigterm_with_updates_in_flight_loses_nothing() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = sim_with_log(dir.path(), 10, 20.0).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_spot-canvas"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("LOG_FORMAT", "json")
        .env("DATABASE_URL", db.url.expose_secret())
        .env("DATA_DIR", dir.path().join("data"))
        .env("COINBASE_WS_URL", sim.ws_url())
        .env("COINBASE_REST_URL", sim.rest_url())
        // Only what the feed delivered, so the table's trade counts tell the window each
        // product saw (backfill has its own tests in tests/reconcile.rs).
        .env("BACKFILL_HORIZON_HOURS", "0")
        .env(
            "PRODUCTS",
            spot_canvas::sim::market::MarketSpec::product_ids(10).join(","),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).expect("log file"))
        .spawn()
        .expect("starts");
    // Wait until candles are being written, then a little more.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM live_candles")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        if rows > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no candles written");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "{exit}");
    sim.stop().await;
    let logs = std::fs::read_to_string(dir.path().join("serve.log")).expect("logs");
    let flushed = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "writer flushed")
        .expect("the writer reports its final flush");
    assert_eq!(flushed["pending"], 0, "nothing left unwritten");
    assert!(flushed["written"].as_u64() > Some(0));
    assert!(!logs.contains("stage failed"), "{logs}");
    // The engine saw each product's trades from its first snapshot on, contiguously: the
    // 1-minute trade counts tell how many, the highest stored id where they end.
    let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT product_id, trade_count, version FROM live_candles WHERE granularity = 'ONE_MINUTE'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("rows");
    let mut windows: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (product, count, version) in rows {
        let v = spot_canvas::model::Version::from_bytes(&version).expect("version");
        *counts.entry(product.clone()).or_default() += count as u64;
        let w = windows.entry(product).or_insert((0, 0));
        w.1 = w.1.max(v.last_trade_id.0);
    }
    for (product, w) in &mut windows {
        w.0 = w.1 + 1 - counts[product];
    }
    assert_eq!(windows.len(), 10);
    assert_table_matches_log(
        &db,
        &read_trade_log(&dir.path().join("trades.jsonl")),
        &windows,
    )
    .await;
}
