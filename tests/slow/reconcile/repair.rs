//! Repairs: restarts, gaps and reconnects filled from REST, and a wrong stored candle caught by the
//! cross-check.

use super::*;

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
