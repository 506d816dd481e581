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

fn raised(health: &Value, alarm: &str) -> bool {
    health["alarms"]["raised"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["kind"] == alarm))
}

fn quiet_products(health: &Value) -> Vec<String> {
    health["alarms"]["quiet_products"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["product_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn metrics_move_consistently_and_every_update_is_written_or_superseded() {
    let sim = simulator(3, 5.0).await;
    let db = TestDb::new().await;
    let data_dir = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let env = AppEnv::for_sim(&sim, data_dir.path()).database(&db);
    let service = Service::start(&env, &logs.path().join("serve.log")).await;
    let port = service.port;
    // A stream client, so that the end-to-end histogram has updates to time. A 503 (with
    // Retry-After: the product list not readable yet on a loaded machine) is retried, as a
    // client does; any other refusal fails the test.
    let stream = eventually("the stream open", WITHIN, || async {
        let request = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{port}/api/v1/stream?products=BTC-USD,ETH-USD&granularity=1m"
            ))
            .send();
        let response = tokio::time::timeout(WITHIN, request)
            .await
            .expect("the stream answers in time")
            .expect("the stream answers");
        match response.status().as_u16() {
            200 => Some(response),
            503 => None,
            status => panic!(
                "the stream refused with {status}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    })
    .await;
    let mut reader = common::SseReader::new(stream);
    let first = eventually("trades, updates and written rows", WITHIN, || async {
        let s = scrape(port).await?;
        (value(&s, "spot_canvas_feed_trades_total") > 0.0
            && value(&s, "spot_canvas_store_rows_written_total") > 0.0)
            .then_some(s)
    })
    .await;
    // Live events reach the client.
    let mut events = 0;
    while events < 3 {
        let event = reader.next(WITHIN).await.expect("a live event");
        if event.text.contains("<spot-candle") {
            events += 1;
        }
    }
    let second = eventually("the counters to move", WITHIN, || async {
        let s = scrape(port).await?;
        (value(&s, "spot_canvas_feed_trades_total")
            > value(&first, "spot_canvas_feed_trades_total")
            && value(&s, "spot_canvas_end_to_end_seconds_count") > 0.0)
            .then_some(s)
    })
    .await;
    // Counters never go back.
    for (key, before) in &first {
        if key.contains("_total") || key.ends_with("_count") || key.ends_with("_sum") {
            assert!(
                value(&second, key) >= *before,
                "{key} went from {before} to {}",
                value(&second, key)
            );
        }
    }
    for histogram in [
        "spot_canvas_engine_processing_seconds",
        "spot_canvas_store_write_seconds",
        "spot_canvas_end_to_end_seconds",
    ] {
        let count = value(&second, &format!("{histogram}_count"));
        assert!(count > 0.0, "{histogram} has no samples");
        let inf = value(&second, &format!("{histogram}_bucket{{le=\"+Inf\"}}"));
        assert_eq!(
            inf, count,
            "{histogram}: the +Inf bucket holds every sample"
        );
        let sum = value(&second, &format!("{histogram}_sum"));
        assert!(
            sum >= 0.0 && sum / count < 5.0,
            "{histogram}: mean {} s",
            sum / count
        );
    }
    for channel in [
        "feed_events",
        "engine_updates",
        "backfills",
        "writer",
        "publisher",
    ] {
        let key = format!("spot_canvas_channel_capacity{{channel=\"{channel}\"}}");
        assert!(value(&second, &key) > 0.0, "{key} missing");
        let utilization = value(
            &second,
            &format!("spot_canvas_channel_utilization{{channel=\"{channel}\"}}"),
        );
        assert!(
            (0.0..=1.0).contains(&utilization),
            "{channel}: {utilization}"
        );
    }
    assert_eq!(value(&second, "spot_canvas_stream_clients"), 1.0);
    assert_eq!(value(&second, "spot_canvas_role{role=\"both\"}"), 1.0);
    for alarm in [
        "quiet_product",
        "heartbeat",
        "clock_drift",
        "database",
        "nats",
    ] {
        let key = format!("spot_canvas_alarm{{alarm=\"{alarm}\"}}");
        assert_eq!(second.get(&key), Some(&0.0), "{key}");
    }
    // Trading stops: once the writer has flushed, every update the engine produced is a row
    // written or was superseded by a newer update of its candle before the write.
    sim_post(&sim, "/sim/pause", json!({ "paused": true })).await;
    let flushed = eventually(
        "updates produced = rows written + superseded",
        WITHIN,
        || async {
            let s = scrape(port).await?;
            let produced = value(&s, "spot_canvas_engine_updates_total");
            let written = value(&s, "spot_canvas_store_rows_written_total");
            let superseded = value(&s, "spot_canvas_store_updates_superseded_total");
            (produced > 0.0 && produced == written + superseded).then_some(s)
        },
    )
    .await;
    let produced = value(&flushed, "spot_canvas_engine_updates_total");
    assert!(value(&flushed, "spot_canvas_store_rows_written_total") > 0.0);
    assert!(value(&flushed, "spot_canvas_store_batches_total") > 0.0);
    // The same updates went to NATS.
    wait_for("published + superseded = produced", WITHIN, || async {
        scrape(port).await.is_some_and(|s| {
            let published = value(&s, "spot_canvas_bus_published_total")
                + value(&s, "spot_canvas_bus_updates_superseded_total");
            published >= produced && published == value(&s, "spot_canvas_engine_updates_total")
        })
    })
    .await;
    // And PostgreSQL holds the rows the metric counts, at least one per candle written.
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM live_candles")
        .fetch_one(&db.pool)
        .await
        .expect("counts");
    assert!(rows > 0 && rows as f64 <= value(&flushed, "spot_canvas_store_rows_written_total"));
    drop(reader);
    // JSON logs for Cloud Logging: every line an object with a severity; one line per request,
    // with its path and status but never its query; the database's password nowhere.
    let lines = service.log_lines();
    assert!(lines.len() > 10);
    for line in &lines {
        assert!(
            ["DEBUG", "INFO", "WARNING", "ERROR"]
                .contains(&line["severity"].as_str().unwrap_or("")),
            "{line}"
        );
        assert!(
            line["time"].is_string() && line["message"].is_string(),
            "{line}"
        );
    }
    let requests: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request").collect();
    assert!(
        requests
            .iter()
            .any(|l| l["path"] == "/api/v1/stream" && l["status"] == 200 && l["method"] == "GET"),
        "an access line for the stream"
    );
    // Scrapes and probes come every few seconds: at debug, not in an `info` log.
    assert!(
        !requests.iter().any(|l| l["path"] == "/metrics"),
        "no access line for a scrape at info"
    );
    let log = service.log();
    assert!(
        !log.contains("products=BTC-USD"),
        "no query string in the log"
    );
    let password = db.url.expose_secret();
    let password = password
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(user, _)| user.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .expect("the test database's URL holds a password");
    assert!(
        password.len() >= 8 && !log.contains(&password),
        "the password leaked"
    );
    drop(service);
    sim.stop().await;
}

#[tokio::test]
async fn quiet_product_heartbeat_and_clock_alarms_are_raised_and_cleared() {
    let sim = simulator(3, 4.0).await;
    let db = TestDb::new().await;
    let data_dir = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let env = AppEnv::for_sim(&sim, data_dir.path())
        .database(&db)
        .set("CLOCK_CHECK_SECS", "1");
    let service = Service::start(&env, &logs.path().join("serve.log")).await;
    let port = service.port;
    let board = format!("http://127.0.0.1:{port}/");
    service
        .wait_for_health("ready, no alarm, a clock reading", WITHIN, |status, h| {
            status == 200
                && h["alarms"]["evaluated_at"].is_string()
                && h["alarms"]["raised"].as_array().is_some_and(Vec::is_empty)
                && h["clock"]["last"]["offset_ms"].is_i64()
        })
        .await;

    // One product stops trading: once it has a rate to judge by (at least ten intervals
    // between its trades), its silence is unusual. The subscribe's snapshots bring 50 trades a
    // product; some 20 s of live trading follow.
    service
        .wait_for_health("enough trades to judge rates by", WITHIN, |_, h| {
            h["engine"]["trades"].as_u64() > Some(150 + 3 * 4 * 20)
        })
        .await;
    let quiet = "ETH-USD";
    let response = reqwest::Client::new()
        .put(format!("{}/sim/products/{quiet}/listing", root(&sim)))
        .json(&json!({ "status": "online", "trading_disabled": true }))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 204);
    let health = service
        .wait_for_health("the quiet-product alarm", WITHIN, |_, h| {
            raised(h, "quiet_product")
        })
        .await;
    assert_eq!(
        quiet_products(&health),
        vec![quiet.to_owned()],
        "only it is quiet"
    );
    let s = scrape(port).await.expect("metrics");
    assert_eq!(value(&s, "spot_canvas_alarm{alarm=\"quiet_product\"}"), 1.0);
    assert_eq!(value(&s, "spot_canvas_quiet_products"), 1.0);
    let (status, page) = get_text(&board).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("data-alarm=\"quiet_product\""),
        "the board shows it"
    );
    assert!(page.contains(quiet));
    // Trading again: the alarm clears.
    let response = reqwest::Client::new()
        .put(format!("{}/sim/products/{quiet}/listing", root(&sim)))
        .json(&json!({ "status": "online", "trading_disabled": false }))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 204);
    service
        .wait_for_health("the quiet-product alarm to clear", WITHIN, |_, h| {
            !raised(h, "quiet_product")
        })
        .await;

    // The connection's heartbeats stop (trades go on) for 25 s.
    sim_post(
        &sim,
        "/sim/faults",
        json!({ "scope": "all", "kind": "mute_heartbeats", "secs": 25 }),
    )
    .await;
    let health = service
        .wait_for_health("the heartbeat alarm", WITHIN, |_, h| raised(h, "heartbeat"))
        .await;
    assert!(
        health["alarms"]["silent_connections"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    );
    assert!(!raised(&health, "quiet_product"), "trades still flow");
    let s = scrape(port).await.expect("metrics");
    assert_eq!(value(&s, "spot_canvas_alarm{alarm=\"heartbeat\"}"), 1.0);
    let (_, page) = get_text(&board).await;
    assert!(page.contains("data-alarm=\"heartbeat\""));
    service
        .wait_for_health("heartbeats again", WITHIN, |_, h| !raised(h, "heartbeat"))
        .await;

    // The exchange's clock runs 5 s ahead of ours.
    sim_post(&sim, "/sim/clock", json!({ "offset_ms": 5_000 })).await;
    let health = service
        .wait_for_health("the clock-drift alarm", WITHIN, |_, h| {
            raised(h, "clock_drift")
        })
        .await;
    let offset = health["alarms"]["clock_offset_ms"]
        .as_i64()
        .expect("an offset");
    assert!((-5_500..=-4_500).contains(&offset), "offset {offset} ms");
    let s = scrape(port).await.expect("metrics");
    assert_eq!(value(&s, "spot_canvas_alarm{alarm=\"clock_drift\"}"), 1.0);
    let seconds = value(&s, "spot_canvas_clock_offset_seconds");
    assert!((-5.5..=-4.5).contains(&seconds), "{seconds} s");
    let (_, page) = get_text(&board).await;
    assert!(page.contains("data-alarm=\"clock_drift\""));
    sim_post(&sim, "/sim/clock", json!({ "offset_ms": 0 })).await;
    service
        .wait_for_health("the clock-drift alarm to clear", WITHIN, |_, h| {
            !raised(h, "clock_drift")
        })
        .await;
    drop(service);
    sim.stop().await;
}

#[tokio::test]
async fn database_and_nats_alarms_follow_their_servers() {
    let sim = simulator(2, 2.0).await;
    let db = TestDb::new().await;
    let (nats, _nats_dir) = nats_server().await;
    let data_dir = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let env = AppEnv::for_sim(&sim, data_dir.path())
        .database(&db)
        .set("NATS_URL", nats.client_url());
    let service = Service::start(&env, &logs.path().join("serve.log")).await;
    let port = service.port;
    service
        .wait_for_health("ready without alarms", WITHIN, |status, h| {
            status == 200 && h["alarms"]["raised"].as_array().is_some_and(Vec::is_empty)
        })
        .await;

    db.pg.stop_with("fast").await.expect("PostgreSQL stops");
    let health = service
        .wait_for_health("the database alarm", WITHIN, |_, h| raised(h, "database"))
        .await;
    let detail = health["alarms"]["raised"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["kind"] == "database"))
        .and_then(|x| x["detail"].as_str())
        .expect("a detail")
        .to_owned();
    assert!(!detail.contains("postgres://"), "no URL in {detail}");
    let s = scrape(port)
        .await
        .expect("metrics answer without the database");
    assert_eq!(value(&s, "spot_canvas_alarm{alarm=\"database\"}"), 1.0);
    let (status, _) = get_text(&format!("http://127.0.0.1:{port}/health/ready")).await;
    assert_eq!(status, 503);
    db.pg.restart().await.expect("PostgreSQL starts again");
    service
        .wait_for_health("the database alarm to clear", WITHIN, |status, h| {
            status == 200 && !raised(h, "database")
        })
        .await;

    nats.stop().await;
    service
        .wait_for_health("the NATS alarm", WITHIN, |status, h| {
            status == 503 && raised(h, "nats")
        })
        .await;
    wait_for("metrics to flag NATS and unreadiness", WITHIN, || async {
        scrape(port).await.is_some_and(|s| {
            value(&s, "spot_canvas_alarm{alarm=\"nats\"}") == 1.0
                && s.get("spot_canvas_ready") == Some(&0.0)
        })
    })
    .await;
    drop(service);
    sim.stop().await;
}

#[tokio::test]
async fn a_web_instance_serves_streams_an_ingest_instance_feeds_through_nats() {
    let sim = simulator(2, 5.0).await;
    let db = TestDb::new().await;
    let (nats, _nats_dir) = nats_server().await;
    let logs = tempfile::tempdir().expect("tempdir");
    let ingest_dir = common::data_dir();
    let mut ingest = Service::start(
        &AppEnv::for_sim(&sim, ingest_dir.path())
            .database(&db)
            .set("NATS_URL", nats.client_url())
            .set("ROLE", "ingest"),
        &logs.path().join("ingest.log"),
    )
    .await;
    // The web role has no feed: it needs neither the exchange nor a Coinbase key.
    let web_dir = common::data_dir();
    let metrics_port = free_port();
    let mut web = Service::start(
        &AppEnv::new()
            .set("METRICS_PORT", metrics_port.to_string())
            .set("DATA_DIR", web_dir.path().display().to_string())
            .database(&db)
            .set("NATS_URL", nats.client_url())
            .set("COINBASE_WS_URL", "ws://127.0.0.1:1")
            .set("COINBASE_REST_URL", "http://127.0.0.1:1")
            .set("ROLE", "web"),
        &logs.path().join("web.log"),
    )
    .await;
    let ingest_health = ingest
        .wait_for_health("the ingest instance ready", WITHIN, |status, h| {
            status == 200 && h["role"] == "ingest"
        })
        .await;
    assert!(ingest_health["feed"]["connected"].as_u64() > Some(0));
    let web_health = web
        .wait_for_health("the web instance ready", WITHIN, |status, h| {
            status == 200 && h["role"] == "web"
        })
        .await;
    assert_eq!(web_health["checks"]["feed"]["ok"], true);
    assert!(
        web_health["checks"]["feed"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("does not ingest"))
    );
    assert_eq!(web_health["feed"]["connections"], json!([]));

    // The web instance streams candles it never built.
    let stream = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/api/v1/stream?products=BTC-USD&granularity=1m",
            web.port
        ))
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(stream.status(), 200);
    let mut reader = common::SseReader::new(stream);
    let mut live = 0;
    while live < 3 {
        let event = reader.next(WITHIN).await.expect("an event");
        if event.text.contains("<spot-candle") && event.text.contains("BTC-USD") {
            live += 1;
        }
    }
    let (status, page) = get_text(&format!("http://127.0.0.1:{}/", web.port)).await;
    assert_eq!(status, 200);
    assert!(page.contains("BTC-USD"));
    // `METRICS_PORT`: the web instance's metrics are there, not on its public port.
    let (status, _) = get_text(&format!("http://127.0.0.1:{}/metrics", web.port)).await;
    assert_eq!(status, 404);
    // Events keep coming; their latency, from the ingest instance's receipt to this one's
    // write, is timed.
    let deadline = tokio::time::Instant::now() + WITHIN;
    let web_metrics = loop {
        // Keep reading, so that the stream keeps flowing.
        reader.next(WITHIN).await.expect("the stream goes on");
        if let Some(s) = scrape(metrics_port).await
            && value(&s, "spot_canvas_end_to_end_seconds_count") > 0.0
        {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no end-to-end sample on the web instance"
        );
    };
    assert_eq!(value(&web_metrics, "spot_canvas_role{role=\"web\"}"), 1.0);
    assert!(
        web_metrics
            .keys()
            .all(|k| !k.starts_with("spot_canvas_feed_trades_total")),
        "the web instance receives no trade"
    );

    // The ingest instance serves health and metrics, not the dashboard or the API.
    let (status, _) = get_text(&format!("http://127.0.0.1:{}/", ingest.port)).await;
    assert_eq!(status, 404);
    let (status, _) = get_text(&format!(
        "http://127.0.0.1:{}/api/v1/stream?products=BTC-USD",
        ingest.port
    ))
    .await;
    assert_eq!(status, 404);
    let ingest_metrics = scrape(ingest.port).await.expect("metrics");
    assert!(value(&ingest_metrics, "spot_canvas_feed_trades_total") > 0.0);
    assert_eq!(
        value(&ingest_metrics, "spot_canvas_role{role=\"ingest\"}"),
        1.0
    );
    drop(reader);
    // Each stops within Cloud Run's 10 s after SIGTERM, cleanly.
    for service in [&mut web, &mut ingest] {
        service.terminate();
        let status = service.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "{status}\n{}", service.log());
    }
    nats.stop().await;
    sim.stop().await;
}

