//! A database crash while trades flow.

use super::*;

#[tokio::test]
async fn candles_survive_a_database_crash_while_trades_flow() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = sim_with_log(dir.path(), 3, 10.0).await;
    let config = spot_canvas::config::Config::from_lookup(|name| match name {
        "COINBASE_WS_URL" => Some(sim.ws_url()),
        "COINBASE_REST_URL" => Some(sim.rest_url()),
        "PRODUCTS" => Some("BTC-USD,ETH-USD,SOL-USD".into()),
        _ => None,
    })
    .expect("config");
    let (feed_tx, mut feed_rx) = mpsc::channel(64);
    let (engine_tx, engine_rx) = mpsc::channel(64);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<CandleUpdate>>(64);
    let (writer_tx, writer_rx) = mpsc::channel(64);
    let feed = Feed::new(FeedSettings::from_config(&config), feed_tx);
    let engine = Engine::new(
        EngineSettings::default(),
        Arc::new(SystemClock),
        engine_rx,
        out_tx,
    );
    let writer = BatchWriter::new(
        Repository::new(db.pool.clone()),
        WriterSettings {
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(1),
            ..WriterSettings::default()
        },
        writer_rx,
    );
    let writer_stats = writer.stats();
    let cancel = CancellationToken::new();
    let feed_task = tokio::spawn(feed.run(cancel.clone()));
    let engine_task = tokio::spawn(engine.run(CancellationToken::new()));
    let writer_task = tokio::spawn(writer.run());
    // Taps: the oldest trade id of each product's first snapshot, and the engine's output.
    let tap = tokio::spawn(async move {
        let mut first: BTreeMap<spot_canvas::model::ProductId, u64> = BTreeMap::new();
        while let Some(event) = feed_rx.recv().await {
            if let FeedEvent::Trades(b) = &event
                && b.snapshot
                && let Some(min) = b.trades.iter().map(|t| t.trade_id.0).min()
            {
                first.entry(b.trades[0].product_id.clone()).or_insert(min);
            }
            if engine_tx.send(event).await.is_err() {
                break;
            }
        }
        first
    });
    let emitted = Arc::new(AtomicU64::new(0));
    let counter = emitted.clone();
    let out_tap = tokio::spawn(async move {
        let mut last: BTreeMap<spot_canvas::model::ProductId, u64> = BTreeMap::new();
        while let Some(batch) = out_rx.recv().await {
            counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
            for u in &batch {
                let id = last.entry(u.candle.product_id.clone()).or_default();
                *id = (*id).max(u.version().last_trade_id.0);
            }
            if writer_tx.send(batch).await.is_err() {
                break;
            }
        }
        last
    });

    common::wait_for(
        "the writer to store candles",
        Duration::from_secs(60),
        || async { writer_stats.report().written_rows > 0 },
    )
    .await;
    db.pg
        .stop_with("immediate")
        .await
        .expect("PostgreSQL stops abruptly");
    let before = emitted.load(Ordering::Relaxed);
    common::wait_for(
        "the writer to see the outage",
        Duration::from_secs(60),
        || async { writer_stats.report().failures > 0 },
    )
    .await;
    // The engine does not wait for the database: its output keeps flowing during the outage
    // (3 products at 10 trades/s give dozens of updates a second).
    common::wait_for(
        "50 more engine updates while the database is down",
        Duration::from_secs(60),
        || async { emitted.load(Ordering::Relaxed) >= before + 50 },
    )
    .await;
    let pending = writer_stats.report().pending;
    assert!(pending > 0, "the writer holds what it could not store");
    let written_down = writer_stats.report().written_rows;
    db.pg.restart().await.expect("PostgreSQL starts again");
    // Writes succeed again, and trades keep flowing after the restart.
    common::wait_for(
        "the writer to store rows after the restart",
        Duration::from_secs(60),
        || async { writer_stats.report().written_rows > written_down },
    )
    .await;
    let after_restart = emitted.load(Ordering::Relaxed);
    common::wait_for(
        "updates after the restart",
        Duration::from_secs(60),
        || async { emitted.load(Ordering::Relaxed) > after_restart + 20 },
    )
    .await;

    cancel.cancel();
    feed_task.await.expect("feed").expect("feed ok");
    let first = tap.await.expect("tap");
    engine_task.await.expect("engine").expect("engine ok");
    let last = out_tap.await.expect("out tap");
    tokio::time::timeout(Duration::from_secs(30), writer_task)
        .await
        .expect("the writer flushes")
        .expect("join")
        .expect("writer ok");
    sim.stop().await;
    assert_eq!(writer_stats.report().pending, 0);
    let windows: BTreeMap<String, (u64, u64)> = first
        .iter()
        .map(|(p, f)| (p.to_string(), (*f, last[p])))
        .collect();
    assert_eq!(windows.len(), 3);
    common::assert_table_matches_log(
        &db.pool,
        &read_trade_log(&dir.path().join("trades.jsonl")),
        &windows,
    )
    .await;
}
