//! Storage on a real PostgreSQL (a throwaway cluster per test, a fresh database in it):
//! migrations, idempotent versioned upserts, exact extreme values, range queries, products,
//! and the batch writer.

use crate::common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{TestDb, wait_for};
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
            product_id: product.parse().expect("an id"),
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
        .candles(
            &spot_canvas::model::ProductId::from_static("BTC-USD"),
            Granularity::OneMinute,
            at(T0),
            at(T0 + 60),
            10,
        )
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
            &spot_canvas::model::ProductId::from_static("BTC-USD"),
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
        .live_candle(
            &spot_canvas::model::ProductId::from_static("PEPE-USD"),
            Granularity::OneMinute,
        )
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
        .candles(
            &spot_canvas::model::ProductId::from_static("ETH-USD"),
            Granularity::OneMinute,
            at(T0),
            at(T0 + 600),
            100,
        )
        .await
        .expect("query");
    assert_eq!(all.len(), 10);
    for (i, stored) in all.iter().enumerate() {
        assert_eq!(stored.candle, batch[i].candle, "row {i}");
    }
    // The newest 3 of [t2, t8), oldest first.
    let some = repo
        .candles(
            &spot_canvas::model::ProductId::from_static("ETH-USD"),
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
        .live_candle(
            &spot_canvas::model::ProductId::from_static("ETH-USD"),
            Granularity::OneMinute,
        )
        .await
        .expect("query")
        .expect("row");
    assert_eq!(live.candle.start, at(T0 + 540));
    assert!(
        repo.live_candle(
            &spot_canvas::model::ProductId::from_static("ETH-USD"),
            Granularity::OneHour
        )
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
        product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
        base: spot_canvas::model::Currency::from_static("BTC"),
        quote: spot_canvas::model::Currency::from_static("USD"),
        status: "online".into(),
        product_type: "SPOT".into(),
        trading_disabled: false,
        base_min_size: Some("0.00000001".parse().expect("d")),
        base_max_size: Some(Decimal::from(3400)),
        base_increment: Some("0.00000001".parse().expect("d")),
        price_increment: Some("0.01".parse().expect("d")),
        alias: None,
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
            &spot_canvas::model::ProductId::from_static("SOL-USD"),
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
    wait_for("the first row written", Duration::from_secs(20), || async {
        stats.report().written_rows == 1
    })
    .await;
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
    wait_for(
        "writes failing while down",
        Duration::from_secs(15),
        || async { stats.report().failures > 0 },
    )
    .await;
    db.pg.restart().await.expect("start again");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("flushes once the database is back")
        .expect("join")
        .expect("writer");
    let stored = repo
        .candles(
            &spot_canvas::model::ProductId::from_static("ADA-USD"),
            Granularity::OneMinute,
            at(T0),
            at(T0 + 600),
            100,
        )
        .await
        .expect("query");
    assert_eq!(stored.len(), 10);
    for s in &stored {
        let k = (s.candle.start.timestamp() - T0) / 60;
        let last_round = (191..=200u64).find(|r| r % 10 == k as u64).expect("round");
        assert_eq!(s.candle.trade_count, Some(last_round), "key {k}");
    }
}

/// The PostgreSQL server processes of a test cluster (the postmaster and its children),
/// stopped with SIGSTOP: a database that hangs without closing anything. Continued on drop,
/// so a failing test never leaves a frozen cluster behind (nor a `TestDb` drop that waits
/// on it).
struct Frozen {
    pids: Vec<String>,
}

impl Frozen {
    fn stop(db: &TestDb) -> Frozen {
        let pidfile = db.pg.cluster_dir().join("postmaster.pid");
        let postmaster = std::fs::read_to_string(&pidfile).expect("postmaster.pid");
        let postmaster = postmaster
            .lines()
            .next()
            .expect("a pid line")
            .trim()
            .to_owned();
        // The postmaster first: once it is stopped it forks no new children.
        signal("-STOP", std::slice::from_ref(&postmaster));
        let mut pids = vec![postmaster.clone()];
        pids.extend(children_of(&postmaster));
        signal("-STOP", &pids);
        Frozen { pids }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.pids);
    }
}

