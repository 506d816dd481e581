//! Storage on a real PostgreSQL (a throwaway cluster per test, a fresh database in it):
//! migrations, idempotent versioned upserts, exact extreme values, range queries, products,
//! and the batch writer.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::TestDb;
use rust_decimal::Decimal;
use spot_canvas::model::{Candle, CandleUpdate, Granularity, Product, TradeId, Version};
use spot_canvas::store::{BatchWriter, Repository, WriterSettings, migrate_down, migration_status};
use tokio::sync::mpsc;

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("time")
}

const T0: i64 = 1_790_000_040; // a minute boundary

fn update(product: &str, start: i64, revision: u32, count: u64, close: &str) -> CandleUpdate {
    let close: Decimal = close.parse().expect("decimal");
    CandleUpdate {
        candle: Candle {
            product_id: product.into(),
            granularity: Granularity::OneMinute,
            start: at(start),
            open: Decimal::ONE,
            high: close.max(Decimal::ONE),
            low: close.min(Decimal::ONE),
            close,
            volume: Decimal::from(count),
            buy_volume: Some(Decimal::ZERO),
            trade_count: Some(count),
        },
        complete: false,
        revision,
        counted_trades: count,
        last_trade_id: TradeId(count),
        last_trade_time: at(start + 1),
        last_received: at(start + 1),
    }
}

async fn table_exists(db: &TestDb, name: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .expect("query")
}

#[tokio::test]
async fn migrations_go_up_down_and_up_again() {
    let db = TestDb::new().await;
    assert!(!migration_status(&db.pool).await.expect("status")[0].applied);
    let kind = spot_canvas::store::migrate_up(&db.pool).await.expect("up");
    assert_eq!(
        kind,
        spot_canvas::store::TableKind::Plain,
        "no TimescaleDB here"
    );
    assert!(table_exists(&db, "live_candles").await);
    assert!(table_exists(&db, "trading_pairs").await);
    assert!(migration_status(&db.pool).await.expect("status")[0].applied);
    migrate_down(&db.pool, 0).await.expect("down");
    assert!(!table_exists(&db, "live_candles").await);
    assert!(!table_exists(&db, "trading_pairs").await);
    assert!(!migration_status(&db.pool).await.expect("status")[0].applied);
    spot_canvas::store::migrate_up(&db.pool)
        .await
        .expect("up again");
    assert!(table_exists(&db, "live_candles").await);
    // Amount columns are unconstrained NUMERIC, not DECIMAL(20,10).
    let typmods: Vec<i32> = sqlx::query_scalar(
        "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'live_candles'::regclass \
         AND attname IN ('open','high','low','close','volume','buy_volume')",
    )
    .fetch_all(&db.pool)
    .await
    .expect("columns");
    assert_eq!(typmods, vec![-1; 6]);
}

#[tokio::test]
async fn batch_upserts_are_idempotent_and_versions_only_go_up() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    let batch: Vec<CandleUpdate> = (0..5)
        .map(|i| update("BTC-USD", T0 + 60 * i, 0, 3, "2"))
        .collect();
    assert_eq!(repo.upsert_candles(&batch).await.expect("insert"), 5);
    assert_eq!(
        repo.upsert_candles(&batch).await.expect("again"),
        0,
        "idempotent"
    );
    // A higher version wins, a lower one never overwrites it.
    assert!(
        repo.upsert_candle(&update("BTC-USD", T0, 0, 5, "7"))
            .await
            .expect("newer")
    );
    assert!(
        !repo
            .upsert_candle(&update("BTC-USD", T0, 0, 4, "9"))
            .await
            .expect("older")
    );
    let stored = repo
        .candles("BTC-USD", Granularity::OneMinute, at(T0), at(T0 + 60), 10)
        .await
        .expect("query");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].candle.close, Decimal::from(7));
    assert_eq!(stored[0].candle.trade_count, Some(5));
    // Two versions of one key in one batch: the higher is kept, the statement succeeds.
    let mixed = vec![
        update("BTC-USD", T0 + 60, 1, 9, "11"),
        update("BTC-USD", T0 + 60, 0, 8, "10"),
    ];
    assert_eq!(repo.upsert_candles(&mixed).await.expect("mixed"), 1);
    let stored = repo
        .candles(
            "BTC-USD",
            Granularity::OneMinute,
            at(T0 + 60),
            at(T0 + 120),
            10,
        )
        .await
        .expect("query");
    assert_eq!(stored[0].candle.close, Decimal::from(11));
    assert_eq!(stored[0].revision, 1);
    assert_eq!(
        Version::from_bytes(&stored[0].version).map(|v| v.trade_count),
        Some(9)
    );
}

#[tokio::test]
async fn extreme_amounts_round_trip_exactly() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    let mut u = update("PEPE-USD", T0, 0, 1, "0.0000000000123456789");
    u.candle.open = "0.00001234567890123".parse().expect("d");
    u.candle.high = "0.00001234567890124".parse().expect("d");
    u.candle.volume = "1234567890123456.123456789012".parse().expect("d");
    u.candle.buy_volume = Some("999999999999999.999999999999".parse().expect("d"));
    u.candle.trade_count = Some(u64::from(u32::MAX) * 4);
    repo.upsert_candle(&u).await.expect("upsert");
    let stored = repo
        .live_candle("PEPE-USD", Granularity::OneMinute)
        .await
        .expect("query")
        .expect("a row");
    assert_eq!(stored.candle, u.candle);
    for (got, want) in [
        (stored.candle.close, "0.0000000000123456789"),
        (stored.candle.open, "0.00001234567890123"),
        (stored.candle.volume, "1234567890123456.123456789012"),
    ] {
        assert_eq!(got.to_string(), want, "scale and digits kept");
    }
    assert!(!stored.backfilled);
}

