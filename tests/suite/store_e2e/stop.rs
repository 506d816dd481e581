//! Stops: SIGTERM with updates in flight, and a stop while PostgreSQL is away.

use super::*;

#[tokio::test]
async fn sigterm_with_updates_in_flight_loses_nothing() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = common::data_dir();
    let sim = sim_with_log(dir.path(), 10, 20.0).await;
    let env = AppEnv::for_sim(&sim, data.path())
        .database(&db)
        // Only what the feed delivered, so the table's trade counts tell the window each
        // product saw (backfill has its own tests in tests/slow/reconcile.rs).
        .set("BACKFILL_HORIZON_HOURS", "0")
        // Updates wait in the writer for up to 2 s: the signal finds some there.
        .set("WRITER_FLUSH_MS", "2000")
        .set("WRITER_BATCH_ROWS", "10000")
        .set(
            "PRODUCTS",
            spot_canvas_sim::market::MarketSpec::product_ids(10).join(","),
        );
    let mut service = Service::start(&env, &dir.path().join("serve.log")).await;
    // Candles are being written, and then updates wait in the writer: the last `/health`
    // before the signal tells how many trades the engine had taken by then.
    let written = service
        .wait_for_health("candles written", Duration::from_secs(60), |_, h| {
            h["store"]["writer"]["written_rows"].as_u64() > Some(0)
        })
        .await;
    let trades_then = written["engine"]["trades"].as_u64().expect("trades");
    let at_signal = service
        .wait_for_health(
            "more trades, with updates pending in the writer",
            Duration::from_secs(60),
            |_, h| {
                h["engine"]["trades"].as_u64() > Some(trades_then + 200)
                    && h["store"]["writer"]["pending"].as_u64() > Some(0)
            },
        )
        .await;
    service.terminate();
    let taken = at_signal["engine"]["trades"].as_u64().expect("trades");
    // Within Cloud Run's 10 s between SIGTERM and SIGKILL.
    let exit = service.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit}");
    sim.stop().await;
    let logs = service.log();
    let flushed = service
        .log_lines()
        .into_iter()
        .find(|v| v["message"] == "writer flushed")
        .expect("the writer reports its final flush");
    assert_eq!(flushed["pending"], 0, "nothing left unwritten");
    assert!(flushed["written"].as_u64() > Some(0));
    assert!(!logs.contains("stage failed"), "{logs}");
    assert!(!logs.contains("before the stop signal"), "{logs}");
    // The engine saw each product's trades from its first snapshot on, contiguously: the
    // 1-minute trade counts tell how many, the highest stored id where they end.
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let (windows, stored) = common::stored_windows(&db.pool, &log).await;
    // Every trade the engine had taken before the signal is stored: updates lost at the
    // signal would leave fewer (the stored windows alone would just be shorter).
    assert!(
        stored >= taken,
        "{stored} trades stored, {taken} taken before the signal"
    );
    assert_eq!(windows.len(), 10);
    // And what is stored is exactly the simulator's trades of those windows: each a
    // contiguous run of the log from the first snapshot on.
    for (product, (first, last)) in &windows {
        assert!(
            log.iter()
                .any(|t| &t.product_id == product && t.trade_id == *last),
            "{product}: the last stored trade {last} is one the simulator made"
        );
        assert!(*first <= *last, "{product}");
    }
    common::assert_table_matches_log(&db.pool, &log, &windows).await;
}

/// What a `/stream` client saw of one candle: its newest version (hex, whose string order is
/// version order) and trade count.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    version: String,
    trades: u64,
}

/// Reads `/stream` for `products` at every granularity until it ends (at the service's stop),
/// keeping the newest version shown of each candle.
async fn read_stream(
    port: u16,
    products: &[String],
) -> tokio::task::JoinHandle<BTreeMap<(String, String, i64), Shown>> {
    let granularities: Vec<&str> = common::WIDTHS.iter().map(|(g, _)| g.as_str()).collect();
    let url = format!(
        "http://127.0.0.1:{port}/stream?products={}&granularities={}",
        products.join(","),
        granularities.join(",")
    );
    let response = tokio::time::timeout(Duration::from_secs(10), reqwest::get(url))
        .await
        .expect("the stream answers within 10 s")
        .expect("the stream opens");
    assert_eq!(response.status(), 200);
    tokio::spawn(async move {
        let mut reader = common::SseReader::new(response);
        let mut shown: BTreeMap<(String, String, i64), Shown> = BTreeMap::new();
        while let Some(event) = reader.next(Duration::from_secs(120)).await {
            let (Some(product), Some(granularity), Some(start), Some(version), Some(trades)) = (
                event.attr("data-product"),
                event.attr("data-granularity"),
                event.attr("data-timestamp"),
                event.attr("data-version"),
                event.attr("data-trades"),
            ) else {
                continue;
            };
            let key = (product, granularity, start.parse().expect("timestamp"));
            let trades = trades.parse().expect("a trade count: no backfill");
            let slot = shown.entry(key).or_insert(Shown {
                version: String::new(),
                trades: 0,
            });
            if version > slot.version {
                *slot = Shown { version, trades };
            }
        }
        shown
    })
}

