//! The REST API on a real PostgreSQL: the products list (shard, ingested, live, exact
//! increments), the known-products directory, candle history paged through `next` over
//! `[start, end)` with exact decimals, and readiness following the database down and up again
//! in the whole service (fed by the simulator).

use crate::common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{AppEnv, TestApp, TestDb, get_json, product, timestamps, wait_for};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId};
use spot_canvas::store::Repository;
use spot_canvas::web::{AppState, ProductDirectory};
use spot_canvas_sim::{SimConfig, Simulator};

const T0: i64 = 1_790_000_040; // a minute boundary

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("time")
}

fn dec(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

/// A one-minute candle of `product` at `start` whose close is `close`.
fn candle(product: &str, start: i64, close: Decimal, volume: Decimal) -> CandleUpdate {
    CandleUpdate {
        candle: Candle {
            product_id: product.parse().expect("an id"),
            granularity: Granularity::OneMinute,
            start: at(start),
            open: close,
            high: close,
            low: close,
            close,
            volume,
            buy_volume: Some(volume),
            trade_count: Some(3),
        },
        complete: true,
        revision: 0,
        counted_trades: 3,
        last_trade_id: TradeId(3),
        last_trade_time: at(start + 1),
        last_received: at(start + 1),
    }
}

/// The API's state on `db` (its own API pool, as the service has), the rest idle.
fn api_state(db: &TestDb) -> AppState {
    AppState::idle(Repository::new(spot_canvas::store::api_pool(&db.pool)))
}

#[tokio::test]
async fn products_lists_every_trading_pair_with_its_shard_ingestion_and_live_state() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    repo.upsert_products(&[
        product("ETH-USD", Some("0.00000001234")),
        product("BTC-USD", Some("0.01")),
        product("XYZ-EUR", None),
    ])
    .await
    .expect("products");
    let mut state = api_state(&db);
    state.instance.shard_count = 3;
    state.instance.shard_index = 1;
    // This instance's feed carries BTC-USD and ETH-USD.
    state.reports.feed.register(
        0,
        vec![
            spot_canvas::model::ProductId::from_static("BTC-USD"),
            spot_canvas::model::ProductId::from_static("ETH-USD"),
        ],
    );
    // BTC-USD had an update just now; ETH-USD 10 minutes ago (not live any more); XYZ none.
    let now = Utc::now();
    let mut fresh = candle("BTC-USD", T0, dec("1"), dec("1"));
    fresh.last_received = now;
    let mut old = candle("ETH-USD", T0, dec("1"), dec("1"));
    old.last_received = now - chrono::TimeDelta::minutes(10);
    assert!(state.live.apply(fresh));
    assert!(state.live.apply(old.clone()));

    let (status, body) = get_json(&state, "/api/v1/products?ignored=yes").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["schema"], 1);
    assert_eq!(
        (body["shard_index"].as_u64(), body["shard_count"].as_u64()),
        (Some(1), Some(3))
    );
    let shard = |id: &str| spot_canvas::feed::shard::instance_for(id, 3);
    let mut products = body["products"].as_array().expect("products").clone();
    let last_updates: Vec<Value> = products
        .iter_mut()
        .map(|p| {
            p.as_object_mut()
                .expect("object")
                .remove("last_update")
                .expect("last_update")
        })
        .collect();
    assert_eq!(
        Value::Array(products),
        json!([
            {"id": "BTC-USD", "base": "BTC", "quote": "USD", "status": "online",
             "trading_disabled": false, "price_increment": "0.01", "shard": shard("BTC-USD"),
             "ingested": true, "live": true},
            {"id": "ETH-USD", "base": "ETH", "quote": "USD", "status": "online",
             "trading_disabled": false, "price_increment": "0.00000001234",
             "shard": shard("ETH-USD"), "ingested": true, "live": false},
            {"id": "XYZ-EUR", "base": "XYZ", "quote": "EUR", "status": "online",
             "trading_disabled": false, "price_increment": null, "shard": shard("XYZ-EUR"),
             "ingested": false, "live": false},
        ])
    );
    let shown: DateTime<Utc> =
        serde_json::from_value(last_updates[1].clone()).expect("a time for ETH-USD");
    assert_eq!(shown, old.last_received);
    assert!(last_updates[0].is_string());
    assert!(last_updates[2].is_null());
}