/// Resident memory of process `pid` from `/proc/<pid>/status`: `VmRSS` now and `VmHWM`, its
/// peak so far, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process runs");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .expect(name)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn a_products_list_of_2_gib_costs_tens_of_mib_and_is_reported() {
    // The list is 2 GiB (streamed, no length announced) from the service's first fetch on.
    let sim = simulator(3, 4.0).await;
    sim_post(&sim, "/sim/products-faults", json!({ "kind": "huge" })).await;
    let db = TestDb::new().await;
    let data_dir = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let env = AppEnv::for_sim(&sim, data_dir.path()).database(&db);
    let service = Service::start(&env, &logs.path().join("serve.log")).await;
    let port = service.port;
    let health = service
        .wait_for_health("two refused products lists", WITHIN, |_, h| {
            h["feed"]["discovery"]["too_large"].as_u64() >= Some(2)
        })
        .await;
    let error = health["feed"]["discovery"]["last_error"]
        .as_str()
        .expect("the error in /health");
    assert!(error.contains("body larger than 16777216 bytes"), "{error}");
    let s = scrape(port).await.expect("metrics");
    assert!(
        value(
            &s,
            "spot_canvas_rest_body_too_large_total{answer=\"products\"}"
        ) >= 2.0,
        "counted in /metrics"
    );
    let (_, peak_during_fault) = memory_of(service.pid());

    // The list is normal again: the next attempt reads it, and the markets stream.
    let cleared = reqwest::Client::new()
        .delete(format!("{}/sim/products-faults", root(&sim)))
        .send()
        .await
        .expect("answers");
    assert_eq!(cleared.status(), 204);
    let health = service
        .wait_for_health("the markets streaming", WITHIN, |status, h| {
            status == 200
                && h["feed"]["products"].as_u64() == Some(3)
                && h["feed"]["discovery"]["last_error"].is_null()
                && h["engine"]["trades"].as_u64() > Some(200)
        })
        .await;
    assert_eq!(
        health["feed"]["discovery"]["last_products"]
            .as_u64()
            .map(|n| n > 3),
        Some(true)
    );
    // Normal: a few samples of the settled process, the lowest.
    let mut normal = u64::MAX;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        normal = normal.min(memory_of(service.pid()).0);
    }
    let (_, peak) = memory_of(service.pid());
    println!(
        "peak RSS while the products list was 2 GiB: {} MiB (VmHWM); normal RSS after: {} MiB; \
         peak over the whole run: {} MiB",
        peak_during_fault >> 20,
        normal >> 20,
        peak >> 20
    );
    assert!(
        peak_during_fault <= normal + (64 << 20),
        "peak {} MiB while the list was 2 GiB, normal {} MiB",
        peak_during_fault >> 20,
        normal >> 20
    );
    drop(service);
    sim.stop().await;
}