#[tokio::test]
async fn a_stop_while_postgres_is_away_keeps_every_streamed_candle_for_the_next_start() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = common::data_dir();
    let sim = sim_with_log(dir.path(), 6, 20.0).await;
    let ids = spot_canvas_sim::market::MarketSpec::product_ids(6);
    // The first run's products, then the second run's: the first run's rows reach the table
    // only through its own writes and its spool.
    let (first, second) = ids.split_at(4);
    let env = |products: &[String]| {
        AppEnv::for_sim(&sim, data.path())
            .database(&db)
            // Only what the feed delivered: the stored trade counts tell each window.
            .set("BACKFILL_HORIZON_HOURS", "0")
            .set("PRODUCTS", products.join(","))
    };
    let mut service = Service::start(&env(first), &dir.path().join("serve-1.log")).await;
    let stream = read_stream(service.port, first).await;
    service
        .wait_for_health("candles written", Duration::from_secs(60), |_, h| {
            h["store"]["writer"]["written_rows"].as_u64() > Some(0)
        })
        .await;
    db.pg
        .stop_with("immediate")
        .await
        .expect("PostgreSQL stops abruptly");
    let down = service
        .wait_for_health(
            "the writer to see the outage",
            Duration::from_secs(60),
            |_, h| h["store"]["writer"]["failures"].as_u64() > Some(0),
        )
        .await;
    let trades_then = down["engine"]["trades"].as_u64().expect("trades");
    // Under load: trades keep coming while the database is away, and the writer holds them.
    let at_signal = service
        .wait_for_health(
            "300 more trades with rows pending in the writer",
            Duration::from_secs(60),
            |_, h| {
                h["engine"]["trades"].as_u64() > Some(trades_then + 300)
                    && h["store"]["writer"]["pending"].as_u64() > Some(0)
            },
        )
        .await;
    let signalled = std::time::Instant::now();
    service.terminate();
    // Within Cloud Run's 10 s between SIGTERM and SIGKILL, though the writer was in backoff.
    let exit = service.wait_exit(Duration::from_secs(10)).await;
    let stop_took = signalled.elapsed();
    assert!(exit.success(), "{exit}\n{}", service.log());
    let shown = tokio::time::timeout(Duration::from_secs(10), stream)
        .await
        .expect("the stream ends with the service")
        .expect("the stream reads");
    let flushed = service
        .log_lines()
        .into_iter()
        .find(|v| v["message"] == "writer flushed")
        .expect("the writer reports its stop");
    assert_eq!(flushed["pending"], 0, "nothing left unkept: {flushed}");
    let kept = flushed["kept"].as_u64().expect("kept");
    assert!(kept > 0, "rows kept in the spool: {flushed}");
    let spool = data.path().join("writer-spool.jsonl");
    assert!(spool.exists(), "the spool is written");
    let spool_lines = std::fs::read_to_string(&spool)
        .expect("spool")
        .lines()
        .count()
        - 1;
    println!(
        "stop with PostgreSQL away: {stop_took:?}; {kept} rows kept ({spool_lines} spooled, {} bytes); \
         {} pending at the last /health before the signal",
        std::fs::metadata(&spool).map(|m| m.len()).unwrap_or(0),
        at_signal["store"]["writer"]["pending"]
    );

    // PostgreSQL and the service start again (the second run ingests other products).
    db.pg.restart().await.expect("PostgreSQL starts again");
    let mut again = Service::start(&env(second), &dir.path().join("serve-2.log")).await;
    again
        .wait_for_health("the spool written", Duration::from_secs(60), |_, h| {
            h["store"]["writer"]["recovered"].as_u64() >= Some(kept)
        })
        .await;
    common::wait_for("the spool removed", Duration::from_secs(10), || async {
        !spool.exists()
    })
    .await;
    let exit = again.stop().await;
    assert!(exit.success(), "{exit}");
    sim.stop().await;

    // Every candle the stream showed is in the table, with its trade count (or a later
    // version of it, with more trades, that the writer got after the stream's last event).
    let rows: Vec<(String, String, i64, i64, String)> = sqlx::query_as(
        "SELECT product_id, granularity::text, extract(epoch FROM \"timestamp\")::int8, \
         trade_count, encode(version, 'hex') FROM live_candles",
    )
    .fetch_all(&db.pool)
    .await
    .expect("rows");
    let stored: BTreeMap<(String, String, i64), Shown> = rows
        .into_iter()
        .map(|(p, g, start, n, version)| {
            let trades = n as u64;
            ((p, g, start), Shown { version, trades })
        })
        .collect();
    assert!(
        shown.len() >= 4 * 8,
        "the stream showed candles: {}",
        shown.len()
    );
    let mut later = 0;
    for (key, seen) in &shown {
        let row = stored
            .get(key)
            .unwrap_or_else(|| panic!("{key:?}, shown by the stream, is not in the table"));
        assert!(
            row.version >= seen.version,
            "{key:?}: {row:?} older than shown {seen:?}"
        );
        if row.version == seen.version {
            assert_eq!(row.trades, seen.trades, "{key:?}");
        } else {
            assert!(row.trades >= seen.trades, "{key:?}: {row:?} vs {seen:?}");
            later += 1;
        }
    }
    println!(
        "{} candles shown by the stream, all stored ({later} with a later version)",
        shown.len()
    );
    // And the table is exactly the simulator's trades of each product's window (contiguous
    // from its first snapshot; the trade counts tell where each window starts).
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let (windows, _) = common::stored_windows(&db.pool, &log).await;
    // The second run's products too, if it wrote any of them before its stop.
    assert!(first.iter().all(|p| windows.contains_key(p)), "{windows:?}");
    common::assert_table_matches_log(&db.pool, &log, &windows).await;
}
