//! Products and subscriptions: Coinbase's connection limits, discovery, refused products and frames
//! of several products.

use super::*;

#[tokio::test]
async fn two_hundred_products_over_ten_connections_stay_within_coinbase_limits() {
    let sim = Simulator::start(SimConfig {
        products: 200,
        trades_per_second: 0.5,
        history_minutes: 2,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let ids: Vec<String> = spot_canvas_sim::market::MarketSpec::product_ids(200);
    let mut s = settings(&sim, None);
    s.products = Some(ids.iter().map(|s| s.parse().expect("an id")).collect());
    let mut feed = Running::start(s);
    let mut snapshots = BTreeSet::new();
    feed.until(Duration::from_secs(30), |e| {
        if let FeedEvent::Trades(b) = e
            && b.snapshot
        {
            snapshots.insert(b.trades[0].product_id.clone());
        }
        snapshots.len() == 200
    })
    .await;
    let report = feed.health.report();
    assert_eq!(report.connections.len(), 10);
    assert_eq!(report.connected, 10);
    assert!(report.connections.iter().all(|c| c.products.len() == 20));
    // What the feed controls is the spacing of its connect attempts (the connect pacer, one
    // per `connect_interval`); the simulator enforces Coinbase's limit of 8 connects a second
    // per address and counts every refusal, so no refusal is the assertion. On top, the ten
    // connects cannot have come faster than nine intervals allow (handshakes under load only
    // spread them more; one interval of margin for the first handshake's latency).
    let opened: Vec<chrono::DateTime<chrono::Utc>> = sim
        .state
        .connections()
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| {
            chrono::DateTime::parse_from_rfc3339(c["opened"].as_str().expect("opened"))
                .expect("time")
                .with_timezone(&chrono::Utc)
        })
        .collect();
    assert_eq!(opened.len(), 10);
    let span = *opened.iter().max().expect("ten") - *opened.iter().min().expect("ten");
    assert!(
        span >= chrono::TimeDelta::milliseconds(8 * 1_100),
        "ten connects within {span}"
    );
    let stats = &sim.state.stats;
    assert_eq!(stats.connect_limit_hits.get(), 0);
    assert_eq!(stats.message_limit_hits.get(), 0);
    assert_eq!(stats.subscribe_timeouts.get(), 0);
    assert_eq!(stats.unknown_product_errors.get(), 0);
    assert_eq!(stats.connections_total.get(), 10);
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn products_are_discovered_and_follow_listings() {
    let sim = sim(3).await;
    let mut feed = Running::start(settings(&sim, None));
    let products = |r: &FeedReport| -> BTreeSet<String> {
        r.connections
            .iter()
            .flat_map(|c| c.products.iter().map(|p| p.to_string()))
            .collect()
    };
    let report = feed
        .health_until(Duration::from_secs(10), |r| r.connected == 1)
        .await;
    assert_eq!(
        products(&report),
        BTreeSet::from(["BTC-USD".into(), "ETH-USD".into(), "SOL-USD".into()]),
        "aliases, delisted, disabled and futures left out"
    );
    let admin = reqwest::Client::new();
    let added = admin
        .post(format!("http://{}/sim/products", sim.addr))
        .json(&json!({"product_id": "NEW-USD"}))
        .send()
        .await
        .expect("admin");
    assert_eq!(added.status(), 201);
    feed.until(
        Duration::from_secs(15),
        |e| matches!(e, FeedEvent::Trades(b) if b.trades[0].product_id == "NEW-USD"),
    )
    .await;
    let delisted = admin
        .put(format!("http://{}/sim/products/SOL-USD/listing", sim.addr))
        .json(&json!({"status": "delisted", "trading_disabled": true}))
        .send()
        .await
        .expect("admin");
    assert_eq!(delisted.status(), 204);
    feed.health_until(Duration::from_secs(10), |r| {
        products(r) == BTreeSet::from(["BTC-USD".into(), "ETH-USD".into(), "NEW-USD".into()])
    })
    .await;
    feed.stop().await;
    sim.stop().await;
}

/// A logged simulator of three products whose connections refuse every subscribe naming
/// ETH-USD, and a feed of the three that tries refused products again after `retry`.
async fn refusing_eth(
    retry: Duration,
) -> (Simulator, tempfile::TempDir, std::path::PathBuf, Running) {
    let (sim, dir, log) = logged_sim(SimConfig {
        products: 3,
        trades_per_second: 10.0,
        history_minutes: 2,
        ..SimConfig::default()
    })
    .await;
    sim.arm(FaultRequest {
        scope: Scope::Named(ScopeName::All),
        after_frames: 0,
        kind: FaultKind::RefuseSubscribe {
            product_id: "ETH-USD".into(),
        },
    });
    let mut settings = settings(&sim, Some(&["BTC-USD", "ETH-USD", "SOL-USD"]));
    settings.refresh_interval = retry;
    let feed = Running::start(settings);
    (sim, dir, log, feed)
}

#[tokio::test]
async fn a_refused_product_is_dropped_and_the_others_keep_flowing_whole() {
    // No retry of the refused product within this test.
    let (sim, _dir, log, mut feed) = refusing_eth(Duration::from_secs(600)).await;
    let mut delivered = Delivered::default();
    let mut gap = None;
    let mut updates = BTreeMap::<String, usize>::new();
    feed.until(Duration::from_secs(20), |e| {
        delivered.take(e);
        match e {
            FeedEvent::Gap { products, .. } => gap = Some(products.clone()),
            FeedEvent::Reconnected { .. } => panic!("no reconnect needed: {e:?}"),
            FeedEvent::Trades(b) => {
                assert!(
                    b.trades.iter().all(|t| t.product_id != "ETH-USD"),
                    "the refused product sends nothing"
                );
                if !b.snapshot {
                    for t in &b.trades {
                        *updates.entry(t.product_id.to_string()).or_default() += 1;
                    }
                }
            }
            _ => {}
        }
        ["BTC-USD", "SOL-USD"]
            .iter()
            .all(|p| updates.get(*p).is_some_and(|n| *n >= 10))
    })
    .await;
    assert_eq!(
        gap,
        Some(vec![
            spot_canvas::model::ProductId::from_static("BTC-USD"),
            spot_canvas::model::ProductId::from_static("SOL-USD")
        ]),
        "a window for the products whose subscribe was refused with it"
    );
    let report = feed.health.report();
    let refused: Vec<&str> = report
        .refused_products
        .iter()
        .map(|r| r.product_id.as_str())
        .collect();
    assert_eq!(refused, vec!["ETH-USD"]);
    assert_eq!(
        connection(&report).products,
        vec!["BTC-USD".to_owned(), "SOL-USD".to_owned()]
    );
    let log = common::read_trade_log(&log);
    for product in ["BTC-USD", "SOL-USD"] {
        delivered.assert_whole(&log, product);
    }
    assert!(sim.state.stats.refused_subscribes.get() >= 1);
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_refused_product_is_tried_again_after_a_cool_down() {
    // The connection refuses ETH-USD for good: every try is refused.
    let (sim, _dir, _log, mut feed) = refusing_eth(Duration::from_secs(1)).await;
    let mut others = 0;
    let refused = || sim.state.stats.refused_subscribes.get();
    feed.until(Duration::from_secs(60), |e| {
        match e {
            FeedEvent::Reconnected { .. } => panic!("no reconnect needed: {e:?}"),
            FeedEvent::Trades(b) => {
                assert!(b.trades.iter().all(|t| t.product_id != "ETH-USD"));
                others += b.trades.len();
            }
            _ => {}
        }
        // Refused, then tried again (and refused again) after each cool-down.
        refused() >= 3
    })
    .await;
    let others_then = others;
    feed.until(Duration::from_secs(30), |e| {
        if let FeedEvent::Trades(b) = e {
            others += b.trades.len();
        }
        others >= others_then + 20
    })
    .await;
    assert!(
        feed.health
            .report()
            .refused_products
            .iter()
            .any(|r| r.product_id == "ETH-USD"),
        "/health names the refused product"
    );
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_frame_of_several_products_delivers_every_trade() {
    let products = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD"];
    let shards: BTreeSet<usize> = products
        .iter()
        .map(|p| spot_canvas::candles::shard_of(p))
        .collect();
    assert!(shards.len() > 1, "the products span several engine shards");
    let (sim, _dir, log) = logged_sim(SimConfig {
        products: 4,
        trades_per_second: 10.0,
        history_minutes: 2,
        multi_product_frames: true,
        ..SimConfig::default()
    })
    .await;
    let mut feed = Running::start(settings(&sim, Some(&products)));
    let mut delivered = Delivered::default();
    feed.until(Duration::from_secs(20), |e| {
        no_window(e);
        delivered.take(e);
        delivered.multi_product_batches >= 10
    })
    .await;
    let log = common::read_trade_log(&log);
    for product in products {
        delivered.assert_whole(&log, product);
    }
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn multi_product_frames_through_the_engine_match_the_trade_log() {
    use spot_canvas::candles::{Engine, EngineSettings};
    use spot_canvas::model::{CandleUpdate, Granularity, SystemClock};

    let products = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD"];
    let (sim, _dir, log) = logged_sim(SimConfig {
        products: 4,
        trades_per_second: 10.0,
        history_minutes: 2,
        multi_product_frames: true,
        ..SimConfig::default()
    })
    .await;
    let (feed_tx, mut feed_rx) = mpsc::channel(64);
    let (engine_tx, engine_rx) = mpsc::channel(64);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<CandleUpdate>>(64);
    let feed = Feed::new(settings(&sim, Some(&products)), feed_tx);
    let engine = Engine::new(
        EngineSettings::default(),
        Arc::new(SystemClock),
        engine_rx,
        out_tx,
    );
    let cancel = CancellationToken::new();
    let feed_task = tokio::spawn(feed.run(cancel.clone()));
    let engine_task = tokio::spawn(engine.run(CancellationToken::new()));
    // A tap between feed and engine: what the engine was given.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<FeedEvent>();
    let tap = tokio::spawn(async move {
        while let Some(event) = feed_rx.recv().await {
            if seen_tx.send(event.clone()).is_err() || engine_tx.send(event).await.is_err() {
                break;
            }
        }
    });
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(batch) = out_rx.recv().await {
            all.extend(batch);
        }
        all
    });
    let mut delivered = Delivered::default();
    common::wait_for("multi-product frames", Duration::from_secs(30), || {
        while let Ok(event) = seen_rx.try_recv() {
            no_window(&event);
            delivered.take(&event);
        }
        let done = delivered.multi_product_batches >= 10
            && products
                .iter()
                .all(|p| delivered.ids.get(*p).is_some_and(|ids| ids.len() > 120));
        async move { done }
    })
    .await;
    cancel.cancel();
    feed_task.await.expect("feed").expect("feed ok");
    tap.await.expect("tap");
    while let Ok(event) = seen_rx.try_recv() {
        delivered.take(&event);
    }
    engine_task.await.expect("engine").expect("engine ok");
    let updates = collector.await.expect("collector");
    sim.stop().await;

    // The newest update of each candle, and per product the newest trade the engine applied.
    let mut latest: BTreeMap<(String, Granularity, i64), CandleUpdate> = BTreeMap::new();
    for u in updates {
        let key = (
            u.candle.product_id.to_string(),
            u.candle.granularity,
            u.candle.start.timestamp(),
        );
        if latest.get(&key).is_none_or(|e| e.version() < u.version()) {
            latest.insert(key, u);
        }
    }
    let mut last_seen: BTreeMap<&str, u64> = BTreeMap::new();
    for u in latest.values() {
        let e = last_seen.entry(u.candle.product_id.as_str()).or_default();
        *e = (*e).max(u.last_trade_id.0);
    }
    // The shared aggregation of the log over the trades the engine was given.
    let log = common::read_trade_log(&log);
    let given: Vec<&common::LoggedTrade> = log
        .iter()
        .filter(|t| {
            let first = delivered.ids.get(&t.product_id).and_then(|ids| ids.first());
            let last = last_seen.get(t.product_id.as_str());
            matches!((first, last), (Some(f), Some(l)) if (*f..=*l).contains(&t.trade_id))
        })
        .collect();
    let expected = common::aggregate(&given);
    assert_eq!(
        latest.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, e) in &expected {
        let c = &latest[key].candle;
        let got = common::Ohlcv {
            open: c.open,
            high: c.high,
            low: c.low,
            close: c.close,
            volume: c.volume,
            count: c.trade_count.expect("count"),
        };
        assert_eq!(&got, e, "{key:?}");
    }
}