#[tokio::test]
async fn the_directory_learns_new_products_within_about_a_second_and_keeps_its_list_while_the_database_is_away()
 {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    repo.upsert_products(&[product("BTC-USD", Some("0.01"))])
        .await
        .expect("products");
    let directory = ProductDirectory::new(Repository::new(spot_canvas::store::api_pool(&db.pool)));
    assert!(
        directory
            .contains(&spot_canvas::model::ProductId::from_static("BTC-USD"))
            .await
            .expect("answers")
    );
    assert!(
        !directory
            .contains(&spot_canvas::model::ProductId::from_static("ETH-USD"))
            .await
            .expect("answers")
    );
    let ids = [
        spot_canvas::model::ProductId::from_static("BTC-USD"),
        spot_canvas::model::ProductId::from_static("ETH-USD"),
        spot_canvas::model::ProductId::from_static("NOPE-USD"),
    ];
    assert_eq!(
        directory.unknown(&ids).await.expect("answers"),
        vec!["ETH-USD", "NOPE-USD"]
    );
    // A product inserted now is known after the next miss-read (at most a second away: the
    // unit tests in src/web/directory.rs pin the timing); the deadline is generous for a loaded
    // machine.
    repo.upsert_products(&[product("ETH-USD", None)])
        .await
        .expect("products");
    wait_for("ETH-USD to be known", Duration::from_secs(20), || async {
        directory
            .contains(&spot_canvas::model::ProductId::from_static("ETH-USD"))
            .await
            .expect("answers")
    })
    .await;
    assert_eq!(
        directory.unknown(&ids).await.expect("answers"),
        vec!["NOPE-USD"]
    );

    // The database goes away: the list read before keeps answering (a miss cannot refresh it),
    // while a directory that never read one answers an error (the handlers' 503).
    db.pg.stop_with("fast").await.expect("stop");
    let fresh = ProductDirectory::new(Repository::new(spot_canvas::store::api_pool(&db.pool)));
    let error = fresh
        .contains(&spot_canvas::model::ProductId::from_static("BTC-USD"))
        .await
        .expect_err("no list yet");
    assert!(error.to_string().contains("not available"), "{error}");
    assert!(
        directory
            .contains(&spot_canvas::model::ProductId::from_static("BTC-USD"))
            .await
            .expect("the cached list")
    );
    assert_eq!(
        directory.unknown(&ids).await.expect("the cached list"),
        vec!["NOPE-USD"]
    );
    db.pg.restart().await.expect("start again");
    common::eventually(
        "a list once the database is back",
        Duration::from_secs(60),
        || async {
            fresh
                .contains(&spot_canvas::model::ProductId::from_static("BTC-USD"))
                .await
                .ok()
                .filter(|known| *known)
        },
    )
    .await;
}

/// Follows `next` from `uri` until it is absent; returns every page's timestamps.
async fn walk(state: &AppState, uri: &str) -> Vec<Vec<i64>> {
    let mut pages = Vec::new();
    let mut uri = uri.to_owned();
    loop {
        let (status, body) = get_json(state, &uri).await;
        assert_eq!(status, 200, "{uri}: {body}");
        let page = timestamps(&body);
        assert!(
            page.windows(2).all(|w| w[0] < w[1]),
            "oldest first: {page:?}"
        );
        pages.push(page.clone());
        assert!(pages.len() < 100, "next never ends");
        match body.get("next") {
            None => return pages,
            Some(next) => {
                assert_eq!(next["end"].as_i64(), page.first().copied(), "{body}");
                uri = next["url"].as_str().expect("url").to_owned();
            }
        }
    }
}

