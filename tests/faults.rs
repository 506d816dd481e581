//! The fault suite (`task test:faults`): one `spot-canvas serve` process, fed by the simulator,
//! with a real PostgreSQL and a real nats-server, goes through every fault in turn while a
//! stream client stays open: the exchange closes with 1001, the TCP connection drops, the feed
//! stalls, sequence numbers skip, a malformed and an oversized frame arrive, PostgreSQL stops
//! and restarts, NATS stops and restarts; then SIGTERM under load. After each fault the same
//! process (same pid) is healthy again, trades flow, and its tokio task count and resident
//! memory are back near where they started. At the end the candles in PostgreSQL equal an
//! aggregation, written here, of the simulator's trade log.
//!
//! Beside it, a second process takes 10,000 stream connects and disconnects and must come out
//! of it as it went in.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{
    AppEnv, LoggedTrade, Service, SseReader, TestDb, aggregate, read_trade_log, stored_rows,
};
use serde_json::Value;
use spot_canvas::bus::EmbeddedNats;
use spot_canvas::model::{Granularity, Version};
use spot_canvas::sim::faults::{FaultKind, FaultRequest, Scope};
use spot_canvas::sim::market::MarketSpec;
use spot_canvas::sim::{SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

/// A generous deadline for a loaded 2-core CI.
const WITHIN: Duration = Duration::from_secs(60);
/// Tasks allowed above the baseline once a fault is over: requests in flight (this test's own
/// `/health` poll among them) and a backfill that has not finished yet. A task left behind by
/// each reconnect or each stream would exceed it.
const TASK_SLACK: usize = 8;
/// Resident memory allowed above the baseline once a fault is over: allocator arenas and
/// caches that grew under the fault and are kept for reuse (the baseline is about 40 MiB). A
/// leak of 2 KiB per stream would exceed it after the 10,000 connects.
const RSS_SLACK: u64 = 16 << 20;
/// Products the fault suite trades.
const PRODUCTS: usize = 4;

/// What the process looked like before the faults.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    pid: u32,
    tasks: usize,
    rss: u64,
}

/// Resident memory of `pid`, read from `/proc`, not from the service's own report.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn tasks_of(health: &Value) -> usize {
    health["process"]["tasks"].as_u64().expect("process.tasks") as usize
}

fn trades_of(health: &Value) -> u64 {
    health["engine"]["trades"].as_u64().unwrap_or(0)
}

fn feed_sum(health: &Value, field: &str) -> u64 {
    health["feed"]["connections"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c[field].as_u64()).sum())
        .unwrap_or(0)
}

fn engine(health: &Value, field: &str) -> u64 {
    health["engine"][field].as_u64().unwrap_or(0)
}

fn raised(health: &Value, alarm: &str) -> bool {
    health["alarms"]["raised"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["kind"] == alarm))
}