#[tokio::test]
async fn the_embedded_nats_refuses_clients_without_the_token_made_at_start() {
    use std::os::unix::fs::PermissionsExt;

    let sim = simulator(2, 4.0).await;
    let db = TestDb::new().await;
    let data_dir = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    // No NATS_URL: the service starts its own nats-server.
    let env = AppEnv::for_sim(&sim, data_dir.path()).database(&db);
    let log = logs.path().join("serve.log");
    let service = Service::start(&env, &log).await;
    service
        .wait_for_health("ready on the embedded NATS", WITHIN, |status, h| {
            status == 200 && h["checks"]["nats"]["ok"] == true
        })
        .await;
    let store = data_dir.path().join("nats");
    let config = store.join("nats-server.conf");
    let mode = std::fs::metadata(&config)
        .expect("the config file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let text = std::fs::read_to_string(&config).expect("readable");
    let token = text
        .split('"')
        .nth(1)
        .filter(|t| t.len() >= 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .expect("a token of 32 random bytes, hex")
        .to_owned();
    // The server's address, from its ports file.
    let ports = std::fs::read_dir(store.join("ports"))
        .expect("ports dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))
        .expect("a ports file");
    let ports: Value =
        serde_json::from_str(&std::fs::read_to_string(ports.path()).expect("read")).expect("json");
    let url = ports["nats"][0].as_str().expect("a client URL").to_owned();

    // Without the token, or with another: refused.
    let refused = async_nats::ConnectOptions::new()
        .connect(url.as_str())
        .await
        .expect_err("no token: refused");
    assert!(
        refused.to_string().to_lowercase().contains("authorization"),
        "{refused}"
    );
    let wrong = async_nats::ConnectOptions::with_token("0".repeat(64))
        .connect(url.as_str())
        .await
        .expect_err("a wrong token: refused");
    assert!(
        wrong.to_string().to_lowercase().contains("authorization"),
        "{wrong}"
    );
    // With it: taken.
    let client = async_nats::ConnectOptions::with_token(token.clone())
        .connect(url.as_str())
        .await
        .expect("the token is taken");
    client.flush().await.expect("flush");

    // The token is in no argv, no environment and no log line; the service works.
    for pid in std::iter::once(service.pid()).chain(service.descendants()) {
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&argv).contains(&token),
            "the token in the argv of {pid}"
        );
        assert!(
            !common::environment_of(pid)
                .iter()
                .any(|e| e.contains(&token)),
            "the token in the environment of {pid}"
        );
    }
    service
        .wait_for_health("candles flowing through NATS", WITHIN, |status, h| {
            let live = &h["bus"]["live"];
            status == 200
                && (live["messages"].as_u64() > Some(0) || live["own_skipped"].as_u64() > Some(0))
        })
        .await;
    let nats_log = std::fs::read_to_string(store.join("nats-server.log")).unwrap_or_default();
    assert!(
        !service.log().contains(&token),
        "the token in the service's log"
    );
    assert!(!nats_log.contains(&token), "the token in nats-server's log");
    drop(client);
    drop(service);
    sim.stop().await;
}

/// `http://ADDR`, the simulator's root (its admin API is under `/sim`).
fn root(sim: &Simulator) -> String {
    format!("http://{}", sim.addr)
}

/// A port free on loopback now (the service binds it moments later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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

/// What a hostile exchange sends in one run: products-list faults (armed before the service
/// starts), WebSocket faults (armed once it streams), and the `/health` reading that shows the
/// bad items counted.
struct Hostile {
    products_faults: Vec<Value>,
    ws_faults: Vec<Value>,
    what: &'static str,
    counted: fn(&Value) -> bool,
    /// The products faults are cleared once counted (a list the service cannot take at all).
    cleared_when_counted: bool,
}

/// The normal markets of a simulator of 3 products.
const NORMAL: [&str; 3] = ["BTC-USD", "ETH-USD", "SOL-USD"];

/// Every byte of a stream read for `secs` seconds (the stream goes on: it is cut there).
fn raw_stream(url: String, secs: u64) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut response = reqwest::get(&url).await.expect("the stream answers");
        assert_eq!(response.status(), 200, "{url}");
        let mut bytes = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, response.chunk()).await {
            bytes.extend_from_slice(&chunk);
        }
        bytes
    })
}