#[tokio::test]
async fn candles_page_through_start_and_end_without_gaps_or_repeats_and_keep_decimals_exact() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    repo.upsert_products(&[product("BTC-USD", Some("0.01")), product("ETH-USD", None)])
        .await
        .expect("products");
    // 300 minutes with holes (every 7th minute missing), in BTC-USD; ETH-USD and a five-minute
    // candle of BTC-USD must never show up.
    let stored: Vec<i64> = (0..300)
        .filter(|i| i % 7 != 3)
        .map(|i| T0 + 60 * i)
        .collect();
    let rows: Vec<CandleUpdate> = stored
        .iter()
        .map(|t| candle("BTC-USD", *t, Decimal::from(*t), dec("2.5")))
        .collect();
    repo.upsert_candles(&rows).await.expect("candles");
    repo.upsert_candle(&candle("ETH-USD", T0 + 60, dec("9"), dec("9")))
        .await
        .expect("eth");
    let mut five = candle("BTC-USD", T0, dec("9"), dec("9"));
    five.candle.granularity = Granularity::FiveMinutes;
    repo.upsert_candle(&five).await.expect("five");
    let state = api_state(&db);
    let base = "/api/v1/candles?product=BTC-USD&granularity=1m";

    // The whole range, 37 a page: the pages join up to exactly what is stored.
    let pages = walk(&state, &format!("{base}&limit=37")).await;
    let all: Vec<i64> = pages.iter().rev().flatten().copied().collect();
    assert_eq!(
        all, stored,
        "pages newest to oldest, each oldest first, no gap or repeat"
    );
    assert!(pages[..pages.len() - 1].iter().all(|p| p.len() == 37));
    assert_eq!(pages.len(), stored.len().div_ceil(37));

    // A range: start inclusive, end exclusive, both on stored candles.
    let (start, end) = (stored[10], stored[200]);
    let pages = walk(&state, &format!("{base}&limit=50&start={start}&end={end}")).await;
    let got: Vec<i64> = pages.iter().rev().flatten().copied().collect();
    let expected: Vec<i64> = stored
        .iter()
        .copied()
        .filter(|t| (start..end).contains(t))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.first(), Some(&start), "start is inclusive");
    assert!(!got.contains(&end), "end is exclusive");
    // The next URL keeps start and limit.
    let (_, body) = get_json(&state, &format!("{base}&limit=50&start={start}&end={end}")).await;
    let url = body["next"]["url"].as_str().expect("next");
    assert!(
        url.contains(&format!("&limit=50&start={start}&end=")),
        "{url}"
    );

    // A range holding exactly two pages: the second is the last (no empty third page).
    let (start, end) = (stored[0], stored[20]);
    let pages = walk(&state, &format!("{base}&limit=10&start={start}&end={end}")).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10]);
    // A range with nothing stored: empty, no next.
    let hole = T0 + 60 * 3;
    let (status, body) = get_json(&state, &format!("{base}&start={hole}&end={}", hole + 60)).await;
    assert_eq!(status, 200);
    assert_eq!(body["candles"], json!([]));
    assert!(body.get("next").is_none(), "{body}");

    // Exact decimals, however small or large.
    let tiny = dec("0.00000001234");
    let huge = dec("1234567890123.123456789012");
    let t = T0 + 60 * 1_000;
    let mut exact = candle("BTC-USD", t, tiny, huge);
    exact.candle.high = dec("98765432109876.5432109876");
    exact.candle.buy_volume = Some(dec("0.000000000000000001"));
    repo.upsert_candle(&exact).await.expect("exact");
    let (status, body) = get_json(&state, &format!("{base}&start={t}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["candles"],
        json!([{
            "timestamp": t, "open": "0.00000001234", "high": "98765432109876.5432109876",
            "low": "0.00000001234", "close": "0.00000001234",
            "volume": "1234567890123.123456789012", "trade_count": 3,
            "buy_volume": "0.000000000000000001", "complete": true, "backfilled": false
        }])
    );

    // An unknown product is a bad parameter, not an empty answer.
    let (status, body) = get_json(&state, "/api/v1/candles?product=DOGE-USD&granularity=1m").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        "unknown product \"DOGE-USD\": a product id listed by GET /api/v1/products"
    );
}

