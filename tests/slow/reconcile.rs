//! Backfill and reconciliation against the simulator (which serves Coinbase's REST candles
//! from the same trades it streams), with a real PostgreSQL and a real nats-server: history
//! on a fresh database, a restart after a gap, a sequence gap and a reconnect after more than
//! a minute, each filled from REST and compared candle by candle, every granularity, with an
//! aggregation of the simulator's trade log; and a deliberately wrong stored candle caught by
//! the REST cross-check, counted and repaired.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use common::{
    AppEnv, LoggedTrade, StoredRow, TestApp, TestDb, aggregate, read_trade_log, stored_rows, width,
};
use rust_decimal::Decimal;
use serde_json::Value;
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId};
use spot_canvas::store::Repository;
use spot_canvas_sim::faults::{FaultKind, FaultRequest, Scope};
use spot_canvas_sim::{SimConfig, Simulator};

async fn sim(
    dir: &std::path::Path,
    products: &[&str],
    history_minutes: u32,
    trades_per_second: f64,
) -> Simulator {
    // Logs show with `--nocapture`.
    let _already = tracing_subscriber::fmt()
        .with_env_filter("info,spot_canvas_sim=warn")
        .with_test_writer()
        .try_init();
    Simulator::start(SimConfig {
        product_list: Some(products.iter().map(|p| (*p).to_owned()).collect()),
        trades_per_second,
        history_minutes,
        trade_log: Some(dir.join("trades.jsonl")),
        ..SimConfig::default()
    })
    .await
    .expect("sim")
}

/// The service on `db`, fed by `sim`, for `products`: REST paced generously, the periodic
/// REST cross-check off unless `extra` sets it; the feed's silence timeout is `silence`.
async fn start_app(
    sim: &Simulator,
    db: &TestDb,
    data_dir: &std::path::Path,
    products: &[&str],
    extra: &[(&str, &str)],
    silence: Duration,
) -> TestApp {
    let env = extra.iter().fold(
        AppEnv::for_sim(sim, data_dir)
            .database(db)
            .set("PRODUCTS", products.join(","))
            .set("REST_REQUESTS_PER_SECOND", "50")
            .set("CROSSCHECK_INTERVAL_SECS", "0"),
        |env, (name, value)| env.set(name, *value),
    );
    TestApp::start(&env, |s| s.silence_timeout = silence).await
}

/// `/health` of `app`, which must answer.
async fn health_of(app: &TestApp) -> Value {
    app.health().await.expect("/health answers").1
}

/// Polls `/health` of `app` until `done` holds; the last answer shows when it never does.
async fn wait_for(app: &TestApp, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) {
    let last = LastSeen(std::sync::Mutex::new(Value::Null));
    app.wait_for_health(what, timeout, |_, health| {
        let ok = done(health);
        *last.0.lock().expect("last health") = health.clone();
        ok
    })
    .await;
}

/// Stops `app`, which must stop cleanly.
async fn stop(app: TestApp) {
    app.stop().await.expect("app stops cleanly");
}

/// The last `/health` answer of a wait, printed if the wait fails.
struct LastSeen(std::sync::Mutex<Value>);

impl Drop for LastSeen {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let last = self.0.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("the last /health answer: {last:#}");
        }
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

/// Simulator history of the fresh-database test, in minutes: more than a day and an hour
/// (the reconciler begins a product without recent history at the start of the UTC day, up to
/// 24 h 6 min back, and the stale product's minute is an hour before that) at any time of day.
const FRESH_HISTORY_MINUTES: u32 = 1_700;
/// HISTORY_BUCKETS of the fresh-database test: one-minute history back past the stale minute
/// (at most 25 h 7 min back) at any time of day, and starting inside the simulator's history,
/// so where it starts is checked. Coarser granularities reach past the simulator's first trade.
const FRESH_HISTORY_BUCKETS: i64 = 1_600;

/// Where the stored history of `g` may begin: `HISTORY_BUCKETS` buckets back from the bucket
/// of the moment history was filled, some time in `[filled_after, filled_before]`.
fn history_starts(g: Granularity, filled_after: i64, filled_before: i64) -> Vec<i64> {
    let w = width(g);
    let bucket = |t: i64| t - t.rem_euclid(w);
    (bucket(filled_after)..=bucket(filled_before))
        .step_by(w as usize)
        .map(|b| b - (FRESH_HISTORY_BUCKETS - 1) * w)
        .collect()
}

