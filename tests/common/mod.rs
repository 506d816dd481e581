//! Helpers shared by integration tests: a throwaway PostgreSQL cluster and a fresh database,
//! waiting for conditions, the whole service in-process ([`TestApp`]) or as the binary
//! ([`Service`]), and the simulator's trade log with a plain aggregation of it.
//!
//! Compiled into each of the three test binaries (`tests/suite`, `tests/slow`, `tests/sim`),
//! of which only `suite` uses nearly all of it: hence the allowances below.

#![allow(dead_code, unreachable_pub, unused_imports)]

mod app;
pub mod footprint;
mod service;
mod wait;
mod web;
pub use app::{
    AppEnv, STOP_WITHIN, TestApp, data_dir, health, processes_mentioning, wait_for_health,
};
pub use service::{READY_WITHIN, Service, environment_of, signal};
pub use wait::{eventually, wait_for};
pub use web::{Served, SseEvent, SseReader, app_state, get_json, product, serve, timestamps};

use std::os::unix::fs::PermissionsExt;

use rand::Rng;
use secrecy::SecretString;
use spot_canvas::store::EmbeddedPostgres;
use sqlx::PgPool;

/// A real PostgreSQL cluster in a temporary directory, stopped on drop, with one fresh
/// database for the test.
pub struct TestDb {
    pub pg: EmbeddedPostgres,
    pub pool: PgPool,
    pub url: SecretString,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let dir = tempfile::Builder::new()
            .prefix("spot-canvas-pg-")
            .tempdir()
            .expect("tempdir");
        // The server runs as `postgres` when the tests run as root: let it in.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let pg = EmbeddedPostgres::start(dir.path())
            .await
            .expect("a throwaway PostgreSQL cluster starts");
        let name: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(12)
            .map(|c| char::from(c).to_ascii_lowercase())
            .collect();
        let database = format!("test_{name}");
        let admin = spot_canvas::store::connect(&pg.url())
            .await
            .expect("connects");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await
            .expect("creates the test database");
        admin.close().await;
        let url = pg.url_of(&database);
        let pool = spot_canvas::store::connect(&url).await.expect("connects");
        TestDb {
            pg,
            pool,
            url,
            _dir: dir,
        }
    }

    /// A fresh database with the schema applied.
    pub async fn migrated() -> TestDb {
        let db = TestDb::new().await;
        spot_canvas::store::migrate_up(&db.pool)
            .await
            .expect("migrates");
        db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.pg.stop_blocking("immediate");
    }
}

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use spot_canvas::model::Granularity;

/// Bucket widths in seconds, written out here rather than taken from the engine.
pub const WIDTHS: [(Granularity, i64); 8] = [
    (Granularity::OneMinute, 60),
    (Granularity::FiveMinutes, 300),
    (Granularity::FifteenMinutes, 900),
    (Granularity::ThirtyMinutes, 1800),
    (Granularity::OneHour, 3600),
    (Granularity::TwoHours, 7200),
    (Granularity::SixHours, 21600),
    (Granularity::OneDay, 86400),
];

/// The `side` of a trade on Coinbase's `market_trades` channel, which is the side of the
/// **maker** (reference, section 5.1): a trade whose maker sold was bought by its taker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MakerSide {
    Buy,
    Sell,
}

impl MakerSide {
    /// `BUY` or `SELL`, as on the wire and in the simulator's log.
    pub fn parse(s: &str) -> MakerSide {
        match s {
            "BUY" => MakerSide::Buy,
            "SELL" => MakerSide::Sell,
            other => panic!("a side is BUY or SELL, not {other:?}"),
        }
    }

    /// Whether the taker (the aggressor) bought: the maker sold.
    pub fn taker_bought(self) -> bool {
        self == MakerSide::Sell
    }
}

/// A trade from the simulator's JSON-lines log.
#[derive(Debug, Clone)]
pub struct LoggedTrade {
    pub product_id: String,
    pub trade_id: u64,
    pub price: Decimal,
    pub size: Decimal,
    /// The maker's side, as `market_trades` reports it.
    pub side: MakerSide,
    pub time: DateTime<Utc>,
}

pub fn read_trade_log(path: &std::path::Path) -> Vec<LoggedTrade> {
    std::fs::read_to_string(path)
        .expect("trade log")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            LoggedTrade {
                product_id: v["product_id"].as_str().expect("product").to_owned(),
                trade_id: v["trade_id"]
                    .as_str()
                    .expect("id")
                    .parse()
                    .expect("numeric"),
                price: v["price"]
                    .as_str()
                    .expect("price")
                    .parse()
                    .expect("decimal"),
                size: v["size"].as_str().expect("size").parse().expect("decimal"),
                side: MakerSide::parse(v["side"].as_str().expect("side")),
                time: DateTime::parse_from_rfc3339(v["time"].as_str().expect("time"))
                    .expect("time")
                    .with_timezone(&Utc),
            }
        })
        .collect()
}

/// OHLCV and trade count of a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ohlcv {
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub count: u64,
}