/// `GET path` on the service's port over a real socket: status and JSON.
async fn fetch(port: u16, path: &str) -> Option<(u16, Value)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

#[tokio::test]
async fn readiness_is_503_while_the_database_is_stopped_and_200_when_it_is_back() {
    let sim = Simulator::start(SimConfig {
        products: 2,
        trades_per_second: 5.0,
        history_minutes: 5,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let db = TestDb::migrated().await;
    let data_dir = common::data_dir();
    let env = AppEnv::for_sim(&sim, data_dir.path()).database(&db);
    let app = TestApp::start(&env, |_| {}).await;
    let port = app.port;
    const WAIT: Duration = Duration::from_secs(90);

    let ready = common::eventually("ready", WAIT, || async {
        fetch(port, "/health/ready")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await
    .1;
    assert_eq!(ready["status"], "ok");
    for check in ["feed", "nats", "database", "stages"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{check}: {ready}");
    }
    let (status, live) = fetch(port, "/health/live").await.expect("live");
    assert_eq!((status, live), (200, json!({"schema": 1, "status": "ok"})));
    // The simulator's products are listed: the two it trades ingested here and live once
    // trades flow, the halted and the delisted one neither.
    let products = common::eventually("live products", WAIT, || async {
        let (status, body) = fetch(port, "/api/v1/products").await?;
        let list = body["products"].as_array()?.clone();
        let flags = |p: &Value| (p["ingested"].as_bool(), p["live"].as_bool());
        let traded = list
            .iter()
            .filter(|p| flags(p) == (Some(true), Some(true)))
            .count();
        (status == 200 && traded == 2).then_some(list)
    })
    .await;
    let summary: Vec<(&str, bool, bool, u64)> = products
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id"),
                p["ingested"] == true,
                p["live"] == true,
                p["shard"].as_u64().expect("shard"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("BTC-USD", true, true, 0),
            ("ETH-USD", true, true, 0),
            ("HALT-USD", false, false, 0),
            ("OLD-USD", false, false, 0),
        ]
    );

    db.pg.stop_with("fast").await.expect("PostgreSQL stops");
    let (_, down) = common::eventually("503 while the database is stopped", WAIT, || async {
        fetch(port, "/health/ready")
            .await
            .filter(|(status, _)| *status == 503)
    })
    .await;
    assert_eq!(down["status"], "degraded");
    assert_eq!(down["checks"]["database"]["ok"], false, "{down}");
    let detail = down["checks"]["database"]["detail"]
        .as_str()
        .expect("detail");
    assert!(detail.starts_with("SELECT 1 "), "{detail}");
    let (status, health) = fetch(port, "/health").await.expect("/health answers");
    assert_eq!(status, 503);
    assert_eq!(health["checks"]["database"]["ok"], false);
    assert!(
        health["engine"].is_object(),
        "/health keeps its fields: {health}"
    );
    // The process itself is fine.
    let (status, _) = fetch(port, "/health/live").await.expect("live");
    assert_eq!(status, 200);

    db.pg.restart().await.expect("PostgreSQL starts again");
    // The pool reconnects by itself.
    let (_, back) = common::eventually("200 once the database is back", WAIT, || async {
        fetch(port, "/health/ready")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    assert_eq!(back["checks"]["database"]["ok"], true, "{back}");
    app.stop().await.expect("stops cleanly");
    sim.stop().await;
}