/// Asserts a stream's raw bytes hold events and no control character but the line feeds of
/// the format: no CR, no NUL, no other C0 code, no DEL, no C1 code.
fn assert_no_control_characters(name: &str, bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).expect("UTF-8");
    assert!(
        text.contains("event: datastar-patch-elements"),
        "{name}: events were read"
    );
    let bad: Vec<(usize, char)> = text
        .char_indices()
        .filter(|(_, c)| c.is_control() && *c != '\n')
        .take(5)
        .collect();
    assert!(bad.is_empty(), "{name}: control characters {bad:?}");
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let field = line.split(':').next().unwrap_or_default();
        assert!(
            matches!(field, "" | "event" | "id" | "data" | "retry"),
            "{name}: a line of no SSE field: {line:?}"
        );
        if field == "retry" {
            panic!("{name}: no stream sets the reconnect delay: {line:?}");
        }
    }
}

/// Runs the service against a simulator doing `hostile`, reads the raw bytes of every stream
/// meanwhile, stops it, and shows the normal markets untouched: on the board, their candles
/// stored and exact against the trade log, and the streams free of control characters.
async fn normal_markets_stay_exact_beside(hostile: Hostile) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Simulator::start(SimConfig {
        products: 3,
        trades_per_second: 8.0,
        history_minutes: 3,
        trade_log: Some(dir.path().join("trades.jsonl")),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    for fault in &hostile.products_faults {
        sim_post(&sim, "/sim/products-faults", fault.clone()).await;
    }
    let db = TestDb::new().await;
    let data_dir = common::data_dir();
    // Only what the feed delivers: the stored trade counts tell each product's window.
    let env = AppEnv::for_sim(&sim, data_dir.path())
        .database(&db)
        .set("BACKFILL_HORIZON_HOURS", "0");
    let mut service = Service::start(&env, &dir.path().join("serve.log")).await;
    let port = service.port;
    if hostile.cleared_when_counted {
        service
            .wait_for_health(hostile.what, WITHIN, |_, h| (hostile.counted)(h))
            .await;
        let cleared = reqwest::Client::new()
            .delete(format!("{}/sim/products-faults", root(&sim)))
            .send()
            .await
            .expect("answers");
        assert_eq!(cleared.status(), 204);
    }
    service
        .wait_for_health(
            "ready, the normal markets subscribed",
            WITHIN,
            |status, h| status == 200 && h["feed"]["products"].as_u64() == Some(3),
        )
        .await;
    for fault in &hostile.ws_faults {
        sim_post(&sim, "/sim/faults", fault.clone()).await;
    }
    let base = format!("http://127.0.0.1:{port}");
    let streams = [
        (
            "/board/stream",
            raw_stream(format!("{base}/board/stream"), 12),
        ),
        (
            "/markets/BTC-USD/stream",
            raw_stream(format!("{base}/markets/BTC-USD/stream"), 12),
        ),
        (
            "/stream",
            raw_stream(format!("{base}/stream?products={}", NORMAL.join(",")), 12),
        ),
    ];
    let health = service
        .wait_for_health(hostile.what, WITHIN, |_, h| {
            (hostile.counted)(h)
                && h["engine"]["trades"].as_u64() > Some(100)
                && h["store"]["writer"]["written_rows"].as_u64() > Some(0)
        })
        .await;
    assert_eq!(health["feed"]["products"], 3, "{}", health["feed"]);
    // The board lists the normal markets, and nothing else.
    let (status, page) = get_text(&format!("{base}/")).await;
    assert_eq!(status, 200);
    let rows = page.matches("id=\"row-").count();
    assert_eq!(rows, 3, "three rows on the board");
    for id in NORMAL {
        assert!(
            page.contains(&format!("id=\"row-{id}\"")),
            "{id} on the board"
        );
    }
    for (name, stream) in streams {
        let bytes = stream.await.expect("the reader");
        assert_no_control_characters(name, &bytes);
    }
    service.terminate();
    let exit = service.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit}\n{}", service.log());
    sim.stop().await;
    // What is stored is exactly the trade log's normal trades.
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let (windows, stored) = common::stored_windows(&db.pool, &log).await;
    assert_eq!(
        windows.keys().map(String::as_str).collect::<Vec<_>>(),
        NORMAL,
        "only the normal markets are stored"
    );
    assert!(stored > 100, "{stored} trades stored");
    common::assert_table_matches_log(&db.pool, &log, &windows).await;
    let pairs: Vec<String> =
        sqlx::query_scalar("SELECT product_id FROM trading_pairs ORDER BY product_id")
            .fetch_all(&db.pool)
            .await
            .expect("trading pairs");
    assert!(
        NORMAL.iter().all(|id| pairs.iter().any(|p| p == id)),
        "the normal markets are listed: {pairs:?}"
    );
    assert!(
        pairs
            .iter()
            .all(|p| spot_canvas::model::ProductId::parse(p).is_ok()),
        "only ids of the grammar are stored: {pairs:?}"
    );
}

