//! The feed and the engine together against the simulator: a reconnect's snapshot repeats
//! trades already applied (they change nothing) and brings the missed ones; absurd and
//! future trades the simulator slips into frames are rejected while their neighbours count;
//! every candle, its buy volume (the volume whose taker bought: the log records the maker's
//! side, as Coinbase sends it) included, then equals an aggregation of the simulator's trade
//! log written separately (tests/common), over the trade ids the simulator says the engine
//! could have seen.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rust_decimal::Decimal;
use spot_canvas::candles::{Engine, EngineReport, EngineSettings, EngineStats};
use spot_canvas::feed::{Feed, FeedHealth, FeedSettings, ReconnectPolicy};
use spot_canvas::model::FeedEvent;
use spot_canvas::model::{CandleUpdate, Granularity, SystemClock};
use spot_canvas_sim::faults::{FaultKind, FaultRequest, Scope, ScopeName};
use spot_canvas_sim::{SimConfig, Simulator};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Deadline of every wait: generous for a loaded 2-core CI.
const WAIT: Duration = Duration::from_secs(30);

/// What the tap between feed and engine saw.
#[derive(Debug, Default)]
struct Tapped {
    /// The oldest trade id of the first snapshot: the oldest the engine can know.
    first_snapshot_min: Option<u64>,
    reconnected: bool,
    snapshots: usize,
}

/// Feed and engine running against `sim`, with a tap between them.
struct Pipeline {
    cancel: CancellationToken,
    health: Arc<FeedHealth>,
    stats: Arc<EngineStats>,
    tapped: Arc<Mutex<Tapped>>,
    feed: JoinHandle<anyhow::Result<()>>,
    engine: JoinHandle<anyhow::Result<()>>,
    tap: JoinHandle<()>,
    collector: JoinHandle<Vec<CandleUpdate>>,
}

