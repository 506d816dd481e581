//! The whole pipeline into a real PostgreSQL, fed by the simulator: the database stops
//! abruptly and comes back while trades flow; the service is stopped with SIGTERM while
//! updates are in flight, and while PostgreSQL is away (the writer's spool keeps what it holds
//! and the next start writes it: every candle a `/stream` client saw is then in the table).
//! Afterwards the table equals an aggregation of the simulator's trade log.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{AppEnv, Service, TestDb, read_trade_log};
use spot_canvas::candles::{Engine, EngineSettings};
use spot_canvas::feed::{Feed, FeedSettings};
use spot_canvas::model::FeedEvent;
use spot_canvas::model::{CandleUpdate, SystemClock};
use spot_canvas::store::{BatchWriter, Repository, WriterSettings};
use spot_canvas_sim::{SimConfig, Simulator};
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
        let mut first: BTreeMap<spot_canvas::model::ProductId, u64> = BTreeMap::new();
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
        let mut last: BTreeMap<spot_canvas::model::ProductId, u64> = BTreeMap::new();
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

    common::wait_for(
        "the writer to store candles",
        Duration::from_secs(60),
        || async { writer_stats.report().written_rows > 0 },
    )
    .await;
    db.pg
        .stop_with("immediate")
        .await
        .expect("PostgreSQL stops abruptly");
    let before = emitted.load(Ordering::Relaxed);
    common::wait_for(
        "the writer to see the outage",
        Duration::from_secs(60),
        || async { writer_stats.report().failures > 0 },
    )
    .await;
    // The engine does not wait for the database: its output keeps flowing during the outage
    // (3 products at 10 trades/s give dozens of updates a second).
    common::wait_for(
        "50 more engine updates while the database is down",
        Duration::from_secs(60),
        || async { emitted.load(Ordering::Relaxed) >= before + 50 },
    )
    .await;
    let pending = writer_stats.report().pending;
    assert!(pending > 0, "the writer holds what it could not store");
    let written_down = writer_stats.report().written_rows;
    db.pg.restart().await.expect("PostgreSQL starts again");
    // Writes succeed again, and trades keep flowing after the restart.
    common::wait_for(
        "the writer to store rows after the restart",
        Duration::from_secs(60),
        || async { writer_stats.report().written_rows > written_down },
    )
    .await;
    let after_restart = emitted.load(Ordering::Relaxed);
    common::wait_for(
        "updates after the restart",
        Duration::from_secs(60),
        || async { emitted.load(Ordering::Relaxed) > after_restart + 20 },
    )
    .await;

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
        .map(|(p, f)| (p.to_string(), (*f, last[p])))
        .collect();
    assert_eq!(windows.len(), 3);
    common::assert_table_matches_log(
        &db.pool,
        &read_trade_log(&dir.path().join("trades.jsonl")),
        &windows,
    )
    .await;
}

#[tokio::test]
async fn sigterm_with_updates_in_flight_loses_nothing() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = common::data_dir();
    let sim = sim_with_log(dir.path(), 10, 20.0).await;
    let env = AppEnv::for_sim(&sim, data.path())
        .database(&db)
        // Only what the feed delivered, so the table's trade counts tell the window each
        // product saw (backfill has its own tests in tests/slow/reconcile.rs).
        .set("BACKFILL_HORIZON_HOURS", "0")
        // Updates wait in the writer for up to 2 s: the signal finds some there.
        .set("WRITER_FLUSH_MS", "2000")
        .set("WRITER_BATCH_ROWS", "10000")
        .set(
            "PRODUCTS",
            spot_canvas_sim::market::MarketSpec::product_ids(10).join(","),
        );
    let mut service = Service::start(&env, &dir.path().join("serve.log")).await;
    // Candles are being written, and then updates wait in the writer: the last `/health`
    // before the signal tells how many trades the engine had taken by then.
    let written = service
        .wait_for_health("candles written", Duration::from_secs(60), |_, h| {
            h["store"]["writer"]["written_rows"].as_u64() > Some(0)
        })
        .await;
    let trades_then = written["engine"]["trades"].as_u64().expect("trades");
    let at_signal = service
        .wait_for_health(
            "more trades, with updates pending in the writer",
            Duration::from_secs(60),
            |_, h| {
                h["engine"]["trades"].as_u64() > Some(trades_then + 200)
                    && h["store"]["writer"]["pending"].as_u64() > Some(0)
            },
        )
        .await;
    service.terminate();
    let taken = at_signal["engine"]["trades"].as_u64().expect("trades");
    // Within Cloud Run's 10 s between SIGTERM and SIGKILL.
    let exit = service.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit}");
    sim.stop().await;
    let logs = service.log();
    let flushed = service
        .log_lines()
        .into_iter()
        .find(|v| v["message"] == "writer flushed")
        .expect("the writer reports its final flush");
    assert_eq!(flushed["pending"], 0, "nothing left unwritten");
    assert!(flushed["written"].as_u64() > Some(0));
    assert!(!logs.contains("stage failed"), "{logs}");
    assert!(!logs.contains("before the stop signal"), "{logs}");
    // The engine saw each product's trades from its first snapshot on, contiguously: the
    // 1-minute trade counts tell how many, the highest stored id where they end.
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let (windows, stored) = common::stored_windows(&db.pool, &log).await;
    // Every trade the engine had taken before the signal is stored: updates lost at the
    // signal would leave fewer (the stored windows alone would just be shorter).
    assert!(
        stored >= taken,
        "{stored} trades stored, {taken} taken before the signal"
    );
    assert_eq!(windows.len(), 10);
    // And what is stored is exactly the simulator's trades of those windows: each a
    // contiguous run of the log from the first snapshot on.
    for (product, (first, last)) in &windows {
        assert!(
            log.iter()
                .any(|t| &t.product_id == product && t.trade_id == *last),
            "{product}: the last stored trade {last} is one the simulator made"
        );
        assert!(*first <= *last, "{product}");
    }
    common::assert_table_matches_log(&db.pool, &log, &windows).await;
}