#[tokio::test]
async fn odd_product_ids_in_the_list_cost_only_themselves() {
    normal_markets_stay_exact_beside(Hostile {
        products_faults: vec![json!({ "kind": "odd_ids" })],
        ws_faults: vec![],
        what: "the eleven odd ids counted as skipped",
        counted: |h| h["feed"]["skipped_products"]["last_list"].as_u64() >= Some(11),
        cleared_when_counted: false,
    })
    .await;
}

#[tokio::test]
async fn a_product_listed_twice_is_taken_once() {
    normal_markets_stay_exact_beside(Hostile {
        products_faults: vec![json!({ "kind": "duplicate", "product_id": "ETH-USD" })],
        ws_faults: vec![],
        what: "the second listing counted as skipped",
        counted: |h| h["feed"]["skipped_products"]["last_list"].as_u64() == Some(1),
        cleared_when_counted: false,
    })
    .await;
}

#[tokio::test]
async fn control_characters_in_names_reach_no_stream() {
    normal_markets_stay_exact_beside(Hostile {
        // In a normal product's name fields (never used), and in an extra product's currency
        // codes (refused at the edge).
        products_faults: vec![
            json!({ "kind": "control_chars", "product_id": "BTC-USD" }),
            json!({ "kind": "control_chars", "currency_ids": true }),
        ],
        ws_faults: vec![],
        what: "the product with control characters in its codes counted as skipped",
        counted: |h| h["feed"]["skipped_products"]["last_list"].as_u64() == Some(1),
        cleared_when_counted: false,
    })
    .await;
}

