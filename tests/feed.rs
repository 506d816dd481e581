//! The real feed client against the exchange simulator over real sockets: subscribe,
//! snapshots, updates and heartbeats; the reaction to each fault; 200 products over 10
//! connections within Coinbase's limits; product discovery; authentication fallback.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use spot_canvas::config::CoinbaseCredentials;
use spot_canvas::feed::health::{AuthState, ConnectionHealth, FeedReport};
use spot_canvas::feed::{Feed, FeedHealth, FeedSettings, ReconnectPolicy};
use spot_canvas::model::FeedEvent;
use spot_canvas::sim::faults::{FaultKind, FaultRequest, Scope, ScopeName};
use spot_canvas::sim::{SimConfig, Simulator};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

fn settings(sim: &Simulator, products: Option<&[&str]>) -> FeedSettings {
    FeedSettings {
        ws_url: sim.ws_url(),
        rest_url: sim.rest_url(),
        products: products.map(|p| p.iter().map(|s| (*s).to_owned()).collect()),
        shard_index: 0,
        shard_count: 1,
        products_per_connection: 20,
        credentials: None,
        reconnect: ReconnectPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(3),
            healthy_after: Duration::from_secs(30),
        },
        silence_timeout: Duration::from_secs(2),
        connect_interval: Duration::from_millis(1_100),
        message_interval: Duration::from_millis(150),
        refresh_interval: Duration::from_secs(1),
        max_frame_bytes: 1 << 20,
        channel_capacity: 256,
    }
}

struct Running {
    health: Arc<FeedHealth>,
    events: mpsc::Receiver<FeedEvent>,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start(settings: FeedSettings) -> Running {
        let (tx, events) = mpsc::channel(settings.channel_capacity);
        let feed = Feed::new(settings, tx);
        let health = feed.health();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(feed.run(cancel.clone()));
        Running {
            health,
            events,
            cancel,
            task,
        }
    }

    /// Events until `done` says so, failing after `wait`.
    async fn until(
        &mut self,
        wait: Duration,
        mut done: impl FnMut(&FeedEvent) -> bool,
    ) -> Vec<FeedEvent> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.events.recv()).await {
                Ok(Some(event)) => {
                    let stop = done(&event);
                    seen.push(event);
                    if stop {
                        return seen;
                    }
                }
                Ok(None) => panic!("the feed stopped"),
                Err(_) => panic!(
                    "condition not met within {wait:?}; {} events; health {:?}",
                    seen.len(),
                    self.health.report()
                ),
            }
        }
    }

    /// Waits until the health report satisfies `ok`.
    async fn health_until(
        &mut self,
        wait: Duration,
        ok: impl Fn(&FeedReport) -> bool,
    ) -> FeedReport {
        let deadline = Instant::now() + wait;
        loop {
            let report = self.health.report();
            if ok(&report) {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "health never got there: {report:?}"
            );
            // Keep draining so the feed never waits on a full channel.
            let _ = timeout(Duration::from_millis(50), self.events.recv()).await;
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        let Running {
            task, mut events, ..
        } = self;
        let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
        timeout(Duration::from_secs(10), task)
            .await
            .expect("the feed stops in time")
            .expect("no panic")
            .expect("no error");
        drain.await.expect("drained");
    }
}

fn connection(report: &FeedReport) -> &ConnectionHealth {
    report.connections.first().expect("one connection")
}

fn is_update(event: &FeedEvent) -> bool {
    matches!(event, FeedEvent::Trades(b) if !b.snapshot)
}

fn is_snapshot(event: &FeedEvent) -> bool {
    matches!(event, FeedEvent::Trades(b) if b.snapshot)
}

async fn sim(products: usize) -> Simulator {
    Simulator::start(SimConfig {
        products,
        trades_per_second: 10.0,
        history_minutes: 5,
        ..SimConfig::default()
    })
    .await
    .expect("sim starts")
}