fn children_of(parent: &str) -> Vec<String> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the command may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(parent) {
            children.push(name);
        }
    }
    children
}

fn signal(which: &str, pids: &[String]) {
    let status = std::process::Command::new("kill")
        .arg(which)
        .args(pids)
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {which} {pids:?}");
}

/// Rows of `live_candles` per product and their trade counts.
async fn counts(pool: &sqlx::PgPool) -> std::collections::BTreeMap<(String, i64), i64> {
    let rows: Vec<(String, DateTime<Utc>, i64)> =
        sqlx::query_as(r#"SELECT product_id, "timestamp", trade_count FROM live_candles"#)
            .fetch_all(pool)
            .await
            .expect("rows");
    rows.into_iter()
        .map(|(p, t, n)| ((p, t.timestamp()), n))
        .collect()
}

#[tokio::test]
async fn a_hung_database_hangs_neither_the_writer_nor_its_stop_and_loses_nothing() {
    let db = TestDb::migrated().await;
    // The writer's own pool, as in the service (the test's pool stays free for checks).
    let pool = spot_canvas::store::connect(&db.url)
        .await
        .expect("connects");
    let (tx, rx) = mpsc::channel(4);
    let writer = BatchWriter::new(
        Repository::new(pool),
        WriterSettings {
            flush_timeout: Duration::from_secs(1),
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_millis(500),
            ..WriterSettings::default()
        },
        rx,
    );
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    tx.send(vec![update("DOT-USD", T0, 0, 1, "1")])
        .await
        .expect("send");
    wait_for("the first row written", Duration::from_secs(20), || async {
        stats.report().written_rows == 1
    })
    .await;
    // A statement in flight when the server hangs: another transaction holds the table, so
    // the writer's next upsert waits on the lock; then every server process is stopped.
    let mut locker = db.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE live_candles IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .expect("lock");
    tx.send(vec![update("DOT-USD", T0, 0, 2, "2")])
        .await
        .expect("send");
    wait_for(
        "an upsert waiting on the lock",
        Duration::from_secs(20),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%INSERT INTO live_candles%'",
            )
            .fetch_one(&db.pool)
            .await
            .expect("activity");
            waiting > 0
        },
    )
    .await;
    let frozen = Frozen::stop(&db);
    // The writer keeps taking updates (the channel holds 4 batches) while nothing answers.
    let sending = async {
        for round in 3..=100u64 {
            let batch = (0..10)
                .map(|k| update("DOT-USD", T0 + 60 * k, 0, round, "3"))
                .collect();
            tx.send(batch).await.expect("send");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), sending)
        .await
        .expect("the writer never blocks its sender");
    // Flushes are abandoned after their timeout and retried, not waited on forever.
    wait_for(
        "hung flushes abandoned",
        Duration::from_secs(30),
        || async { stats.report().timeouts >= 2 },
    )
    .await;
    // The stop: the input closes while the database still hangs. The writer keeps retrying
    // (each attempt bounded by its timeout) and holds every row.
    drop(tx);
    let before = stats.report().timeouts;
    wait_for(
        "retries after the input closed",
        Duration::from_secs(30),
        || async { stats.report().timeouts > before },
    )
    .await;
    assert!(
        !task.is_finished(),
        "nothing is dropped while the database hangs"
    );
    assert!(stats.report().pending > 0 || stats.report().failures > 0);
    drop(frozen);
    locker.rollback().await.expect("release the lock");
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the writer finishes once the database answers again")
        .expect("join")
        .expect("writer");
    let stored = counts(&db.pool).await;
    assert_eq!(stored.len(), 10, "{stored:?}");
    for k in 0..10 {
        assert_eq!(
            stored.get(&("DOT-USD".to_owned(), T0 + 60 * k)),
            Some(&100),
            "key {k}"
        );
    }
}