/// What a `/stream` client saw of one candle: its newest version (hex, whose string order is
/// version order) and trade count.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    version: String,
    trades: u64,
}

/// Reads `/stream` for `products` at every granularity until it ends (at the service's stop),
/// keeping the newest version shown of each candle.
async fn read_stream(
    port: u16,
    products: &[String],
) -> tokio::task::JoinHandle<BTreeMap<(String, String, i64), Shown>> {
    let granularities: Vec<&str> = common::WIDTHS.iter().map(|(g, _)| g.as_str()).collect();
    let url = format!(
        "http://127.0.0.1:{port}/stream?products={}&granularities={}",
        products.join(","),
        granularities.join(",")
    );
    let response = tokio::time::timeout(Duration::from_secs(10), reqwest::get(url))
        .await
        .expect("the stream answers within 10 s")
        .expect("the stream opens");
    assert_eq!(response.status(), 200);
    tokio::spawn(async move {
        let mut reader = common::SseReader::new(response);
        let mut shown: BTreeMap<(String, String, i64), Shown> = BTreeMap::new();
        while let Some(event) = reader.next(Duration::from_secs(120)).await {
            let (Some(product), Some(granularity), Some(start), Some(version), Some(trades)) = (
                event.attr("data-product"),
                event.attr("data-granularity"),
                event.attr("data-timestamp"),
                event.attr("data-version"),
                event.attr("data-trades"),
            ) else {
                continue;
            };
            let key = (product, granularity, start.parse().expect("timestamp"));
            let trades = trades.parse().expect("a trade count: no backfill");
            let slot = shown.entry(key).or_insert(Shown {
                version: String::new(),
                trades: 0,
            });
            if version > slot.version {
                *slot = Shown { version, trades };
            }
        }
        shown
    })
}