/// Waits until the service is ready again as the same process with trades flowing past
/// `before`, then until its tasks and memory are back near the baseline. Returns `/health`.
async fn recovered(service: &Service, baseline: Baseline, what: &str, before: &Value) -> Value {
    let trades_before = trades_of(before);
    let health = service
        .wait_for_health(&format!("{what}: ready, trades flowing"), WITHIN, |s, h| {
            s == 200
                && h["process"]["pid"].as_u64() == Some(u64::from(baseline.pid))
                && h["feed"]["connected"].as_u64() == Some(1)
                && trades_of(h) > trades_before + 20
        })
        .await;
    assert_eq!(service.pid(), baseline.pid);
    let last = std::sync::Mutex::new((0, 0));
    let deadline = tokio::time::Instant::now() + WITHIN;
    let settled = loop {
        if let Some((_, h)) = service.health().await {
            let (tasks, rss) = (tasks_of(&h), rss_of(baseline.pid));
            *last.lock().expect("last") = (tasks, rss);
            if tasks <= baseline.tasks + TASK_SLACK && rss <= baseline.rss + RSS_SLACK {
                break true;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        // The polling interval of a condition, not the subject.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (tasks, rss) = *last.lock().expect("last");
    eprintln!(
        "after {what}: tasks {tasks} (baseline {}), rss {} MiB (baseline {} MiB)",
        baseline.tasks,
        rss >> 20,
        baseline.rss >> 20
    );
    assert!(
        settled,
        "{what}: tasks {tasks} (baseline {}), rss {rss} (baseline {}) did not come back",
        baseline.tasks, baseline.rss
    );
    health
}

/// The id of the simulator connection that carries `market_trades` now (the newest).
fn trades_connection(sim: &Simulator) -> u64 {
    let connections = sim.state.connections();
    connections
        .as_array()
        .expect("connections")
        .iter()
        .filter(|c| c["subscriptions"]["market_trades"].is_array())
        .filter_map(|c| c["id"].as_u64())
        .max()
        .unwrap_or_else(|| panic!("a market_trades connection: {connections}"))
}

/// Arms `kind` on the connection that carries the trades now.
fn arm(sim: &Simulator, kind: FaultKind) {
    sim.arm(FaultRequest {
        scope: Scope::Connection(trades_connection(sim)),
        after_frames: 0,
        kind,
    });
}

/// A stream client of `/api/v1/stream` for every product at one minute, read in the
/// background: it counts events and remembers the newest trade id seen per product.
struct StreamClient {
    events: Arc<AtomicU64>,
    newest: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
    ended: tokio::task::JoinHandle<()>,
}

impl StreamClient {
    async fn open(port: u16, products: &[String]) -> StreamClient {
        let response = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{port}/api/v1/stream?products={}&granularity=1m",
                products.join(",")
            ))
            .send()
            .await
            .expect("the stream opens");
        assert_eq!(response.status(), 200);
        let mut reader = SseReader::new(response);
        let events = Arc::new(AtomicU64::new(0));
        let newest = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let (e, n) = (events.clone(), newest.clone());
        let ended = tokio::spawn(async move {
            while let Some(event) = reader.next(Duration::from_secs(3600)).await {
                e.fetch_add(1, Ordering::Relaxed);
                if let (Some(product), Some(id)) = (
                    event.attr("data-product"),
                    event
                        .attr("data-last-trade-id")
                        .and_then(|i| i.parse::<u64>().ok()),
                ) {
                    let mut newest = n.lock().expect("newest");
                    let slot = newest.entry(product).or_insert(0);
                    *slot = (*slot).max(id);
                }
            }
        });
        StreamClient {
            events,
            newest,
            ended,
        }
    }

    fn newest(&self) -> BTreeMap<String, u64> {
        self.newest.lock().expect("newest").clone()
    }

    /// Waits until the client has seen, for every product, a trade newer than in `then`.
    async fn moves_past(&self, then: &BTreeMap<String, u64>, what: &str) {
        common::wait_for(
            &format!("{what}: the stream client sees newer trades of every product"),
            WITHIN,
            || async {
                let now = self.newest();
                now.len() == PRODUCTS
                    && now
                        .iter()
                        .all(|(p, id)| then.get(p).is_none_or(|old| id > old))
            },
        )
        .await;
    }
}

#[tokio::test]
async fn one_process_survives_every_fault_and_stores_exactly_the_exchanges_candles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Simulator::start(SimConfig {
        products: PRODUCTS,
        trades_per_second: 8.0,
        history_minutes: 5,
        trade_log: Some(dir.path().join("trades.jsonl")),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let products = MarketSpec::product_ids(PRODUCTS);
    let db = TestDb::migrated().await;
    let nats_dir = tempfile::tempdir().expect("tempdir");
    let nats = EmbeddedNats::start(None, nats_dir.path())
        .await
        .expect("nats-server starts");
    let data = common::data_dir();
    let env = AppEnv::for_sim(&sim, data.path())
        .database(&db)
        .set("NATS_URL", nats.url())
        .set("PRODUCTS", products.join(","))
        .set("REST_REQUESTS_PER_SECOND", "50")
        .set("CROSSCHECK_INTERVAL_SECS", "0")
        .set("CLOCK_CHECK_SECS", "0");
    let mut service = Service::start(&env, &dir.path().join("serve.log")).await;
    let port = service.port;
    let pid = service.pid();
    let stream = StreamClient::open(port, &products).await;
    let start = service
        .wait_for_health("ready with the start backfilled", WITHIN, |s, h| {
            s == 200
                && h["reconcile"]["windows_done"].as_u64() >= Some(1)
                && h["reconcile"]["windows_pending"].as_u64() == Some(0)
                && h["reconcile"]["windows_running"].as_u64() == Some(0)
                && h["store"]["writer"]["written_rows"].as_u64() > Some(0)
                && trades_of(h) > 50
        })
        .await;
    // Warm: the allocator has grown to its working size before the baseline is taken.
    let warm = service
        .wait_for_health("warm", WITHIN, |_, h| {
            trades_of(h) > trades_of(&start) + 100
        })
        .await;
    let baseline = Baseline {
        pid,
        tasks: tasks_of(&warm),
        rss: rss_of(pid),
    };
    eprintln!(
        "baseline: pid {pid}, tasks {}, rss {} MiB",
        baseline.tasks,
        baseline.rss >> 20
    );

    // The exchange goes away with 1001, then the TCP connection drops without a close frame.
    for (what, kind) in [
        ("close 1001", FaultKind::Close { code: 1001 }),
        ("TCP drop", FaultKind::Drop),
    ] {
        let before = service.health().await.expect("health").1;
        let seen = stream.newest();
        arm(&sim, kind);
        service
            .wait_for_health(&format!("{what}: a reconnect"), WITHIN, |_, h| {
                engine(h, "reconnects_seen") > engine(&before, "reconnects_seen")
            })
            .await;
        recovered(&service, baseline, what, &before).await;
        stream.moves_past(&seen, what).await;
    }

    // A stall with the socket open: the feed's silence timeout ends it and reconnects.
    let before = service.health().await.expect("health").1;
    arm(&sim, FaultKind::Stall { secs: None });
    service
        .wait_for_health("the stall: a reconnect", WITHIN, |_, h| {
            engine(h, "reconnects_seen") > engine(&before, "reconnects_seen")
        })
        .await;
    recovered(&service, baseline, "a stall", &before).await;

    // A short stall loses frames (a sequence gap); skipped sequence numbers are another.
    for (what, kind) in [
        ("a short stall", FaultKind::Stall { secs: Some(2) }),
        (
            "skipped sequence numbers",
            FaultKind::SkipSequence { count: 7 },
        ),
    ] {
        let before = service.health().await.expect("health").1;
        arm(&sim, kind);
        service
            .wait_for_health(&format!("{what}: a gap"), WITHIN, |_, h| {
                engine(h, "gaps_seen") > engine(&before, "gaps_seen")
            })
            .await;
        recovered(&service, baseline, what, &before).await;
    }

    // A malformed frame costs that frame; an oversized one (past the 16 MiB cap) the
    // connection, which comes back.
    let before = service.health().await.expect("health").1;
    arm(&sim, FaultKind::Malformed);
    service
        .wait_for_health("a malformed frame counted", WITHIN, |_, h| {
            feed_sum(h, "malformed") > feed_sum(&before, "malformed")
        })
        .await;
    recovered(&service, baseline, "a malformed frame", &before).await;
    let before = service.health().await.expect("health").1;
    arm(&sim, FaultKind::Oversized { bytes: 17 << 20 });
    service
        .wait_for_health("an oversized frame: a reconnect", WITHIN, |_, h| {
            engine(h, "reconnects_seen") > engine(&before, "reconnects_seen")
        })
        .await;
    recovered(&service, baseline, "an oversized frame", &before).await;

    // PostgreSQL stops while trades flow; the writer holds the updates until it is back.
    let before = service.health().await.expect("health").1;
    db.pg.stop_with("fast").await.expect("PostgreSQL stops");
    let down = service
        .wait_for_health("the database alarm", WITHIN, |_, h| raised(h, "database"))
        .await;
    service
        .wait_for_health("trades flow meanwhile", WITHIN, |_, h| {
            trades_of(h) > trades_of(&down) + 50
        })
        .await;
    db.pg.restart().await.expect("PostgreSQL starts again");
    service
        .wait_for_health("the database alarm clears", WITHIN, |s, h| {
            s == 200 && !raised(h, "database")
        })
        .await;
    let after = recovered(
        &service,
        baseline,
        "PostgreSQL stopped and restarted",
        &before,
    )
    .await;
    assert!(
        after["store"]["writer"]["written_rows"].as_u64()
            > before["store"]["writer"]["written_rows"].as_u64()
    );

    // NATS stops (no one restarts it for a while), then comes back on the same port and store.
    let before = service.health().await.expect("health").1;
    let seen = stream.newest();
    let nats_pid = nats.pid().await.expect("nats-server runs");
    common::signal(nats_pid, "TERM");
    service
        .wait_for_health("the NATS alarm", WITHIN, |s, h| {
            s == 503 && raised(h, "nats")
        })
        .await;
    let supervision = CancellationToken::new();
    let supervisor = tokio::spawn({
        let (nats, token) = (nats.clone(), supervision.clone());
        async move { nats.supervise(token).await }
    });
    service
        .wait_for_health("the NATS alarm clears", WITHIN, |s, h| {
            s == 200 && !raised(h, "nats")
        })
        .await;
    let after = recovered(&service, baseline, "NATS stopped and restarted", &before).await;
    assert!(
        after["bus"]["publisher"]["live"]["written_rows"].as_u64()
            > before["bus"]["publisher"]["live"]["written_rows"].as_u64(),
        "{:#}",
        after["bus"]
    );
    stream.moves_past(&seen, "NATS restarted").await;

    // Every window the faults opened is backfilled from REST before the stop: each is queued
    // when its fault is seen and waits for its last minute to complete.
    let health = service
        .wait_for_health(
            "every window backfilled",
            Duration::from_secs(180),
            |_, h| {
                h["reconcile"]["windows_pending"].as_u64() == Some(0)
                    && h["reconcile"]["windows_running"].as_u64() == Some(0)
                    && h["reconcile"]["windows_done"].as_u64()
                        > start["reconcile"]["windows_done"].as_u64()
            },
        )
        .await;
    assert_eq!(
        health["reconcile"]["windows_failed"].as_u64(),
        Some(0),
        "{:#}",
        health["reconcile"]
    );
    assert!(engine(&health, "backfilled_minutes") > 0);
    assert!(stream.events.load(Ordering::Relaxed) > 0);
    assert!(!stream.ended.is_finished(), "the stream stayed open");

    // SIGTERM under load: trades flow, the stream is open, updates wait in the writer.
    let taken = trades_of(&service.health().await.expect("health").1);
    service.terminate();
    let exit = service.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit}\n{}", service.log());
    tokio::time::timeout(Duration::from_secs(5), stream.ended)
        .await
        .expect("the stream ends with the service")
        .expect("the reader ends cleanly");
    supervision.cancel();
    supervisor.await.expect("supervision ends");
    nats.stop().await;
    sim.state.exchange.set_paused(true);
    let log_text = service.log();
    assert!(!log_text.contains("stage failed"), "{log_text}");
    let flushed = service
        .log_lines()
        .into_iter()
        .find(|v| v["message"] == "writer flushed")
        .expect("the writer reports its final flush");
    assert_eq!(flushed["pending"], 0, "nothing left unwritten");

    // The table equals the exchange's trades up to the newest one stored, per product.
    let rows = stored_rows(&db.pool).await;
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let versions: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT product_id, version FROM live_candles WHERE granularity = 'ONE_MINUTE'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("versions");
    for (product, version) in versions {
        let v = Version::from_bytes(&version).expect("version");
        let slot = last.entry(product).or_insert(0);
        *slot = (*slot).max(v.last_trade_id.0);
    }
    assert_eq!(last.len(), PRODUCTS, "{last:?}");
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let seen: Vec<&LoggedTrade> = log
        .iter()
        .filter(|t| last.get(&t.product_id).is_some_and(|l| t.trade_id <= *l))
        .collect();
    assert!(
        seen.len() as u64 >= taken,
        "{} trades up to the newest stored, {taken} taken before the signal",
        seen.len()
    );
    let expected = aggregate(&seen);
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the same candles: none missing after the faults, none extra"
    );
    let mut from_rest = 0;
    let mut wrong = Vec::new();
    for (key, e) in &expected {
        let row = &rows[key];
        let got = &row.ohlcv;
        let same = (got.open, got.high, got.low, got.close, got.volume)
            == (e.open, e.high, e.low, e.close, e.volume);
        let count_ok = match row.trade_count {
            Some(count) => count == e.count,
            None => {
                from_rest += 1;
                row.backfilled
            }
        };
        if !same || !count_ok {
            wrong.push(format!(
                "{key:?}: stored {got:?} count {:?} backfilled {}; the exchange {e:?}",
                row.trade_count, row.backfilled
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} candles differ (trades logged from {:?} to {:?}):\n{}\n{}",
        wrong.len(),
        expected.len(),
        seen.first().map(|t| t.time),
        seen.last().map(|t| t.time),
        wrong.join("\n"),
        service.log()
    );
    assert!(from_rest > 0, "the gaps were filled from REST");
    assert!(
        rows.keys().any(|k| k.1 == Granularity::OneDay),
        "day candles too"
    );
    sim.stop().await;
}

#[tokio::test]
async fn ten_thousand_stream_connects_and_disconnects_leave_the_process_as_it_was() {
    const CONNECTS: u64 = 10_000;
    const AT_ONCE: usize = 40;
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
        .set("STREAM_MAX_PER_ADDRESS", "100000")
        .set("CLOCK_CHECK_SECS", "0");
    let service = Service::start(&env, &logs.path().join("serve.log")).await;
    let port = service.port;
    let pid = service.pid();
    let url = format!("http://127.0.0.1:{port}/api/v1/stream?products=BTC-USD&granularity=1m");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    // One stream: opens, its first event (the snapshot) arrives, and it is dropped.
    let once = |client: reqwest::Client, url: String| async move {
        let response = client.get(&url).send().await.map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("status {}", response.status()));
        }
        let mut reader = SseReader::new(response);
        match reader.next(Duration::from_secs(10)).await {
            Some(event) if event.attr("data-product").as_deref() == Some("BTC-USD") => Ok(()),
            other => Err(format!("first event {other:?}")),
        }
    };
    let run = |n: u64| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            use futures_util::StreamExt;
            let failures: Vec<String> = futures_util::stream::iter(0..n)
                .map(|_| once(client.clone(), url.clone()))
                .buffer_unordered(AT_ONCE)
                .filter_map(|r| async move { r.err() })
                .collect()
                .await;
            failures
        }
    };
    service
        .wait_for_health("ready with BTC-USD candles", WITHIN, |s, h| {
            s == 200 && trades_of(h) > 20
        })
        .await;
    // A warm-up round, then the baseline with no stream open.
    assert_eq!(run(200).await, Vec::<String>::new());
    common::wait_for("the warm-up streams closed", WITHIN, || async {
        metric(port, "spot_canvas_stream_clients").await == Some(0.0)
    })
    .await;
    let quiet = service.health().await.expect("health").1;
    let baseline = Baseline {
        pid,
        tasks: tasks_of(&quiet),
        rss: rss_of(pid),
    };
    eprintln!(
        "baseline: pid {pid}, tasks {}, rss {} MiB",
        baseline.tasks,
        baseline.rss >> 20
    );
    let started = std::time::Instant::now();
    let failures = run(CONNECTS).await;
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
    let before = service.health().await.expect("health").1;
    recovered(&service, baseline, "10,000 stream connects", &before).await;
    drop(service);
    sim.stop().await;
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