#[tokio::test]
async fn the_writer_stores_a_flush_of_over_5000_rows_in_several_statements() {
    let db = TestDb::migrated().await;
    // Counts the rows each INSERT statement on live_candles inserted.
    for ddl in [
        "CREATE TABLE statement_rows (n bigint NOT NULL)",
        "CREATE FUNCTION count_statement_rows() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO statement_rows SELECT count(*) FROM new_rows; RETURN NULL; END $$",
        "CREATE TRIGGER count_statement_rows AFTER INSERT ON live_candles \
         REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT \
         EXECUTE FUNCTION count_statement_rows()",
    ] {
        sqlx::query(ddl).execute(&db.pool).await.expect(ddl);
    }
    let repo = Repository::new(db.pool.clone());
    let (tx, rx) = mpsc::channel(16);
    // Nothing is flushed before the input closes: then all 12,000 rows in one flush.
    let writer = BatchWriter::new(
        repo,
        WriterSettings {
            max_rows: 100_000,
            flush_interval: Duration::from_secs(3600),
            ..WriterSettings::default()
        },
        rx,
    );
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    const ROWS: i64 = 12_000;
    for chunk in 0..12 {
        let batch = (chunk * 1_000..(chunk + 1) * 1_000)
            .map(|i| {
                update(
                    &format!("P{:03}-USD", i % 100),
                    T0 + 60 * (i / 100),
                    0,
                    7,
                    "7",
                )
            })
            .collect();
        tx.send(batch).await.expect("send");
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .expect("written in time")
        .expect("join")
        .expect("writer");
    let report = stats.report();
    assert_eq!(report.batches, 1, "one flush: {report:?}");
    assert_eq!(report.written_rows, ROWS as u64);
    let stored = counts(&db.pool).await;
    assert_eq!(stored.len(), ROWS as usize);
    assert!(stored.values().all(|n| *n == 7));
    let mut statements: Vec<i64> = sqlx::query_scalar("SELECT n FROM statement_rows")
        .fetch_all(&db.pool)
        .await
        .expect("statement counts");
    statements.sort_unstable();
    assert_eq!(statements, vec![2_000, 5_000, 5_000]);
}

#[tokio::test]
async fn a_batch_with_refused_rows_writes_every_other_row_in_one_flush() {
    let db = TestDb::migrated().await;
    let (tx, rx) = mpsc::channel(4);
    let writer = BatchWriter::new(
        Repository::new(db.pool.clone()),
        WriterSettings {
            max_rows: 1_000,
            flush_interval: Duration::from_millis(50),
            ..WriterSettings::default()
        },
        rx,
    );
    let stats = writer.stats();
    // Ids can no longer carry what PostgreSQL refuses (a NUL byte, a length past the index's
    // row limit): a check constraint stands in for such content, refusing two rows (23514).
    sqlx::query(
        "ALTER TABLE live_candles ADD CONSTRAINT refused_in_test \
         CHECK (product_id NOT IN ('BAD-USD', 'WORSE-USD'))",
    )
    .execute(&db.pool)
    .await
    .expect("constraint");
    let task = tokio::spawn(writer.run());
    let mut batch: Vec<CandleUpdate> = (0..40)
        .map(|i| update(&format!("P{:02}-USD", i % 8), T0 + 60 * (i / 8), 0, 3, "2"))
        .collect();
    batch.insert(13, update("BAD-USD", T0, 0, 1, "1"));
    batch.insert(29, update("WORSE-USD", T0, 0, 1, "1"));
    tx.send(batch).await.expect("send");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the writer ends: refused rows are not retried forever")
        .expect("join")
        .expect("writer");
    let report = stats.report();
    assert_eq!(report.batches, 1, "one flush: {report:?}");
    assert_eq!(report.failures, 0, "{report:?}");
    assert_eq!((report.written_rows, report.refused), (40, 2), "{report:?}");
    let stored = counts(&db.pool).await;
    assert_eq!(stored.len(), 40);
    assert!(
        stored
            .keys()
            .all(|(p, _)| p.len() == 7 && p.starts_with('P'))
    );
}

#[tokio::test]
async fn a_products_list_with_a_duplicate_and_refused_rows_upserts_the_rest() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    let mut delisted = common::product("BTC-USD", Some("0.01"));
    delisted.status = "delisted".into();
    delisted.trading_disabled = true;
    // A NUL byte in a text field (22021), and two ids a check constraint refuses (23514) in
    // place of ids PostgreSQL cannot index (which `ProductId` no longer holds).
    let mut nul_in_status = common::product("SOL-USD", None);
    nul_in_status.status = "onl\0ine".into();
    sqlx::query(
        "ALTER TABLE trading_pairs ADD CONSTRAINT refused_in_test \
         CHECK (product_id NOT IN ('BAD-USD', 'WORSE-USD'))",
    )
    .execute(&db.pool)
    .await
    .expect("constraint");
    let list = vec![
        common::product("BTC-USD", Some("0.01")),
        common::product("ETH-USD", None),
        common::product("BAD-USD", None),
        nul_in_status,
        common::product("WORSE-USD", None),
        // Listed again, last: this listing is the one stored.
        delisted.clone(),
        common::product("ADA-USD", None),
    ];
    let written = repo.upsert_products(&list).await.expect("upsert");
    assert_eq!(written.merged, 1, "{written:?}");
    assert_eq!(written.refused.len(), 3, "{written:?}");
    assert_eq!(written.changed, 3, "{written:?}");
    let stored = repo.products().await.expect("read");
    let ids: Vec<&str> = stored.iter().map(|p| p.product_id.as_str()).collect();
    assert_eq!(ids, vec!["ADA-USD", "BTC-USD", "ETH-USD"]);
    assert_eq!(stored[1], delisted, "the last listing of BTC-USD");
    // The next refresh with the same list changes the same rows, refuses the same ones.
    let again = repo.upsert_products(&list).await.expect("upsert again");
    assert_eq!((again.changed, again.refused.len()), (3, 3));
}