/// The straightforward aggregation: sort by (time, numeric id), fold per bucket.
pub fn aggregate(trades: &[&LoggedTrade]) -> BTreeMap<(String, Granularity, i64), Ohlcv> {
    let mut sorted: Vec<&LoggedTrade> = trades.to_vec();
    sorted.sort_by_key(|t| (t.time, t.trade_id));
    let mut out = BTreeMap::new();
    for t in sorted {
        let secs = t.time.timestamp();
        for (g, width) in WIDTHS {
            let e = out
                .entry((t.product_id.clone(), g, secs - secs.rem_euclid(width)))
                .or_insert(Ohlcv {
                    open: t.price,
                    high: t.price,
                    low: t.price,
                    close: t.price,
                    volume: Decimal::ZERO,
                    count: 0,
                });
            e.high = e.high.max(t.price);
            e.low = e.low.min(t.price);
            e.close = t.price;
            e.volume += t.size;
            e.count += 1;
        }
    }
    out
}

/// Buy volume of every bucket [`aggregate`] has: the summed size of the trades whose taker
/// bought (whose maker sold), zero where every trade was a taker sell.
pub fn buy_volumes(trades: &[&LoggedTrade]) -> BTreeMap<(String, Granularity, i64), Decimal> {
    let mut out = BTreeMap::new();
    for t in trades {
        for key in buckets_of(t) {
            let buy = out.entry(key).or_insert(Decimal::ZERO);
            if t.side.taker_bought() {
                *buy += t.size;
            }
        }
    }
    out
}

/// The key of every bucket `t` falls into, one per granularity, as [`aggregate`] keys them.
pub fn buckets_of(t: &LoggedTrade) -> impl Iterator<Item = (String, Granularity, i64)> + '_ {
    let secs = t.time.timestamp();
    WIDTHS
        .into_iter()
        .map(move |(g, width)| (t.product_id.clone(), g, secs - secs.rem_euclid(width)))
}

/// Bucket width of `g` in seconds, from [`WIDTHS`].
pub fn width(g: Granularity) -> i64 {
    WIDTHS
        .iter()
        .find(|(w, _)| *w == g)
        .map(|(_, secs)| *secs)
        .expect("every granularity has a width")
}

/// A stored row: OHLCV (with `count` 0), the stored trade count and whether it is backfilled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub ohlcv: Ohlcv,
    pub trade_count: Option<u64>,
    pub backfilled: bool,
}

/// Every row of `live_candles`, keyed like [`aggregate`].
pub async fn stored_rows(pool: &PgPool) -> BTreeMap<(String, Granularity, i64), StoredRow> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT product_id, granularity::text AS g, \"timestamp\", open, high, low, close, \
         volume, trade_count, backfilled FROM live_candles",
    )
    .fetch_all(pool)
    .await
    .expect("rows");
    rows.iter()
        .map(|r| {
            let g: String = r.get("g");
            let start: DateTime<Utc> = r.get("timestamp");
            let count: Option<i64> = r.get("trade_count");
            (
                (
                    r.get("product_id"),
                    g.parse().expect("granularity"),
                    start.timestamp(),
                ),
                StoredRow {
                    ohlcv: Ohlcv {
                        open: r.get("open"),
                        high: r.get("high"),
                        low: r.get("low"),
                        close: r.get("close"),
                        volume: r.get("volume"),
                        count: 0,
                    },
                    trade_count: count.map(|n| n as u64),
                    backfilled: r.get("backfilled"),
                },
            )
        })
        .collect()
}

/// Every row of `live_candles`, keyed like [`aggregate`], with its trade count (which every
/// row must have: no backfill).
pub async fn stored_candles(pool: &PgPool) -> BTreeMap<(String, Granularity, i64), Ohlcv> {
    stored_rows(pool)
        .await
        .into_iter()
        .map(|(key, row)| {
            let count = row.trade_count.expect("count");
            (key, Ohlcv { count, ..row.ohlcv })
        })
        .collect()
}

/// Per product, the window `[first, last]` of trade ids the table holds, from the stored
/// one-minute candles: the highest last trade id, and as many of the log's trades of the
/// product back from it as the stored trade counts say (the feed delivers each product's
/// trades as one contiguous run from its first snapshot on; the log's ids may skip the ids a
/// fault took). Also the number of trades stored in all.
pub async fn stored_windows(
    pool: &PgPool,
    log: &[LoggedTrade],
) -> (BTreeMap<String, (u64, u64)>, u64) {
    let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT product_id, trade_count, version FROM live_candles WHERE granularity = 'ONE_MINUTE'",
    )
    .fetch_all(pool)
    .await
    .expect("rows");
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (product, count, version) in rows {
        let v = spot_canvas::model::Version::from_bytes(&version).expect("version");
        *counts.entry(product.clone()).or_default() += count.max(0) as u64;
        let l = last.entry(product).or_default();
        *l = (*l).max(v.last_trade_id.0);
    }
    let mut windows = BTreeMap::new();
    for (product, last) in last {
        let mut ids: Vec<u64> = log
            .iter()
            .filter(|t| t.product_id == product && t.trade_id <= last)
            .map(|t| t.trade_id)
            .collect();
        ids.sort_unstable();
        let count = counts[&product] as usize;
        let first = ids
            .len()
            .checked_sub(count)
            .map_or(0, |at| ids.get(at).copied().unwrap_or(0));
        windows.insert(product, (first, last));
    }
    (windows, counts.values().sum())
}

/// Asserts the table holds exactly the candles of the log's trades of ids `[first, last]` per
/// product, each candle equal to the log's aggregation.
pub async fn assert_table_matches_log(
    pool: &PgPool,
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
    let stored = stored_candles(pool).await;
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the same candles"
    );
    for (key, e) in &expected {
        assert_eq!(&stored[key], e, "{key:?}");
    }
}