#[tokio::test]
async fn snapshots_updates_candles_and_heartbeats_reach_the_channel() {
    let sim = sim(2).await;
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD", "ETH-USD"])));
    let mut snapshots = BTreeSet::new();
    let (mut updates, mut heartbeats, mut candles) = (0, 0, 0);
    let mut subscribed = BTreeSet::new();
    feed.until(Duration::from_secs(10), |e| {
        match e {
            FeedEvent::Subscribed { products, .. } => {
                assert!(snapshots.is_empty(), "announced before the first snapshot");
                subscribed.extend(products.iter().cloned());
            }
            FeedEvent::Trades(b) if b.snapshot => {
                assert_eq!(b.trades.len(), 100);
                snapshots.insert(b.trades[0].product_id.clone());
            }
            FeedEvent::Trades(_) => updates += 1,
            FeedEvent::Heartbeat { time, .. } => {
                assert!(time.is_some());
                heartbeats += 1;
            }
            FeedEvent::ExchangeCandles { candles: c, .. } => {
                assert!(!c.is_empty());
                candles += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
        snapshots.len() == 2 && updates >= 4 && heartbeats >= 2 && candles >= 1
    })
    .await;
    assert_eq!(
        subscribed, snapshots,
        "every product's first subscribe is announced"
    );
    let report = feed.health.report();
    assert_eq!(report.connected, 1);
    assert_eq!(report.auth, AuthState::Unauthenticated);
    let c = connection(&report);
    assert!(c.frames > 5 && c.trades >= 200);
    assert_eq!((c.reconnects, c.gaps, c.malformed), (0, 0, 0));
    feed.stop().await;
    assert_eq!(
        sim.state.stats.client_close_frames.get(),
        1,
        "the feed closes its socket politely"
    );
    sim.stop().await;
}

fn next_fault(after_frames: u64, kind: FaultKind) -> FaultRequest {
    FaultRequest {
        scope: Scope::Named(ScopeName::Next),
        after_frames,
        kind,
    }
}

/// Arms `fault` for the feed's first connection and checks that it reconnects, resubscribes
/// (a fresh snapshot) and trades keep flowing; returns the health report.
async fn reconnects_after(
    fault: FaultKind,
    settings_change: impl FnOnce(&mut FeedSettings),
) -> FeedReport {
    let sim = sim(1).await;
    sim.arm(next_fault(8, fault));
    let mut s = settings(&sim, Some(&["BTC-USD"]));
    settings_change(&mut s);
    let mut feed = Running::start(s);
    feed.until(Duration::from_secs(10), is_snapshot).await;
    let events = feed
        .until(Duration::from_secs(15), |e| {
            matches!(e, FeedEvent::Reconnected { .. })
        })
        .await;
    let Some(FeedEvent::Reconnected {
        products,
        disconnected_at,
        reconnected_at,
        ..
    }) = events.last()
    else {
        unreachable!()
    };
    assert_eq!(products, &vec!["BTC-USD".to_owned()]);
    assert!(disconnected_at < reconnected_at);
    feed.until(Duration::from_secs(10), is_snapshot).await;
    feed.until(Duration::from_secs(10), is_update).await;
    let report = feed.health.report();
    assert_eq!(connection(&report).reconnects, 1);
    assert_eq!(report.connected, 1);
    feed.stop().await;
    sim.stop().await;
    report
}

#[tokio::test]
async fn close_1000_leads_to_a_reconnect_and_resubscribe() {
    let report = reconnects_after(FaultKind::Close { code: 1000 }, |_| {}).await;
    let error = connection(&report).last_error.clone().expect("reason");
    assert!(error.contains("1000"), "{error}");
}

#[tokio::test]
async fn close_1001_leads_to_a_reconnect_and_resubscribe() {
    let report = reconnects_after(FaultKind::Close { code: 1001 }, |_| {}).await;
    let error = connection(&report).last_error.clone().expect("reason");
    assert!(error.contains("1001"), "{error}");
}

#[tokio::test]
async fn a_dropped_connection_leads_to_a_reconnect() {
    reconnects_after(FaultKind::Drop, |_| {}).await;
}

#[tokio::test]
async fn a_stalled_connection_is_abandoned_after_the_silence_timeout() {
    let started = Instant::now();
    let report = reconnects_after(FaultKind::Stall { secs: None }, |_| {}).await;
    let error = connection(&report).last_error.clone().expect("reason");
    assert!(error.contains("no frame"), "{error}");
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn an_oversized_frame_leads_to_a_reconnect() {
    let report = reconnects_after(FaultKind::Oversized { bytes: 2 << 20 }, |s| {
        s.max_frame_bytes = 1 << 20;
    })
    .await;
    let error = connection(&report).last_error.clone().expect("reason");
    assert!(error.contains("Message too long"), "{error}");
}

#[tokio::test]
async fn a_sequence_gap_is_reported_and_answered_with_a_fresh_snapshot() {
    let sim = sim(1).await;
    sim.arm(next_fault(8, FaultKind::SkipSequence { count: 5 }));
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD"])));
    feed.until(Duration::from_secs(10), is_snapshot).await;
    let events = feed
        .until(Duration::from_secs(10), |e| {
            matches!(e, FeedEvent::Gap { .. })
        })
        .await;
    let Some(FeedEvent::Gap {
        expected,
        got,
        products,
        since,
        at,
        ..
    }) = events.last()
    else {
        unreachable!()
    };
    assert_eq!(*got, *expected + 5);
    assert!(since <= at, "the window of lost frames: {since} .. {at}");
    assert_eq!(products, &vec!["BTC-USD".to_owned()]);
    feed.until(Duration::from_secs(10), is_snapshot).await;
    feed.until(Duration::from_secs(10), is_update).await;
    let report = feed.health.report();
    assert_eq!(connection(&report).gaps, 1);
    assert_eq!(
        connection(&report).reconnects,
        0,
        "a gap needs no reconnect"
    );
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_malformed_frame_is_skipped_and_counted() {
    let sim = sim(1).await;
    sim.arm(next_fault(8, FaultKind::Malformed));
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD"])));
    feed.health_until(Duration::from_secs(10), |r| {
        r.connections.first().is_some_and(|c| c.malformed == 1)
    })
    .await;
    feed.until(Duration::from_secs(10), is_update).await;
    feed.until(Duration::from_secs(10), is_update).await;
    let report = feed.health.report();
    assert_eq!(connection(&report).reconnects, 0);
    assert_eq!(
        connection(&report).gaps,
        0,
        "the malformed frame took no sequence number"
    );
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn backoff_grows_while_connections_keep_failing() {
    let sim = sim(1).await;
    sim.arm(FaultRequest {
        scope: Scope::Named(ScopeName::All),
        after_frames: 3,
        kind: FaultKind::Close { code: 1001 },
    });
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD"])));
    let report = feed
        .health_until(Duration::from_secs(30), |r| {
            r.connections
                .first()
                .is_some_and(|c| c.backoffs_ms.len() >= 4)
        })
        .await;
    let backoffs = &connection(&report).backoffs_ms;
    assert!(backoffs.windows(2).all(|w| w[1] >= w[0]), "{backoffs:?}");
    assert!(
        backoffs[3] >= 4 * 100,
        "doubling from a 200 ms base: {backoffs:?}"
    );
    assert!(backoffs[0] <= 200, "{backoffs:?}");
    feed.stop().await;
    sim.stop().await;
}

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
    let ids: Vec<String> = spot_canvas::sim::market::MarketSpec::product_ids(200);
    let mut s = settings(&sim, None);
    s.products = Some(ids.clone());
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
    let mut opened: Vec<_> = report
        .connections
        .iter()
        .map(|c| c.connected_at.expect("connected"))
        .collect();
    opened.sort();
    for pair in opened.windows(2) {
        let apart = pair[1] - pair[0];
        assert!(
            apart >= chrono::TimeDelta::milliseconds(950),
            "connects {apart} apart"
        );
    }
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
            .flat_map(|c| c.products.iter().cloned())
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

fn ec_credentials() -> (CoinbaseCredentials, String) {
    use p256::pkcs8::LineEnding;
    let pem = p256::SecretKey::from_slice(&[0x42; 32])
        .expect("key")
        .to_sec1_pem(LineEnding::LF)
        .expect("pem")
        .to_string();
    (
        CoinbaseCredentials {
            api_key: "organizations/o/apiKeys/k".into(),
            private_key: SecretString::from(pem.clone()),
        },
        pem,
    )
}

/// Collects every log line written while it is the thread's default subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn authenticated_run(reject_jwt: bool) -> (FeedReport, String, String) {
    let (credentials, pem) = ec_credentials();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let sim = Simulator::start(SimConfig {
        products: 1,
        trades_per_second: 10.0,
        history_minutes: 5,
        reject_jwt,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let mut s = settings(&sim, Some(&["BTC-USD"]));
    s.credentials = Some(credentials.clone());
    tracing::info!(settings = ?s, "feed settings");
    let mut feed = Running::start(s);
    feed.until(Duration::from_secs(10), is_snapshot).await;
    feed.until(Duration::from_secs(10), is_update).await;
    let report = feed.health.report();
    feed.stop().await;
    sim.stop().await;
    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    (report, logs, pem)
}

fn assert_no_secret(logs: &str, pem: &str) {
    assert!(!logs.is_empty(), "logs were captured");
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!logs.contains(line), "the private key leaked into the logs");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_accepted_key_authenticates_subscribes_and_never_reaches_the_logs() {
    let (report, logs, pem) = authenticated_run(false).await;
    assert_eq!(
        report.auth,
        AuthState::Authenticated {
            algorithm: "ES256".into()
        }
    );
    assert_no_secret(&logs, &pem);
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_key_falls_back_to_unauthenticated_and_says_so() {
    let (report, logs, pem) = authenticated_run(true).await;
    match &report.auth {
        AuthState::Failed { reason } => assert!(reason.contains("unauthenticated"), "{reason}"),
        other => panic!("expected a failed auth state, got {other:?}"),
    }
    assert!(logs.contains("continuing unauthenticated"));
    assert_no_secret(&logs, &pem);
}
