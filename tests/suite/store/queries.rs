//! The schema and its queries: migrations, idempotent upserts, exact amounts, ranges, products and
//! refused rows.

use super::*;

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
