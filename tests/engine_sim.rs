//! The feed and the engine together against the simulator: a reconnect's snapshot repeats
//! trades already applied (they change nothing) and brings the missed ones; every candle then
//! equals an aggregation of the simulator's trade log written separately (tests/common).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use spot_canvas::candles::{Engine, EngineSettings};
use spot_canvas::feed::{Feed, FeedSettings, ReconnectPolicy};
use spot_canvas::model::FeedEvent;
use spot_canvas::model::{CandleUpdate, Granularity, SystemClock};
use spot_canvas::sim::faults::{FaultKind, FaultRequest, Scope, ScopeName};
use spot_canvas::sim::{SimConfig, Simulator};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_reconnect_snapshot_is_deduplicated_and_candles_match_the_trade_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = Simulator::start(SimConfig {
        products: 1,
        trades_per_second: 8.0,
        history_minutes: 3,
        trade_log: Some(log.clone()),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    sim.arm(FaultRequest {
        scope: Scope::Named(ScopeName::Next),
        after_frames: 25,
        kind: FaultKind::Close { code: 1001 },
    });
    let settings = FeedSettings {
        reconnect: ReconnectPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(2),
            healthy_after: Duration::from_secs(30),
        },
        products: Some(vec!["BTC-USD".into()]),
        ..FeedSettings::from_config(
            &spot_canvas::config::Config::from_lookup(|name| match name {
                "COINBASE_WS_URL" => Some(sim.ws_url()),
                "COINBASE_REST_URL" => Some(sim.rest_url()),
                _ => None,
            })
            .expect("config"),
        )
    };
    let (feed_tx, mut feed_rx) = mpsc::channel(64);
    let (engine_tx, engine_rx) = mpsc::channel(64);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<CandleUpdate>>(64);
    let feed = Feed::new(settings, feed_tx);
    let health = feed.health();
    let engine = Engine::new(
        EngineSettings::default(),
        Arc::new(SystemClock),
        engine_rx,
        out_tx,
    );
    let stats = engine.stats();
    let cancel = CancellationToken::new();
    let feed_task = tokio::spawn(feed.run(cancel.clone()));
    let engine_task = tokio::spawn(engine.run(CancellationToken::new()));
    // A tap between feed and engine: remembers the oldest trade id the engine can know.
    let tap = tokio::spawn(async move {
        let mut first_snapshot_min: Option<u64> = None;
        let mut reconnected = false;
        let mut snapshots = 0;
        while let Some(event) = feed_rx.recv().await {
            match &event {
                FeedEvent::Trades(b) if b.snapshot => {
                    snapshots += 1;
                    let min = b.trades.iter().map(|t| t.trade_id.0).min();
                    first_snapshot_min = first_snapshot_min.or(min);
                }
                FeedEvent::Reconnected { .. } => reconnected = true,
                _ => {}
            }
            if engine_tx.send(event).await.is_err() {
                break;
            }
        }
        (first_snapshot_min, reconnected, snapshots)
    });
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(batch) = out_rx.recv().await {
            all.extend(batch);
        }
        all
    });

    // Run until the reconnect happened and trades flowed for a while after it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let report = health.report();
        let c = report.connections.first();
        if c.is_some_and(|c| c.reconnects == 1 && c.trades > 150 + 100) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{report:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    feed_task.await.expect("feed").expect("feed ok");
    let (first_min, reconnected, snapshots) = tap.await.expect("tap");
    engine_task.await.expect("engine").expect("engine ok");
    let updates = collector.await.expect("collector");
    sim.stop().await;
    assert!(reconnected);
    assert_eq!(snapshots, 2, "one snapshot per connection");
    let report = stats.report();
    assert!(
        report.duplicates > 50,
        "the second snapshot repeats applied trades: {report:?}"
    );
    assert_eq!(report.too_late, 0);

    // The newest update of each candle.
    let mut latest: BTreeMap<(Granularity, i64), CandleUpdate> = BTreeMap::new();
    for u in updates {
        let key = (u.candle.granularity, u.candle.start.timestamp());
        if latest.get(&key).is_none_or(|e| e.version() < u.version()) {
            latest.insert(key, u);
        }
    }
    let last_seen = latest
        .values()
        .map(|u| u.version().last_trade_id.0)
        .max()
        .expect("updates");
    let first_seen = first_min.expect("a snapshot");

    // The aggregation of the log over the ids the engine could have seen.
    let log = common::read_trade_log(&log);
    let seen: Vec<&common::LoggedTrade> = log
        .iter()
        .filter(|t| (first_seen..=last_seen).contains(&t.trade_id))
        .collect();
    let expected = common::aggregate(&seen);
    assert_eq!(
        latest.keys().copied().collect::<Vec<_>>(),
        expected
            .keys()
            .map(|(_, g, s)| (*g, *s))
            .collect::<Vec<_>>()
    );
    for ((_, g, start), e) in &expected {
        let c = &latest[&(*g, *start)].candle;
        let got = common::Ohlcv {
            open: c.open,
            high: c.high,
            low: c.low,
            close: c.close,
            volume: c.volume,
            count: c.trade_count.expect("count"),
        };
        assert_eq!(&got, e, "{g} {start}");
    }
}