#[tokio::test]
async fn range_queries_return_what_was_written_in_order_with_limits() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    let batch: Vec<CandleUpdate> = (0..10)
        .map(|i| {
            update(
                "ETH-USD",
                T0 + 60 * i,
                0,
                1 + i as u64,
                &format!("{}", 100 + i),
            )
        })
        .chain((0..3).map(|i| update("BTC-USD", T0 + 60 * i, 0, 1, "5")))
        .collect();
    repo.upsert_candles(&batch).await.expect("insert");
    let all = repo
        .candles("ETH-USD", Granularity::OneMinute, at(T0), at(T0 + 600), 100)
        .await
        .expect("query");
    assert_eq!(all.len(), 10);
    for (i, stored) in all.iter().enumerate() {
        assert_eq!(stored.candle, batch[i].candle, "row {i}");
    }
    // The newest 3 of [t2, t8), oldest first.
    let some = repo
        .candles(
            "ETH-USD",
            Granularity::OneMinute,
            at(T0 + 120),
            at(T0 + 480),
            3,
        )
        .await
        .expect("query");
    let starts: Vec<i64> = some.iter().map(|s| s.candle.start.timestamp()).collect();
    assert_eq!(starts, vec![T0 + 300, T0 + 360, T0 + 420]);
    let live = repo
        .live_candle("ETH-USD", Granularity::OneMinute)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(live.candle.start, at(T0 + 540));
    assert!(
        repo.live_candle("ETH-USD", Granularity::OneHour)
            .await
            .expect("query")
            .is_none()
    );
}

#[tokio::test]
async fn products_are_upserted_and_read_back() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    let mut product = Product {
        product_id: "BTC-USD".into(),
        base: "BTC".into(),
        quote: "USD".into(),
        status: "online".into(),
        product_type: "SPOT".into(),
        trading_disabled: false,
        base_min_size: Some("0.00000001".parse().expect("d")),
        base_max_size: Some(Decimal::from(3400)),
        base_increment: Some("0.00000001".parse().expect("d")),
        price_increment: Some("0.01".parse().expect("d")),
        alias: String::new(),
        alias_to: Vec::new(),
    };
    repo.upsert_products(std::slice::from_ref(&product))
        .await
        .expect("insert");
    product.status = "delisted".into();
    product.trading_disabled = true;
    repo.upsert_products(std::slice::from_ref(&product))
        .await
        .expect("update");
    assert_eq!(repo.products().await.expect("read"), vec![product]);
}

#[tokio::test]
async fn the_writer_coalesces_per_key_and_flushes_everything_when_its_input_closes() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    let (tx, rx) = mpsc::channel(16);
    let writer = BatchWriter::new(repo.clone(), WriterSettings::default(), rx);
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    // 20 keys, each updated 30 times with growing trade counts.
    for round in 1..=30u64 {
        let batch: Vec<CandleUpdate> = (0..20)
            .map(|k| update("SOL-USD", T0 + 60 * k, 0, round, &round.to_string()))
            .collect();
        tx.send(batch).await.expect("send");
    }
    drop(tx);
    task.await.expect("join").expect("writer");
    let stored = repo
        .candles(
            "SOL-USD",
            Granularity::OneMinute,
            at(T0),
            at(T0 + 3600),
            100,
        )
        .await
        .expect("query");
    assert_eq!(stored.len(), 20);
    assert!(
        stored.iter().all(|s| s.candle.trade_count == Some(30)),
        "final state"
    );
    let report = stats.report();
    assert_eq!(report.received, 600);
    assert!(report.written_rows < 600, "coalesced: {report:?}");
    assert_eq!(report.pending, 0);
}

#[tokio::test]
async fn the_writer_keeps_receiving_and_retries_while_the_database_is_down() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    let (tx, rx) = mpsc::channel(4);
    let writer = BatchWriter::new(
        repo.clone(),
        WriterSettings {
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_millis(500),
            ..WriterSettings::default()
        },
        rx,
    );
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    tx.send(vec![update("ADA-USD", T0, 0, 1, "1")])
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(400)).await;
    db.pg.stop_with("immediate").await.expect("stop");
    // The channel holds 4 batches: sending 200 in quick succession only works if the writer
    // keeps taking them while every write fails.
    let sending = async {
        for round in 2..=200u64 {
            tx.send(vec![update(
                "ADA-USD",
                T0 + 60 * (round % 10) as i64,
                0,
                round,
                "2",
            )])
            .await
            .expect("send");
        }
    };
    tokio::time::timeout(Duration::from_secs(5), sending)
        .await
        .expect("the writer never blocks its sender");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while stats.report().failures == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes fail while down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.pg.restart().await.expect("start again");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("flushes once the database is back")
        .expect("join")
        .expect("writer");
    let stored = repo
        .candles("ADA-USD", Granularity::OneMinute, at(T0), at(T0 + 600), 100)
        .await
        .expect("query");
    assert_eq!(stored.len(), 10);
    for s in &stored {
        let k = (s.candle.start.timestamp() - T0) / 60;
        let last_round = (191..=200u64).find(|r| r % 10 == k as u64).expect("round");
        assert_eq!(s.candle.trade_count, Some(last_round), "key {k}");
    }
}