/// Runs `writer` (fed by `tx`): one row of `product` written, then PostgreSQL stopped, 20
/// more rows sent and a flush failed, then the stop (its input closed) in the middle of a
/// backoff. Returns the writer's stats and how long the stop took.
async fn stop_while_the_database_is_away(
    db: &TestDb,
    writer: BatchWriter,
    tx: mpsc::Sender<Vec<CandleUpdate>>,
    product: &str,
) -> (std::sync::Arc<spot_canvas::store::WriterStats>, Duration) {
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    tx.send(vec![update(product, T0, 0, 1, "1")])
        .await
        .expect("send");
    wait_for("the first row written", Duration::from_secs(20), || async {
        stats.report().written_rows == 1
    })
    .await;
    db.pg.stop_with("immediate").await.expect("stop");
    tx.send(
        (0..20)
            .map(|k| update(product, T0 + 60 * k, 0, 5, "5"))
            .collect(),
    )
    .await
    .expect("send");
    wait_for("a failed flush", Duration::from_secs(20), || async {
        stats.report().failures > 0
    })
    .await;
    let stopping = std::time::Instant::now();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the stop is bounded")
        .expect("join")
        .expect("writer");
    (stats, stopping.elapsed())
}

#[tokio::test]
async fn rows_not_written_by_the_stop_are_spooled_and_written_after_the_next_start() {
    let db = TestDb::migrated().await;
    let data = tempfile::tempdir().expect("dir");
    let spool = spot_canvas::store::Spool::in_dir(data.path());
    let settings = WriterSettings {
        retry_base: Duration::from_secs(30),
        retry_cap: Duration::from_secs(30),
        ..WriterSettings::default()
    };
    let (tx, rx) = mpsc::channel(4);
    let writer =
        BatchWriter::new(Repository::new(db.pool.clone()), settings, rx).with_spool(spool.clone());
    // The stop, in the middle of a 15-30 s backoff: no wait for it.
    let (stats, took) = stop_while_the_database_is_away(&db, writer, tx, "XRP-USD").await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    let report = stats.report();
    assert_eq!((report.kept_at_stop, report.pending), (20, 0), "{report:?}");
    assert!(spool.path().exists());

    // The next start: the database is back; the writer writes the spool and removes it.
    db.pg.restart().await.expect("restart");
    let (tx, rx) = mpsc::channel(4);
    let writer = BatchWriter::new(Repository::new(db.pool.clone()), settings, rx)
        .with_spool(spot_canvas::store::Spool::in_dir(data.path()));
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    wait_for("the spool written", Duration::from_secs(60), || async {
        stats.report().recovered == 20
    })
    .await;
    wait_for("the spool removed", Duration::from_secs(5), || async {
        !spool.path().exists()
    })
    .await;
    drop(tx);
    task.await.expect("join").expect("writer");
    let stored = counts(&db.pool).await;
    assert_eq!(stored.len(), 20);
    assert!(stored.values().all(|n| *n == 5), "{stored:?}");
}

