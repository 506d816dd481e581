//! Backfill and reconciliation against the simulator (which serves Coinbase's REST candles
//! from the same trades it streams), with a real PostgreSQL and a real nats-server: history
//! on a fresh database, a restart after a gap, a sequence gap and a reconnect after more than
//! a minute, each filled from REST and compared candle by candle, every granularity, with an
//! aggregation of the simulator's trade log; and a deliberately wrong stored candle caught by
//! the REST cross-check, counted and repaired.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use common::{LoggedTrade, StoredRow, TestDb, aggregate, read_trade_log, stored_rows, width};
use rust_decimal::Decimal;
use secrecy::ExposeSecret;
use serde_json::Value;
use spot_canvas::app::App;
use spot_canvas::config::Config;
use spot_canvas::feed::FeedSettings;
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId};
use spot_canvas::sim::faults::{FaultKind, FaultRequest, Scope};
use spot_canvas::sim::{SimConfig, Simulator};
use spot_canvas::store::Repository;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

async fn sim(dir: &std::path::Path, products: &[&str], history_minutes: u32) -> Simulator {
    // Logs show with `--nocapture`.
    let _already = tracing_subscriber::fmt()
        .with_env_filter("info,spot_canvas::sim=warn")
        .with_test_writer()
        .try_init();
    Simulator::start(SimConfig {
        product_list: Some(products.iter().map(|p| (*p).to_owned()).collect()),
        trades_per_second: 2.0,
        history_minutes,
        trade_log: Some(dir.join("trades.jsonl")),
        ..SimConfig::default()
    })
    .await
    .expect("sim")
}