#[tokio::test]
async fn a_stop_while_postgres_is_away_keeps_every_streamed_candle_for_the_next_start() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = common::data_dir();
    let sim = sim_with_log(dir.path(), 6, 20.0).await;
    let ids = spot_canvas_sim::market::MarketSpec::product_ids(6);
    // The first run's products, then the second run's: the first run's rows reach the table
    // only through its own writes and its spool.
    let (first, second) = ids.split_at(4);
    let env = |products: &[String]| {
        AppEnv::for_sim(&sim, data.path())
            .database(&db)
            // Only what the feed delivered: the stored trade counts tell each window.
            .set("BACKFILL_HORIZON_HOURS", "0")
            .set("PRODUCTS", products.join(","))
    };
    let mut service = Service::start(&env(first), &dir.path().join("serve-1.log")).await;
    let stream = read_stream(service.port, first).await;
    service
        .wait_for_health("candles written", Duration::from_secs(60), |_, h| {
            h["store"]["writer"]["written_rows"].as_u64() > Some(0)
        })
        .await;
    db.pg
        .stop_with("immediate")
        .await
        .expect("PostgreSQL stops abruptly");
    let down = service
        .wait_for_health(
            "the writer to see the outage",
            Duration::from_secs(60),
            |_, h| h["store"]["writer"]["failures"].as_u64() > Some(0),
        )
        .await;
    let trades_then = down["engine"]["trades"].as_u64().expect("trades");
    // Under load: trades keep coming while the database is away, and the writer holds them.
    let at_signal = service
        .wait_for_health(
            "300 more trades with rows pending in the writer",
            Duration::from_secs(60),
            |_, h| {
                h["engine"]["trades"].as_u64() > Some(trades_then + 300)
                    && h["store"]["writer"]["pending"].as_u64() > Some(0)
            },
        )
        .await;
    let signalled = std::time::Instant::now();
    service.terminate();
    // Within Cloud Run's 10 s between SIGTERM and SIGKILL, though the writer was in backoff.
    let exit = service.wait_exit(Duration::from_secs(10)).await;
    let stop_took = signalled.elapsed();
    assert!(exit.success(), "{exit}\n{}", service.log());
    let shown = tokio::time::timeout(Duration::from_secs(10), stream)
        .await
        .expect("the stream ends with the service")
        .expect("the stream reads");
    let flushed = service
        .log_lines()
        .into_iter()
        .find(|v| v["message"] == "writer flushed")
        .expect("the writer reports its stop");
    assert_eq!(flushed["pending"], 0, "nothing left unkept: {flushed}");
    let kept = flushed["kept"].as_u64().expect("kept");
    assert!(kept > 0, "rows kept in the spool: {flushed}");
    let spool = data.path().join("writer-spool.jsonl");
    assert!(spool.exists(), "the spool is written");
    let spool_lines = std::fs::read_to_string(&spool)
        .expect("spool")
        .lines()
        .count()
        - 1;
    println!(
        "stop with PostgreSQL away: {stop_took:?}; {kept} rows kept ({spool_lines} spooled, {} bytes); \
         {} pending at the last /health before the signal",
        std::fs::metadata(&spool).map(|m| m.len()).unwrap_or(0),
        at_signal["store"]["writer"]["pending"]
    );

    // PostgreSQL and the service start again (the second run ingests other products).
    db.pg.restart().await.expect("PostgreSQL starts again");
    let mut again = Service::start(&env(second), &dir.path().join("serve-2.log")).await;
    again
        .wait_for_health("the spool written", Duration::from_secs(60), |_, h| {
            h["store"]["writer"]["recovered"].as_u64() >= Some(kept)
        })
        .await;
    common::wait_for("the spool removed", Duration::from_secs(10), || async {
        !spool.exists()
    })
    .await;
    let exit = again.stop().await;
    assert!(exit.success(), "{exit}");
    sim.stop().await;

    // Every candle the stream showed is in the table, with its trade count (or a later
    // version of it, with more trades, that the writer got after the stream's last event).
    let rows: Vec<(String, String, i64, i64, String)> = sqlx::query_as(
        "SELECT product_id, granularity::text, extract(epoch FROM \"timestamp\")::int8, \
         trade_count, encode(version, 'hex') FROM live_candles",
    )
    .fetch_all(&db.pool)
    .await
    .expect("rows");
    let stored: BTreeMap<(String, String, i64), Shown> = rows
        .into_iter()
        .map(|(p, g, start, n, version)| {
            let trades = n as u64;
            ((p, g, start), Shown { version, trades })
        })
        .collect();
    assert!(
        shown.len() >= 4 * 8,
        "the stream showed candles: {}",
        shown.len()
    );
    let mut later = 0;
    for (key, seen) in &shown {
        let row = stored
            .get(key)
            .unwrap_or_else(|| panic!("{key:?}, shown by the stream, is not in the table"));
        assert!(
            row.version >= seen.version,
            "{key:?}: {row:?} older than shown {seen:?}"
        );
        if row.version == seen.version {
            assert_eq!(row.trades, seen.trades, "{key:?}");
        } else {
            assert!(row.trades >= seen.trades, "{key:?}: {row:?} vs {seen:?}");
            later += 1;
        }
    }
    println!(
        "{} candles shown by the stream, all stored ({later} with a later version)",
        shown.len()
    );
    // And the table is exactly the simulator's trades of each product's window (contiguous
    // from its first snapshot; the trade counts tell where each window starts).
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let (windows, _) = common::stored_windows(&db.pool, &log).await;
    // The second run's products too, if it wrote any of them before its stop.
    assert!(first.iter().all(|p| windows.contains_key(p)), "{windows:?}");
    common::assert_table_matches_log(&db.pool, &log, &windows).await;
}