/// How the stored candles of `product` at `g` differ from the exchange's: they must be every
/// bucket the exchange has from where the history begins (one of `starts`) on, with its
/// OHLCV; a known trade count exact, an unknown one only on a candle from REST.
fn history_difference(
    rows: &BTreeMap<(String, Granularity, i64), StoredRow>,
    expected: &BTreeMap<(String, Granularity, i64), common::Ohlcv>,
    product: &str,
    g: Granularity,
    starts: &[i64],
) -> Option<String> {
    let of = |k: &(String, Granularity, i64)| k.0 == product && k.1 == g;
    let stored: Vec<i64> = rows.keys().filter(|k| of(k)).map(|k| k.2).collect();
    let wanted_from = |start: i64| -> Vec<i64> {
        expected
            .keys()
            .filter(|k| of(k) && k.2 >= start)
            .map(|k| k.2)
            .collect()
    };
    let Some(start) = starts.iter().find(|&&start| wanted_from(start) == stored) else {
        let wanted = wanted_from(starts[0]);
        return Some(format!(
            "{product} {g}: {} stored buckets, {:?}..{:?}; the exchange has {} from {:?} \
             (history may start at {starts:?})",
            stored.len(),
            stored.first(),
            stored.last(),
            wanted.len(),
            wanted.first(),
        ));
    };
    for (key, e) in expected.range((product.to_owned(), g, *start)..) {
        if !of(key) {
            break;
        }
        let StoredRow {
            ohlcv: got,
            trade_count,
            backfilled,
        } = &rows[key];
        if (&got.open, &got.high, &got.low, &got.close, &got.volume)
            != (&e.open, &e.high, &e.low, &e.close, &e.volume)
        {
            return Some(format!("{key:?}: stored {got:?}, the exchange {e:?}"));
        }
        match trade_count {
            Some(count) if *count != e.count => {
                return Some(format!("{key:?}: count {count}, the exchange {}", e.count));
            }
            None if !backfilled => {
                return Some(format!("{key:?}: no count but not marked backfilled"));
            }
            _ => {}
        }
    }
    None
}