#[tokio::test]
async fn pools_have_a_statement_timeout_and_the_api_pool_is_small_and_separate() {
    let db = TestDb::migrated().await;
    let service = spot_canvas::store::connect(&db.url)
        .await
        .expect("connects");
    let show = |pool: sqlx::PgPool, name: &'static str| async move {
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("SHOW {name}")))
            .fetch_one(&pool)
            .await
            .expect("show")
    };
    assert_eq!(show(service.clone(), "statement_timeout").await, "1min");
    assert_eq!(show(service.clone(), "tcp_keepalives_idle").await, "30");
    let api = spot_canvas::store::api_pool(&service);
    assert_eq!(show(api.clone(), "statement_timeout").await, "5s");
    assert_eq!(api.options().get_max_connections(), 3);
    // Every API connection busy: the API waits at most its acquire timeout and the writer's
    // pool is untouched.
    let mut busy = Vec::new();
    for _ in 0..3 {
        let api = api.clone();
        busy.push(tokio::spawn(async move {
            sqlx::query("SELECT pg_sleep(3)").execute(&api).await
        }));
    }
    wait_for(
        "three API reads running",
        Duration::from_secs(20),
        || async {
            let sleeping: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(3)' \
             AND state = 'active'",
            )
            .fetch_one(&db.pool)
            .await
            .expect("activity");
            sleeping == 3
        },
    )
    .await;
    let starved = sqlx::query("SELECT 1").execute(&api).await;
    assert!(
        matches!(starved, Err(sqlx::Error::PoolTimedOut)),
        "the fourth API read gives up: {starved:?}"
    );
    let repo = Repository::new(service.clone());
    assert_eq!(
        repo.upsert_candles(&[update("BTC-USD", T0, 0, 1, "1")])
            .await
            .expect("the writer's pool still writes"),
        1
    );
    for read in busy {
        read.await.expect("join").expect("the long reads end");
    }
}

/// The service's HTTP state around `repository` (the rest idle).
fn app_state(repository: Repository) -> spot_canvas::web::AppState {
    spot_canvas::web::AppState::idle(repository)
}