struct Running {
    port: u16,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(
        sim: &Simulator,
        db: &TestDb,
        data_dir: &std::path::Path,
        products: &[&str],
        extra: &[(&str, &str)],
        silence: Duration,
    ) -> Running {
        let mut vars: BTreeMap<String, String> = [
            ("PORT", "0".to_owned()),
            ("DATA_DIR", data_dir.display().to_string()),
            ("DATABASE_URL", db.url.expose_secret().to_owned()),
            ("COINBASE_WS_URL", sim.ws_url()),
            ("COINBASE_REST_URL", sim.rest_url()),
            ("PRODUCTS", products.join(",")),
            ("REST_REQUESTS_PER_SECOND", "50".to_owned()),
            ("CROSSCHECK_INTERVAL_SECS", "0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let config = Config::from_lookup(|name| vars.get(name).cloned()).expect("config");
        let mut settings = FeedSettings::from_config(&config);
        settings.silence_timeout = silence;
        let app = App::build_with(&config, settings)
            .await
            .expect("app builds");
        let port = app.port();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(cancel.clone()));
        Running { port, cancel, task }
    }

    async fn health(&self) -> Value {
        get_json(&format!("http://127.0.0.1:{}/health", self.port)).await
    }

    /// Polls `/health` until `done` holds.
    async fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let health = self.health().await;
            if done(&health) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {health:#}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task
            .await
            .expect("app task")
            .expect("app stops cleanly");
    }
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

fn reconcile(h: &Value, field: &str) -> u64 {
    h["reconcile"][field].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_fresh_database_serves_a_full_history_right_after_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // History back to an hour and a half before today (UTC) began, at least 330 minutes.
    let now = Utc::now();
    let day = now.timestamp() - now.timestamp().rem_euclid(86_400);
    let history = ((now.timestamp() - day) / 60 + 90).max(330) as u32;
    let sim = sim(dir.path(), &["BTC-USD", "ETH-USD"], history).await;
    let db = TestDb::migrated().await;
    // BTC-USD was last stored an hour before today began, beyond the 1-hour horizon, and the
    // service stopped inside that minute and hour: their candles are partial (here: wrong).
    let stale_minute = day - 3_600;
    let partial = |g: Granularity| {
        let candle = Candle {
            product_id: "BTC-USD".into(),
            granularity: g,
            start: DateTime::from_timestamp(stale_minute, 0).expect("start"),
            open: Decimal::ONE,
            high: Decimal::ONE,
            low: Decimal::ONE,
            close: Decimal::ONE,
            volume: Decimal::ONE,
            buy_volume: Some(Decimal::ONE),
            trade_count: Some(1),
        };
        CandleUpdate {
            complete: true,
            revision: 0,
            counted_trades: 1,
            last_trade_id: TradeId(1),
            last_trade_time: candle.start,
            last_received: candle.start,
            candle,
        }
    };
    Repository::new(db.pool.clone())
        .upsert_candles(&[
            partial(Granularity::OneMinute),
            partial(Granularity::OneHour),
        ])
        .await
        .expect("stale rows");
    let data = tempfile::tempdir().expect("data dir");
    let started = std::time::Instant::now();
    let app = Running::start(
        &sim,
        &db,
        data.path(),
        &["BTC-USD", "ETH-USD"],
        &[("HISTORY_BUCKETS", "300"), ("BACKFILL_HORIZON_HOURS", "1")],
        Duration::from_secs(10),
    )
    .await;
    let url = |g: &str| {
        format!(
            "http://127.0.0.1:{}/api/v1/candles?product=ETH-USD&granularity={g}&limit=300",
            app.port
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let body = get_json(&url("1m")).await;
        if body["candles"].as_array().map_or(0, Vec::len) == 300 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no full one-minute history: {} candles",
            body["candles"].as_array().map_or(0, Vec::len)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("300 one-minute candles after {:?}", started.elapsed());
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let trades: Vec<&LoggedTrade> = log.iter().filter(|t| t.product_id == "ETH-USD").collect();
    let expected = aggregate(&trades);
    for g in Granularity::ALL {
        let body = get_json(&url(g.short_name())).await;
        let candles = body["candles"].as_array().expect("candles");
        let complete: Vec<&Value> = candles
            .iter()
            .filter(|c| c["complete"] == Value::Bool(true))
            .collect();
        // Every complete bucket the exchange has in the span, and nothing else.
        let oldest = candles
            .first()
            .and_then(|c| c["timestamp"].as_i64())
            .expect("a candle");
        let newest_complete = Utc::now().timestamp() - width(g) - 3;
        let wanted: Vec<i64> = expected
            .keys()
            .filter(|(_, eg, start)| {
                *eg == g && *start >= oldest && start + width(g) <= newest_complete
            })
            .map(|k| k.2)
            .collect();
        let got: Vec<i64> = complete
            .iter()
            .filter_map(|c| c["timestamp"].as_i64())
            .filter(|s| s + width(g) <= newest_complete)
            .collect();
        assert_eq!(got, wanted, "{g}: the full span");
        for c in complete {
            let start = c["timestamp"].as_i64().expect("timestamp");
            let e = &expected[&("ETH-USD".to_owned(), g, start)];
            let decimal = |f: &str| -> Decimal { c[f].as_str().expect(f).parse().expect(f) };
            assert_eq!(
                (
                    decimal("open"),
                    decimal("high"),
                    decimal("low"),
                    decimal("close"),
                    decimal("volume")
                ),
                (e.open, e.high, e.low, e.close, e.volume),
                "{g} {start}"
            );
        }
    }
    // The stale product's partial candles were replaced by REST's, where the history span
    // (300 buckets back from now) reaches them.
    app.wait_for(
        "the stale product's history",
        Duration::from_secs(45),
        |h| reconcile(h, "windows_done") >= 2,
    )
    .await;
    let btc: Vec<&LoggedTrade> = log.iter().filter(|t| t.product_id == "BTC-USD").collect();
    let btc_expected = aggregate(&btc);
    let rows = stored_rows(&db.pool).await;
    for g in [
        Granularity::OneMinute,
        Granularity::FiveMinutes,
        Granularity::OneHour,
    ] {
        if stale_minute < now.timestamp() - 299 * width(g) {
            continue;
        }
        let key = ("BTC-USD".to_owned(), g, stale_minute);
        let StoredRow {
            ohlcv: got,
            trade_count: count,
            backfilled,
        } = &rows[&key];
        let e = &btc_expected[&key];
        assert_eq!(
            (got.open, got.high, got.low, got.close, got.volume),
            (e.open, e.high, e.low, e.close, e.volume),
            "{key:?} replaced"
        );
        assert!(*backfilled && count.is_none(), "{key:?} from REST");
    }
    let bad = reqwest::get(format!(
        "http://127.0.0.1:{}/api/v1/candles?product=ETH-USD&granularity=7m",
        app.port
    ))
    .await
    .expect("request");
    assert_eq!(bad.status(), 400);
    let message: Value = bad.json().await.expect("json");
    assert!(
        message["error"]
            .as_str()
            .is_some_and(|m| m.contains("granularity")),
        "{message}"
    );
    app.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn restarts_gaps_and_reconnects_are_filled_from_rest_and_every_candle_is_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let products = ["BTC-USD", "ETH-USD"];
    let sim = sim(dir.path(), &products, 20).await;
    let db = TestDb::migrated().await;
    let data = tempfile::tempdir().expect("data dir");
    let per_connection = [("PRODUCTS_PER_CONNECTION", "1")];

    // A first run stores some history, then the service is down for a while (trades go on).
    let first = Running::start(
        &sim,
        &db,
        data.path(),
        &products,
        &per_connection,
        Duration::from_secs(10),
    )
    .await;
    first
        .wait_for("the start windows", Duration::from_secs(60), |h| {
            reconcile(h, "windows_done") >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.stop().await;
    tokio::time::sleep(Duration::from_secs(20)).await;

    // The second run: a long silence timeout, so a 65 s stall is a sequence gap and a longer
    // one a reconnect after 70 s.
    let second = Running::start(
        &sim,
        &db,
        data.path(),
        &products,
        &per_connection,
        Duration::from_secs(70),
    )
    .await;
    second
        .wait_for("both connections", Duration::from_secs(30), |h| {
            h["feed"]["connected"].as_u64() == Some(2)
        })
        .await;
    let connection_of = |product: &str| -> u64 {
        let connections = sim.state.connections();
        connections
            .as_array()
            .expect("connections")
            .iter()
            .find(|c| {
                c["subscriptions"]["market_trades"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p == product))
            })
            .and_then(|c| c["id"].as_u64())
            .unwrap_or_else(|| panic!("a connection for {product}: {connections}"))
    };
    let stalled_at = Utc::now();
    sim.arm(FaultRequest {
        scope: Scope::Connection(connection_of("BTC-USD")),
        after_frames: 0,
        kind: FaultKind::Stall { secs: Some(65) },
    });
    sim.arm(FaultRequest {
        scope: Scope::Connection(connection_of("ETH-USD")),
        after_frames: 0,
        kind: FaultKind::Stall { secs: Some(300) },
    });
    second
        .wait_for("a gap and a reconnect", Duration::from_secs(120), |h| {
            h["engine"]["gaps_seen"].as_u64() >= Some(1)
                && h["engine"]["reconnects_seen"].as_u64() >= Some(1)
        })
        .await;
    // Start (2), start edge (2), the gap and the reconnect.
    second
        .wait_for("every window backfilled", Duration::from_secs(150), |h| {
            reconcile(h, "windows_done") >= 6 && reconcile(h, "windows_pending") == 0
        })
        .await;
    let health = second.health().await;
    assert_eq!(reconcile(&health, "windows_failed"), 0, "{health:#}");
    assert!(health["engine"]["backfilled_minutes"].as_u64() > Some(0));

    // Trading stops; what is in flight lands; the service stops and flushes.
    sim.state.exchange.set_paused(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.stop().await;

    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let all: Vec<&LoggedTrade> = log.iter().collect();
    let expected = aggregate(&all);
    let rows = stored_rows(&db.pool).await;
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the same candles: nothing missing after the restart, the gap and the reconnect"
    );
    let mut unknown_counts = 0;
    for (key, e) in &expected {
        let StoredRow {
            ohlcv: got,
            trade_count: count,
            backfilled,
        } = &rows[key];
        assert_eq!(
            (got.open, got.high, got.low, got.close, got.volume),
            (e.open, e.high, e.low, e.close, e.volume),
            "{key:?}"
        );
        match count {
            Some(count) => assert_eq!(*count, e.count, "{key:?}: a known count is exact"),
            None => {
                unknown_counts += 1;
                assert!(
                    *backfilled,
                    "{key:?}: an unknown count is marked backfilled"
                );
            }
        }
    }
    assert!(unknown_counts > 0, "some candles came from REST");
    // The minutes the stalls certainly lost came from REST.
    let lost = (stalled_at + TimeDelta::seconds(3)).timestamp()
        ..(stalled_at + TimeDelta::seconds(60)).timestamp();
    for product in products {
        for (
            (p, g, start),
            StoredRow {
                trade_count: count,
                backfilled,
                ..
            },
        ) in &rows
        {
            if p == product
                && *g == Granularity::OneMinute
                && start + 60 > lost.start
                && *start < lost.end
            {
                assert!(
                    *backfilled && count.is_none(),
                    "{product} minute {start} during the stall is backfilled"
                );
            }
        }
    }
    sim.stop().await;
}

#[tokio::test]
async fn a_wrong_stored_candle_is_caught_by_the_rest_cross_check_and_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = sim(dir.path(), &["BTC-USD"], 20).await;
    let db = TestDb::migrated().await;
    let data = tempfile::tempdir().expect("data dir");
    let app = Running::start(
        &sim,
        &db,
        data.path(),
        &["BTC-USD"],
        &[("CROSSCHECK_INTERVAL_SECS", "1")],
        Duration::from_secs(10),
    )
    .await;
    let judged = |h: &Value, f: &str| h["reconcile"]["crosscheck_rest_1m"][f].as_u64();
    app.wait_for("a live minute checked", Duration::from_secs(240), |h| {
        judged(h, "matched") >= Some(1)
    })
    .await;
    // Corrupt a minute that is complete and stored but not yet checked: the check lags the
    // clock by 12 s, the completion by 2 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    let corrupted = loop {
        let now = Utc::now();
        if (4..=9).contains(&now.second()) {
            let minute = now.timestamp() - i64::from(now.second()) - 60;
            let changed = sqlx::query(
                "UPDATE live_candles SET close = close + 1 WHERE product_id = 'BTC-USD' \
                 AND granularity = 'ONE_MINUTE' AND \"timestamp\" = to_timestamp($1) \
                 AND complete AND NOT backfilled",
            )
            .bind(minute as f64)
            .execute(&db.pool)
            .await
            .expect("update")
            .rows_affected();
            if changed == 1 {
                break minute;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no live minute to corrupt"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    app.wait_for("the mismatch", Duration::from_secs(60), |h| {
        judged(h, "mismatched") >= Some(1)
    })
    .await;
    let health = app.health().await;
    let check = &health["reconcile"]["crosscheck_rest_1m"];
    assert_eq!(
        check["mismatched"].as_u64(),
        Some(1),
        "only minute {corrupted} is wrong: {check}"
    );
    let rate = check["match_rate"].as_f64().expect("a match rate");
    assert!(rate < 1.0 && rate > 0.0, "{check}");
    // The wrong minute is taken again from REST.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (close, backfilled) = loop {
        let row: (Decimal, bool) = sqlx::query_as(
            "SELECT close, backfilled FROM live_candles WHERE product_id = 'BTC-USD' \
             AND granularity = 'ONE_MINUTE' AND \"timestamp\" = to_timestamp($1)",
        )
        .bind(corrupted as f64)
        .fetch_one(&db.pool)
        .await
        .expect("row");
        if row.1 || tokio::time::Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(backfilled, "minute {corrupted} repaired from REST");
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let trades: Vec<&LoggedTrade> = log.iter().collect();
    let expected = &aggregate(&trades)[&("BTC-USD".to_owned(), Granularity::OneMinute, corrupted)];
    assert_eq!(
        close, expected.close,
        "the repaired close is the exchange's"
    );
    app.stop().await;
    sim.stop().await;
}