fn start(sim: &Simulator) -> Pipeline {
    let settings = FeedSettings {
        reconnect: ReconnectPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(2),
            healthy_after: Duration::from_secs(30),
        },
        products: Some(vec![spot_canvas::model::ProductId::from_static("BTC-USD")]),
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
    let feed = tokio::spawn(feed.run(cancel.clone()));
    let engine = tokio::spawn(engine.run(CancellationToken::new()));
    let tapped = Arc::new(Mutex::new(Tapped::default()));
    let tap = tokio::spawn({
        let tapped = tapped.clone();
        async move {
            while let Some(event) = feed_rx.recv().await {
                {
                    let mut tapped = tapped.lock().expect("tap lock");
                    match &event {
                        FeedEvent::Trades(b) if b.snapshot => {
                            tapped.snapshots += 1;
                            let min = b.trades.iter().map(|t| t.trade_id.0).min();
                            tapped.first_snapshot_min = tapped.first_snapshot_min.or(min);
                        }
                        FeedEvent::Reconnected { .. } => tapped.reconnected = true,
                        _ => {}
                    }
                }
                if engine_tx.send(event).await.is_err() {
                    break;
                }
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
    Pipeline {
        cancel,
        health,
        stats,
        tapped,
        feed,
        engine,
        tap,
        collector,
    }
}

impl Pipeline {
    fn first_seen(&self) -> Option<u64> {
        self.tapped.lock().expect("tap lock").first_snapshot_min
    }

    /// Halts the simulator's market, waits until the engine has applied every logged trade
    /// from the first one it could know, then stops feed and engine. Returns the range of
    /// trade ids the engine saw, taken from the simulator's log, its updates, its report and
    /// what the tap saw.
    async fn finish(
        self,
        sim: &Simulator,
        log: &std::path::Path,
    ) -> (
        std::ops::RangeInclusive<u64>,
        Vec<CandleUpdate>,
        EngineReport,
        Tapped,
    ) {
        sim.state.exchange.set_paused(true);
        let first_seen = self.first_seen().expect("a snapshot");
        let stats = self.stats.clone();
        common::wait_for("the engine to apply every logged trade", WAIT, || {
            let logged = common::read_trade_log(log)
                .iter()
                .filter(|t| t.trade_id >= first_seen)
                .count() as u64;
            let applied = stats.report().trades;
            async move { applied == logged }
        })
        .await;
        let last_logged = common::read_trade_log(log)
            .iter()
            .map(|t| t.trade_id)
            .max()
            .expect("trades logged");
        self.cancel.cancel();
        self.feed.await.expect("feed").expect("feed ok");
        self.tap.await.expect("tap");
        self.engine.await.expect("engine").expect("engine ok");
        let updates = self.collector.await.expect("collector");
        let tapped = std::mem::take(&mut *self.tapped.lock().expect("tap lock"));
        (
            first_seen..=last_logged,
            updates,
            self.stats.report(),
            tapped,
        )
    }
}

/// The newest update of each candle equals the aggregation of the logged trades in `seen`,
/// its buy volume too. Returns how many candles had both taker buys and taker sells.
fn assert_candles_match_the_log(
    updates: Vec<CandleUpdate>,
    log: &std::path::Path,
    seen: std::ops::RangeInclusive<u64>,
) -> usize {
    let mut latest: BTreeMap<(Granularity, i64), CandleUpdate> = BTreeMap::new();
    for u in updates {
        let key = (u.candle.granularity, u.candle.start.timestamp());
        if latest.get(&key).is_none_or(|e| e.version() < u.version()) {
            latest.insert(key, u);
        }
    }
    let log = common::read_trade_log(log);
    let in_range: Vec<&common::LoggedTrade> =
        log.iter().filter(|t| seen.contains(&t.trade_id)).collect();
    let expected = common::aggregate(&in_range);
    let buy_volumes = common::buy_volumes(&in_range);
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
        let buy = buy_volumes[&(c.product_id.to_string(), *g, *start)];
        assert_eq!(c.buy_volume, Some(buy), "{g} {start}: buy volume");
    }
    buy_volumes
        .iter()
        .filter(|(key, buy)| **buy > Decimal::ZERO && **buy < expected[*key].volume)
        .count()
}

/// One product trading 8 times a second, every trade logged to `log`.
async fn logging_sim(log: &std::path::Path) -> Simulator {
    Simulator::start(SimConfig {
        products: 1,
        trades_per_second: 8.0,
        history_minutes: 3,
        trade_log: Some(log.to_owned()),
        ..SimConfig::default()
    })
    .await
    .expect("sim")
}

#[tokio::test]
async fn a_reconnect_snapshot_is_deduplicated_and_candles_match_the_trade_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = logging_sim(&log).await;
    sim.arm(FaultRequest {
        scope: Scope::Named(ScopeName::Next),
        after_frames: 25,
        kind: FaultKind::Close { code: 1001 },
    });
    let pipeline = start(&sim);
    // Run until the reconnect happened and trades flowed for a while after it.
    let health = pipeline.health.clone();
    common::wait_for("a reconnect and 100 trades after it", WAIT, || {
        let report = health.report();
        let c = report.connections.first().cloned();
        async move { c.is_some_and(|c| c.reconnects == 1 && c.trades > 150 + 100) }
    })
    .await;
    let (seen, updates, report, tapped) = pipeline.finish(&sim, &log).await;
    sim.stop().await;
    assert!(tapped.reconnected);
    assert_eq!(tapped.snapshots, 2, "one snapshot per connection");
    assert!(
        report.duplicates > 50,
        "the second snapshot repeats applied trades: {report:?}"
    );
    assert_eq!(report.too_late, 0);
    assert_candles_match_the_log(updates, &log, seen);
}

#[tokio::test]
async fn absurd_and_future_trades_from_the_exchange_are_rejected_and_the_rest_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = logging_sim(&log).await;
    // Several of each, a few frames apart, into frames with normal trades.
    for after_frames in [5, 15, 30] {
        sim.arm(FaultRequest {
            scope: Scope::Named(ScopeName::All),
            after_frames,
            kind: FaultKind::AbsurdSize { size: None },
        });
        sim.arm(FaultRequest {
            scope: Scope::Named(ScopeName::All),
            after_frames: after_frames + 2,
            kind: FaultKind::FutureTrade { time: None },
        });
    }
    let pipeline = start(&sim);
    let stats = pipeline.stats.clone();
    common::wait_for("every injected trade rejected", WAIT, || {
        let r = stats.report();
        async move { r.rejected_overflow >= 3 && r.rejected_future >= 3 }
    })
    .await;
    let (seen, updates, report, _) = pipeline.finish(&sim, &log).await;
    let injected = sim.state.injected.all();
    sim.stop().await;
    let count = |fault: &str| injected.iter().filter(|t| t.fault == fault).count() as u64;
    assert_eq!(count("absurd_size"), 3, "{injected:?}");
    assert_eq!(count("future_trade"), 3, "{injected:?}");
    assert_eq!(report.rejected_overflow, 3, "{report:?}");
    assert_eq!(report.rejected_future, 3, "{report:?}");
    assert_candles_match_the_log(updates, &log, seen);
}

#[tokio::test]
async fn every_candles_buy_volume_is_the_volume_the_trade_logs_takers_bought() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = logging_sim(&log).await;
    let pipeline = start(&sim);
    let stats = pipeline.stats.clone();
    // The snapshot's 100 trades and some live ones.
    common::wait_for("200 trades applied", WAIT, || {
        let applied = stats.report().trades;
        async move { applied >= 200 }
    })
    .await;
    let (seen, updates, report, _) = pipeline.finish(&sim, &log).await;
    sim.stop().await;
    assert_eq!(report.too_late, 0, "{report:?}");
    // The log's side is the maker's: a candle whose buy volume counted the maker buys instead
    // would show the volume less ours, which differs wherever both sides traded.
    let mixed = assert_candles_match_the_log(updates, &log, seen);
    assert!(
        mixed >= Granularity::ALL.len(),
        "candles with taker buys and taker sells in every granularity: {mixed}"
    );
}