#[tokio::test]
async fn a_fresh_database_serves_a_full_history_right_after_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let products = ["BTC-USD", "ETH-USD"];
    let sim = sim(dir.path(), &products, FRESH_HISTORY_MINUTES, 0.5).await;
    let db = TestDb::migrated().await;
    // BTC-USD was last stored an hour before the day the reconciler starts from began, beyond
    // the 1-hour horizon, and the service stopped inside that minute and hour: their candles
    // are partial (here: wrong). The reconciler's day is the one of the subscribe less the
    // revision window and a minute; if the subscribe comes a day later than this (just after
    // midnight), the minute is 25 h back, still inside the history span.
    let before_start = Utc::now().timestamp();
    let reach = before_start - 6 * 60;
    let stale_minute = reach - reach.rem_euclid(86_400) - 3_600;
    let partial = |g: Granularity| {
        let candle = Candle {
            product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
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
    let buckets = FRESH_HISTORY_BUCKETS.to_string();
    let app = start_app(
        &sim,
        &db,
        data.path(),
        &products,
        &[
            ("HISTORY_BUCKETS", &buckets),
            ("BACKFILL_HORIZON_HOURS", "1"),
        ],
        Duration::from_secs(10),
    )
    .await;
    // Each product's start window (with its history) and start-edge window.
    wait_for(&app, "the start windows", Duration::from_secs(180), |h| {
        reconcile(h, "windows_done") >= 4 && reconcile(h, "windows_pending") == 0
    })
    .await;
    let history_filled = Utc::now().timestamp();
    println!("history filled after {:?}", started.elapsed());
    let health = health_of(&app).await;
    assert_eq!(reconcile(&health, "windows_failed"), 0, "{health:#}");
    assert!(reconcile(&health, "history_candles") > 0, "{health:#}");

    // Trading stops: every candle is final, and what is in flight lands.
    sim.state.exchange.set_paused(true);
    // The simulator's ticks run on this (single-threaded) runtime: none is half done here, so
    // the log is final.
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let all: Vec<&LoggedTrade> = log.iter().collect();
    let expected = aggregate(&all);
    let last_difference = std::sync::Mutex::new(String::new());
    common::wait_for(
        "every granularity's history stored",
        Duration::from_secs(60),
        || async {
            let rows = stored_rows(&db.pool).await;
            let difference = products.iter().find_map(|p| {
                Granularity::ALL.into_iter().find_map(|g| {
                    let starts = history_starts(g, before_start, history_filled);
                    history_difference(&rows, &expected, p, g, &starts)
                })
            });
            let mut last = last_difference.lock().expect("last difference");
            match difference {
                None => true,
                Some(d) => {
                    if *last != d {
                        // Shown when the test fails.
                        println!("not yet: {d}");
                        *last = d;
                    }
                    false
                }
            }
        },
    )
    .await;
    // The service's own answer is what is stored: the newest candles of each granularity. The
    // writer may still be flushing (a backfill at a minute's edge lands between two reads):
    // the answer and the table must agree once it is done.
    let mut disagreement = String::new();
    let agreed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match api_agrees_with_table(app.port, &db.pool).await {
                Ok(()) => return,
                Err(why) => disagreement = why,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(
        agreed.is_ok(),
        "the API and the table disagree: {disagreement}"
    );
    let rows = stored_rows(&db.pool).await;

    // The stale product's partial candles (and every bucket around its minute) were replaced
    // by REST's.
    for g in Granularity::ALL {
        let key = (
            "BTC-USD".to_owned(),
            g,
            stale_minute - stale_minute.rem_euclid(width(g)),
        );
        let row = rows.get(&key).unwrap_or_else(|| panic!("{key:?} stored"));
        assert!(
            row.backfilled && row.trade_count.is_none(),
            "{key:?} from REST: {row:?}"
        );
        assert_ne!(row.ohlcv.open, Decimal::ONE, "{key:?} replaced");
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
    stop(app).await;
    sim.stop().await;
}

#[tokio::test]
async fn restarts_gaps_and_reconnects_are_filled_from_rest_and_every_candle_is_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let products = ["BTC-USD", "ETH-USD"];
    let sim = sim(dir.path(), &products, 20, 2.0).await;
    let db = TestDb::migrated().await;
    let data = tempfile::tempdir().expect("data dir");
    let per_connection = [("PRODUCTS_PER_CONNECTION", "1")];

    // A first run stores some history, then the service is down for a while (trades go on).
    let first = start_app(
        &sim,
        &db,
        data.path(),
        &products,
        &per_connection,
        Duration::from_secs(10),
    )
    .await;
    wait_for(&first, "the start windows", Duration::from_secs(60), |h| {
        reconcile(h, "windows_done") >= 2
    })
    .await;
    // Live candles of both products are stored before the first run stops.
    common::wait_for("live candles stored", Duration::from_secs(60), || async {
        let rows = stored_rows(&db.pool).await;
        products.iter().all(|p| {
            rows.iter()
                .any(|(k, r)| k.0 == *p && !r.backfilled && r.trade_count.is_some())
        })
    })
    .await;
    stop(first).await;
    // Time is the subject: the service is down for a while, and trades go on meanwhile.
    tokio::time::sleep(Duration::from_secs(20)).await;

    // The second run: a long silence timeout, so a 65 s stall is a sequence gap and a longer
    // one a reconnect after 70 s.
    let second = start_app(
        &sim,
        &db,
        data.path(),
        &products,
        &per_connection,
        Duration::from_secs(70),
    )
    .await;
    wait_for(&second, "both connections", Duration::from_secs(30), |h| {
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
    wait_for(
        &second,
        "a gap and a reconnect",
        Duration::from_secs(120),
        |h| {
            h["engine"]["gaps_seen"].as_u64() >= Some(1)
                && h["engine"]["reconnects_seen"].as_u64() >= Some(1)
        },
    )
    .await;
    // Start (2), start edge (2), the gap and the reconnect.
    wait_for(
        &second,
        "every window backfilled",
        Duration::from_secs(150),
        |h| reconcile(h, "windows_done") >= 6 && reconcile(h, "windows_pending") == 0,
    )
    .await;
    let health = health_of(&second).await;
    assert_eq!(reconcile(&health, "windows_failed"), 0, "{health:#}");
    assert!(health["engine"]["backfilled_minutes"].as_u64() > Some(0));

    // Trading stops; what is in flight lands (each product's last minute is stored whole);
    // the service stops and flushes.
    sim.state.exchange.set_paused(true);
    // The simulator's ticks run on this (single-threaded) runtime: none is half done here, so
    // the log is final.
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let all: Vec<&LoggedTrade> = log.iter().collect();
    let expected = aggregate(&all);
    common::wait_for(
        "the last trades stored",
        Duration::from_secs(60),
        || async {
            let rows = stored_rows(&db.pool).await;
            products.iter().all(|p| {
                let Some(last) = log
                    .iter()
                    .filter(|t| t.product_id == *p)
                    .map(|t| t.time)
                    .max()
                else {
                    return true;
                };
                let minute = last.timestamp() - last.timestamp().rem_euclid(60);
                let key = ((*p).to_owned(), Granularity::OneMinute, minute);
                let e = &expected[&key];
                rows.get(&key)
                    .is_some_and(|r| (r.ohlcv.close, r.ohlcv.volume) == (e.close, e.volume))
            })
        },
    )
    .await;
    stop(second).await;
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
    let sim = sim(dir.path(), &["BTC-USD"], 20, 2.0).await;
    let db = TestDb::migrated().await;
    let data = tempfile::tempdir().expect("data dir");
    let app = start_app(
        &sim,
        &db,
        data.path(),
        &["BTC-USD"],
        &[("CROSSCHECK_INTERVAL_SECS", "1")],
        Duration::from_secs(10),
    )
    .await;
    let judged = |h: &Value, f: &str| h["reconcile"]["crosscheck_rest_1m"][f].as_u64();
    wait_for(
        &app,
        "a live minute checked",
        Duration::from_secs(240),
        |h| judged(h, "matched") >= Some(1),
    )
    .await;
    // Corrupt a minute that is complete and stored but not yet checked: the check lags the
    // clock by 12 s, the completion by 2 s.
    // This waits for a moment of the minute, not for time: 4-9 s into a minute, the previous
    // one is complete and stored but not checked yet.
    let corrupted = common::eventually(
        "a live minute to corrupt",
        Duration::from_secs(150),
        || async {
            let now = Utc::now();
            if !(4..=9).contains(&now.second()) {
                return None;
            }
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
            (changed == 1).then_some(minute)
        },
    )
    .await;
    wait_for(&app, "the mismatch", Duration::from_secs(60), |h| {
        judged(h, "mismatched") >= Some(1)
    })
    .await;
    let health = health_of(&app).await;
    let check = &health["reconcile"]["crosscheck_rest_1m"];
    assert_eq!(
        check["mismatched"].as_u64(),
        Some(1),
        "only minute {corrupted} is wrong: {check}"
    );
    let rate = check["match_rate"].as_f64().expect("a match rate");
    assert!(rate < 1.0 && rate > 0.0, "{check}");
    // The wrong minute is taken again from REST.
    let (close, backfilled) = common::eventually(
        "the wrong minute repaired",
        Duration::from_secs(60),
        || async {
            let row: (Decimal, bool) = sqlx::query_as(
                "SELECT close, backfilled FROM live_candles WHERE product_id = 'BTC-USD' \
                 AND granularity = 'ONE_MINUTE' AND \"timestamp\" = to_timestamp($1)",
            )
            .bind(corrupted as f64)
            .fetch_one(&db.pool)
            .await
            .expect("row");
            row.1.then_some(row)
        },
    )
    .await;
    assert!(backfilled, "minute {corrupted} repaired from REST");
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let trades: Vec<&LoggedTrade> = log.iter().collect();
    let expected = &aggregate(&trades)[&("BTC-USD".to_owned(), Granularity::OneMinute, corrupted)];
    assert_eq!(
        close, expected.close,
        "the repaired close is the exchange's"
    );
    stop(app).await;
    sim.stop().await;
}

/// Whether `/api/v1/candles` answers exactly the newest stored candles of ETH-USD in every
/// granularity; the first difference otherwise.
async fn api_agrees_with_table(port: u16, pool: &sqlx::PgPool) -> Result<(), String> {
    for g in Granularity::ALL {
        let body = get_json(&format!(
            "http://127.0.0.1:{port}/api/v1/candles?product=ETH-USD&granularity={}&limit=1000",
            g.short_name()
        ))
        .await;
        let rows = stored_rows(pool).await;
        let candles = body["candles"].as_array().ok_or("no candles")?;
        let stored: Vec<(&(String, Granularity, i64), &StoredRow)> = rows
            .iter()
            .filter(|(k, _)| k.0 == "ETH-USD" && k.1 == g)
            .collect();
        let newest = &stored[stored.len().saturating_sub(1000)..];
        if candles.len() != newest.len() {
            return Err(format!(
                "{g}: {} candles, {} stored",
                candles.len(),
                newest.len()
            ));
        }
        for (c, ((_, _, start), row)) in candles.iter().zip(newest) {
            let decimal = |f: &str| -> Option<Decimal> { c[f].as_str()?.parse().ok() };
            let answered = (
                c["timestamp"].as_i64(),
                decimal("open"),
                decimal("high"),
                decimal("low"),
                decimal("close"),
                decimal("volume"),
                c["trade_count"].as_u64(),
                c["backfilled"].as_bool(),
            );
            let expected = (
                Some(*start),
                Some(row.ohlcv.open),
                Some(row.ohlcv.high),
                Some(row.ohlcv.low),
                Some(row.ohlcv.close),
                Some(row.ohlcv.volume),
                row.trade_count,
                Some(row.backfilled),
            );
            if answered != expected {
                return Err(format!(
                    "{g} {start}: answered {answered:?}, stored {expected:?}"
                ));
            }
        }
    }
    Ok(())
}