#[tokio::test]
async fn the_history_api_honours_end_and_caps_limit_and_answers_503_while_the_database_is_away() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    // 1,200 one-minute candles, and one five-minute candle that a minute query never returns.
    let rows: Vec<CandleUpdate> = (0..1_200)
        .map(|i| update("BTC-USD", T0 + 60 * i, 0, 1 + i as u64, "5"))
        .collect();
    repo.upsert_candles(&rows).await.expect("insert");
    let mut five = update("BTC-USD", T0, 0, 1, "9");
    five.candle.granularity = Granularity::FiveMinutes;
    repo.upsert_candle(&five).await.expect("insert");
    // The API answers for known products only (those in trading_pairs).
    repo.upsert_products(&[common::product("BTC-USD", None)])
        .await
        .expect("insert the product");
    let state = app_state(Repository::new(spot_canvas::store::api_pool(&db.pool)));

    // `end` is exclusive; the newest `limit` before it come back oldest first.
    let end = T0 + 60 * 10;
    let (status, body) = common::get_json(
        &state,
        &format!("/api/v1/candles?product=BTC-USD&granularity=1m&limit=3&end={end}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["granularity"], "ONE_MINUTE");
    assert_eq!(
        common::timestamps(&body),
        vec![T0 + 420, T0 + 480, T0 + 540]
    );
    assert_eq!(body["candles"][0]["close"], "5");
    assert_eq!(body["candles"][0]["trade_count"], 8);

    // The default limit is 300, the cap 1,000 (of the 1,200 stored: the newest).
    let (_, body) = common::get_json(
        &state,
        "/api/v1/candles?product=BTC-USD&granularity=ONE_MINUTE",
    )
    .await;
    assert_eq!(common::timestamps(&body).len(), 300);
    let (status, body) = common::get_json(
        &state,
        "/api/v1/candles?product=BTC-USD&granularity=ONE_MINUTE&limit=1000",
    )
    .await;
    assert_eq!(status, 200);
    let got = common::timestamps(&body);
    assert_eq!(got.len(), 1_000);
    assert_eq!(got.first(), Some(&(T0 + 60 * 200)));
    assert_eq!(got.last(), Some(&(T0 + 60 * 1_199)));
    let (status, body) = common::get_json(
        &state,
        "/api/v1/candles?product=BTC-USD&granularity=ONE_MINUTE&limit=1001",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().expect("error").contains("limit"));
    let (_, body) =
        common::get_json(&state, "/api/v1/candles?product=BTC-USD&granularity=5m").await;
    assert_eq!(body["granularity"], "FIVE_MINUTES");
    assert_eq!(common::timestamps(&body), vec![T0]);

    // The database goes away: 503 with a message that names no connection detail.
    db.pg.stop_with("immediate").await.expect("stop");
    let (status, body) =
        common::get_json(&state, "/api/v1/candles?product=BTC-USD&granularity=1m").await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("not available"), "{error}");
    assert!(!error.contains("postgres://"), "{error}");
    // And back.
    db.pg.restart().await.expect("start again");
    common::eventually("200 again", Duration::from_secs(30), || async {
        let (status, _) =
            common::get_json(&state, "/api/v1/candles?product=BTC-USD&granularity=1m").await;
        (status == 200).then_some(())
    })
    .await;
}

/// A real `nats-server` with JetStream (stopped on drop) and a client of it.
struct TestNats {
    server: spot_canvas::bus::EmbeddedNats,
    _dir: tempfile::TempDir,
}

impl TestNats {
    async fn start() -> TestNats {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = spot_canvas::bus::EmbeddedNats::start(None, dir.path())
            .await
            .expect("nats-server starts");
        TestNats { server, _dir: dir }
    }

    /// A new connection, as a new process would have.
    async fn client(&self) -> async_nats::Client {
        spot_canvas::bus::connect(&self.server.client_url(), "test", |_| async {})
            .await
            .expect("connects")
    }
}

/// Messages in the writer's JetStream spool.
async fn spooled_messages(client: &async_nats::Client) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_stream(spot_canvas::store::stream_spool::STREAM)
        .await
        .expect("the stream");
    stream.get_info().await.expect("info").state.messages
}