#[tokio::test]
async fn trades_of_products_never_listed_are_counted_and_dropped() {
    normal_markets_stay_exact_beside(Hostile {
        products_faults: vec![],
        // One of a product never listed (a valid id), one of an id that is no product id.
        ws_faults: vec![
            json!({ "scope": "all", "kind": "unlisted_trade" }),
            json!({ "scope": "all", "kind": "unlisted_trade", "product_id": "BAD\r\nevent: x-USD" }),
        ],
        what: "the unlisted trade dropped and the malformed one rejected",
        counted: |h| {
            h["feed"]["unlisted_trades"].as_u64() >= Some(1)
                && h["feed"]["rejected_trades"].as_u64() >= Some(1)
        },
        cleared_when_counted: false,
    })
    .await;
}

#[tokio::test]
async fn a_products_list_too_large_is_refused_and_the_next_one_taken() {
    normal_markets_stay_exact_beside(Hostile {
        // 64 MiB, four times the cap, with no length announced: read until the cap.
        products_faults: vec![json!({ "kind": "huge", "bytes": 64u64 << 20 })],
        ws_faults: vec![],
        what: "a list refused as too large",
        counted: |h| h["feed"]["discovery"]["too_large"].as_u64() >= Some(1),
        cleared_when_counted: true,
    })
    .await;
}

#[tokio::test]
async fn a_products_list_that_never_ends_is_cut_and_the_next_one_taken() {
    normal_markets_stay_exact_beside(Hostile {
        products_faults: vec![json!({ "kind": "endless", "interval_ms": 50 })],
        ws_faults: vec![],
        what: "a list cut by the request timeout",
        counted: |h| h["feed"]["discovery"]["failures"].as_u64() >= Some(1),
        cleared_when_counted: true,
    })
    .await;
}