#[tokio::test]
async fn rows_kept_at_a_stop_go_to_jetstream_and_the_next_writer_writes_and_acks_them() {
    use spot_canvas::store::{Spool, StreamSpool};
    let db = TestDb::migrated().await;
    let nats = TestNats::start().await;
    let data = tempfile::tempdir().expect("dir");
    let spool = Spool::in_dir(data.path());
    let settings = WriterSettings {
        retry_base: Duration::from_secs(30),
        retry_cap: Duration::from_secs(30),
        ..WriterSettings::default()
    };
    let (tx, rx) = mpsc::channel(4);
    let writer = BatchWriter::new(Repository::new(db.pool.clone()), settings, rx)
        .with_spool(spool.clone())
        .with_stream_spool(StreamSpool::new(nats.client().await, 1));
    let (stats, took) = stop_while_the_database_is_away(&db, writer, tx, "SOL-USD").await;
    assert!(took < Duration::from_secs(5));
    let report = stats.report();
    assert_eq!((report.kept_at_stop, report.pending), (20, 0), "{report:?}");
    assert!(!spool.path().exists(), "JetStream took them: no file");
    let observer = nats.client().await;
    assert!(spooled_messages(&observer).await >= 1);

    // The next start, another process: PostgreSQL still away at first.
    let (tx, rx) = mpsc::channel(4);
    let writer = BatchWriter::new(
        Repository::new(db.pool.clone()),
        WriterSettings {
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_millis(500),
            ..WriterSettings::default()
        },
        rx,
    )
    .with_spool(Spool::in_dir(data.path()))
    .with_stream_spool(StreamSpool::new(nats.client().await, 1));
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stats.report().recovered, 0);
    assert!(
        spooled_messages(&observer).await >= 1,
        "not acked while unwritten"
    );
    db.pg.restart().await.expect("restart");
    wait_for("the kept rows written", Duration::from_secs(60), || async {
        stats.report().recovered == 20
    })
    .await;
    wait_for("the stream empty", Duration::from_secs(10), || async {
        spooled_messages(&observer).await == 0
    })
    .await;
    drop(tx);
    task.await.expect("join").expect("writer");
    let stored = counts(&db.pool).await;
    assert_eq!(stored.len(), 20);
    assert!(stored.values().all(|n| *n == 5), "{stored:?}");
    assert!(!spool.path().exists());
}

#[tokio::test]
async fn a_message_of_the_jetstream_spool_that_cannot_be_read_is_lost_alone() {
    use spot_canvas::store::StreamSpool;
    use spot_canvas::store::stream_spool::{ROWS_HEADER, SUBJECT};
    let db = TestDb::migrated().await;
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let stream = StreamSpool::new(client.clone(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // Good rows, then two messages that cannot be read, then good rows again.
    let first = stream
        .keep(
            (0..3)
                .map(|k| update("DOT-USD", T0 + 60 * k, 0, 2, "2"))
                .collect(),
            deadline,
        )
        .await;
    assert_eq!((first.acked, first.unacked.len()), (3, 0));
    let js = async_nats::jetstream::new(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ROWS_HEADER, "3");
    js.publish_with_headers(
        SUBJECT,
        headers,
        "{\"spot_canvas_spool\":1,\"rows\":[{".into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    js.publish(SUBJECT, "\u{0}\r\u{1b}[31m not json".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let last = stream
        .keep(
            (3..5)
                .map(|k| update("DOT-USD", T0 + 60 * k, 0, 2, "2"))
                .collect(),
            deadline,
        )
        .await;
    assert_eq!(last.acked, 2);
    assert_eq!(spooled_messages(&client).await, 4);

    let (tx, rx) = mpsc::channel(4);
    let data = tempfile::tempdir().expect("dir");
    let writer = BatchWriter::new(
        Repository::new(db.pool.clone()),
        WriterSettings::default(),
        rx,
    )
    .with_spool(spot_canvas::store::Spool::in_dir(data.path()))
    .with_stream_spool(StreamSpool::new(nats.client().await, 1));
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    wait_for("the good rows written", Duration::from_secs(30), || async {
        stats.report().recovered == 5
    })
    .await;
    wait_for("the stream empty", Duration::from_secs(10), || async {
        spooled_messages(&client).await == 0
    })
    .await;
    assert_eq!(
        stats.report().recovery_lost,
        4,
        "3 named in the header, 1 without"
    );
    drop(tx);
    task.await.expect("join").expect("writer");
    assert_eq!(counts(&db.pool).await.len(), 5);
}
