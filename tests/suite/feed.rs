//! The real feed client against the exchange simulator over real sockets: subscribe,
//! snapshots, updates and heartbeats; the reaction to each fault; 200 products over 10
//! connections within Coinbase's limits; product discovery; authentication (the simulator
//! verifies the token) and its fallback; malformed trades, sequences going backwards and
//! refused products; multi-product frames; backpressure.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use spot_canvas::config::CoinbaseCredentials;
use spot_canvas::feed::health::{AuthState, ConnectionHealth, FeedReport};
use spot_canvas::feed::{Feed, FeedHealth, FeedSettings, ReconnectPolicy};
use spot_canvas::model::FeedEvent;
use spot_canvas_sim::faults::{FaultKind, FaultRequest, Scope, ScopeName, TradeDefect};
use spot_canvas_sim::{SimConfig, Simulator};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

fn settings(sim: &Simulator, products: Option<&[&str]>) -> FeedSettings {
    FeedSettings {
        ws_url: sim.ws_url(),
        rest_url: sim.rest_url(),
        products: products.map(|p| p.iter().map(|s| s.parse().expect("an id")).collect()),
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
    let sim = sim(1).await;
    sim.arm(next_fault(8, FaultKind::Stall { secs: None }));
    let s = settings(&sim, Some(&["BTC-USD"]));
    let silence = chrono::TimeDelta::from_std(s.silence_timeout).expect("delta");
    let mut feed = Running::start(s);
    let events = feed
        .until(Duration::from_secs(20), |e| {
            matches!(e, FeedEvent::Reconnected { .. })
        })
        .await;
    let Some(FeedEvent::Reconnected {
        disconnected_at,
        reconnected_at,
        ..
    }) = events.last()
    else {
        unreachable!()
    };
    // `disconnected_at` is the last frame before the stall: the silence is measured from
    // there, so the reconnect cannot come sooner than the timeout after it.
    assert!(
        *reconnected_at - *disconnected_at >= silence,
        "reconnected {} after the stall began",
        *reconnected_at - *disconnected_at
    );
    let report = feed.health.report();
    let error = connection(&report).last_error.clone().expect("reason");
    assert!(error.contains("no frame"), "{error}");
    feed.until(Duration::from_secs(10), is_update).await;
    feed.stop().await;
    sim.stop().await;
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
async fn a_malformed_frame_that_took_a_sequence_number_is_no_gap() {
    // Well-formed JSON with a bad body (a heartbeat counter that is not a number) and a
    // `sequence_num`: the frame is skipped, but its number is counted, so the next frame is
    // not a gap and nothing is resubscribed.
    let sim = sim(1).await;
    sim.arm(next_fault(8, FaultKind::BadHeartbeat));
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD"])));
    let mut seen = feed.until(Duration::from_secs(10), is_snapshot).await;
    let report = feed
        .health_until(Duration::from_secs(10), |r| {
            r.connections.first().is_some_and(|c| c.malformed == 1)
        })
        .await;
    let trades_then = connection(&report).trades;
    // Trades of frames after the bad one count (the frame right after it was checked for a
    // gap before any of them).
    let report = feed
        .health_until(Duration::from_secs(10), |r| {
            r.connections
                .first()
                .is_some_and(|c| c.trades > trades_then)
        })
        .await;
    seen.extend(feed.until(Duration::from_secs(10), is_update).await);
    let c = connection(&report);
    assert_eq!(c.malformed, 1);
    assert_eq!(c.gaps, 0, "the bad frame's number was counted");
    assert_eq!(c.sequence_resets, 0);
    assert_eq!(c.reconnects, 0);
    assert!(
        !seen.iter().any(|e| matches!(e, FeedEvent::Gap { .. })),
        "no gap reported"
    );
    assert_eq!(
        seen.iter().filter(|e| is_snapshot(e)).count(),
        1,
        "no resubscribe (which would bring a fresh snapshot)"
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

/// What the simulator does with the feed's tokens.
#[derive(Clone, Copy)]
enum SimAuth {
    /// Verifies them with the public half of the feed's key.
    VerifyWithTheKey,
    /// Verifies them with the public half of another key.
    VerifyWithAnotherKey,
    /// Refuses every token.
    RejectAll,
}

fn public_pem(byte: u8) -> String {
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    p256::SecretKey::from_slice(&[byte; 32])
        .expect("key")
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem")
}

async fn authenticated_run(auth: SimAuth) -> (FeedReport, String, String, Simulator) {
    let (credentials, pem) = ec_credentials();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let public_key = match auth {
        SimAuth::VerifyWithTheKey => Some(public_pem(0x42)),
        SimAuth::VerifyWithAnotherKey => Some(public_pem(0x43)),
        SimAuth::RejectAll => None,
    };
    let sim = Simulator::start(SimConfig {
        products: 1,
        trades_per_second: 10.0,
        history_minutes: 5,
        reject_jwt: matches!(auth, SimAuth::RejectAll),
        jwt_key_name: public_key.as_ref().map(|_| credentials.api_key.clone()),
        jwt_public_key: public_key,
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
    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    (report, logs, pem, sim)
}

fn assert_no_secret(logs: &str, pem: &str) {
    assert!(!logs.is_empty(), "logs were captured");
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!logs.contains(line), "the private key leaked into the logs");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_accepted_key_authenticates_subscribes_and_never_reaches_the_logs() {
    let (report, logs, pem, sim) = authenticated_run(SimAuth::VerifyWithTheKey).await;
    assert_eq!(
        report.auth,
        AuthState::Authenticated {
            algorithm: "ES256".into()
        }
    );
    // The simulator checked every subscribe's signature and claims with the public key.
    let stats = &sim.state.stats;
    assert!(
        stats.jwt_accepted.get() >= 3,
        "{}",
        stats.jwt_accepted.get()
    );
    assert_eq!(stats.jwt_rejected.get(), 0);
    assert_no_secret(&logs, &pem);
    sim.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_token_signed_with_the_wrong_key_is_refused_and_the_feed_goes_on_unauthenticated() {
    let (report, logs, pem, sim) = authenticated_run(SimAuth::VerifyWithAnotherKey).await;
    match &report.auth {
        AuthState::Failed { reason } => assert!(reason.contains("unauthenticated"), "{reason}"),
        other => panic!("expected a failed auth state, got {other:?}"),
    }
    let stats = &sim.state.stats;
    assert!(stats.jwt_rejected.get() >= 1);
    assert_eq!(stats.jwt_accepted.get(), 0);
    assert_no_secret(&logs, &pem);
    sim.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_key_falls_back_to_unauthenticated_and_says_so() {
    let (report, logs, pem, sim) = authenticated_run(SimAuth::RejectAll).await;
    match &report.auth {
        AuthState::Failed { reason } => assert!(reason.contains("unauthenticated"), "{reason}"),
        other => panic!("expected a failed auth state, got {other:?}"),
    }
    assert!(logs.contains("continuing unauthenticated"));
    assert_no_secret(&logs, &pem);
    sim.stop().await;
}

/// A simulator with a trade log, for tests that check every trade arrived.
async fn logged_sim(config: SimConfig) -> (Simulator, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = Simulator::start(SimConfig {
        trade_log: Some(log.clone()),
        ..config
    })
    .await
    .expect("sim starts");
    (sim, dir, log)
}

/// Trade ids delivered per product, and per product the highest id of its newest snapshot
/// (trades after it arrive as updates).
#[derive(Default)]
struct Delivered {
    ids: BTreeMap<String, BTreeSet<u64>>,
    snapshot_top: BTreeMap<String, u64>,
    multi_product_batches: usize,
}

impl Delivered {
    fn take(&mut self, event: &FeedEvent) {
        let FeedEvent::Trades(batch) = event else {
            return;
        };
        let products: BTreeSet<&str> = batch.trades.iter().map(|t| t.product_id.as_str()).collect();
        if products.len() > 1 {
            self.multi_product_batches += 1;
        }
        for t in &batch.trades {
            self.ids
                .entry(t.product_id.to_string())
                .or_default()
                .insert(t.trade_id.0);
            if batch.snapshot {
                let top = self
                    .snapshot_top
                    .entry(t.product_id.to_string())
                    .or_default();
                *top = (*top).max(t.trade_id.0);
            }
        }
    }

    /// Checks that every logged trade of `product` after its snapshot, up to the newest one
    /// delivered, was delivered; returns how many that were.
    fn assert_whole(&self, log: &[common::LoggedTrade], product: &str) -> usize {
        let ids = &self.ids[product];
        let from = self.snapshot_top[product];
        let to = *ids.last().expect("trades");
        let expected: Vec<u64> = log
            .iter()
            .filter(|t| t.product_id == product && t.trade_id > from && t.trade_id <= to)
            .map(|t| t.trade_id)
            .collect();
        let missing: Vec<u64> = expected
            .iter()
            .copied()
            .filter(|id| !ids.contains(id))
            .collect();
        assert!(missing.is_empty(), "{product}: trades lost: {missing:?}");
        expected.len()
    }
}

fn no_window(event: &FeedEvent) {
    assert!(
        !matches!(event, FeedEvent::Gap { .. } | FeedEvent::Reconnected { .. }),
        "unexpected {event:?}"
    );
}

#[tokio::test]
async fn one_malformed_trade_costs_that_trade_alone_and_no_resubscribe() {
    let (sim, _dir, log) = logged_sim(SimConfig {
        products: 1,
        trades_per_second: 20.0,
        history_minutes: 2,
        ..SimConfig::default()
    })
    .await;
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD"])));
    let mut delivered = Delivered::default();
    for event in feed.until(Duration::from_secs(10), is_snapshot).await {
        delivered.take(&event);
    }
    sim.arm(next_fault(
        0,
        FaultKind::BadTrade {
            defect: TradeDefect::NonNumericId,
        },
    ));
    // Until the frame with the bad trade was read, and a few updates after it.
    let mut after = 0;
    let health = feed.health.clone();
    feed.until(Duration::from_secs(15), |e| {
        no_window(e);
        assert!(!is_snapshot(e), "no resubscribe, so no fresh snapshot");
        delivered.take(e);
        if is_update(e) && health.report().rejected_trades == 1 {
            after += 1;
        }
        after >= 4
    })
    .await;
    let report = feed.health.report();
    assert_eq!(report.rejected_trades, 1);
    let c = connection(&report);
    assert_eq!(
        (c.gaps, c.sequence_resets, c.reconnects, c.malformed),
        (0, 0, 0, 0)
    );
    assert_eq!(sim.state.injected.all().len(), 1);
    // The bad trade's neighbours in its frame, and every other trade, arrived.
    let log = common::read_trade_log(&log);
    let whole = delivered.assert_whole(&log, "BTC-USD");
    assert!(whole > 10, "{whole}");
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_sequence_going_backwards_starts_a_new_sequence_with_a_gap_window() {
    let sim = sim(1).await;
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD"])));
    feed.until(Duration::from_secs(10), is_snapshot).await;
    // Far back: the old code dropped every later frame as out of order.
    sim.arm(next_fault(
        0,
        FaultKind::RewindSequence { count: 1_000_000 },
    ));
    let events = feed
        .until(Duration::from_secs(10), |e| {
            matches!(e, FeedEvent::Gap { .. })
        })
        .await;
    let Some(FeedEvent::Gap {
        expected,
        got,
        since,
        at,
        products,
        ..
    }) = events.last()
    else {
        unreachable!()
    };
    assert!(got < expected, "backwards: expected {expected}, got {got}");
    assert!(since <= at);
    assert_eq!(products, &vec!["BTC-USD".to_owned()]);
    // Frames of the new sequence count: a fresh snapshot, then updates.
    feed.until(Duration::from_secs(10), is_snapshot).await;
    feed.until(Duration::from_secs(10), is_update).await;
    let report = feed.health.report();
    let c = connection(&report);
    assert_eq!((c.sequence_resets, c.reconnects), (1, 0));
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
async fn a_full_event_channel_slows_the_reader_and_loses_nothing() {
    let (sim, _dir, log) = logged_sim(SimConfig {
        products: 2,
        trades_per_second: 20.0,
        history_minutes: 2,
        ..SimConfig::default()
    })
    .await;
    let mut s = settings(&sim, Some(&["BTC-USD", "ETH-USD"]));
    s.channel_capacity = 2;
    let mut feed = Running::start(s);
    let mut delivered = Delivered::default();
    feed.until(Duration::from_secs(10), |e| {
        delivered.take(e);
        delivered.snapshot_top.len() == 2
    })
    .await;
    // Time is the subject: a consumer that does not read for longer than the silence timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut updates = 0;
    feed.until(Duration::from_secs(20), |e| {
        no_window(e);
        delivered.take(e);
        if is_update(e) {
            updates += 1;
        }
        updates >= 30
    })
    .await;
    let report = feed.health.report();
    let c = connection(&report);
    assert!(c.backpressure_ms >= 1_000, "the reader waited: {c:?}");
    assert_eq!((c.gaps, c.reconnects, c.sequence_resets), (0, 0, 0));
    let log = common::read_trade_log(&log);
    for product in ["BTC-USD", "ETH-USD"] {
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

#[tokio::test]
async fn a_peer_that_stops_reading_stalls_neither_the_connection_nor_the_shutdown() {
    // A WebSocket server that completes the handshake, then never reads nor answers: neither
    // the subscribes nor the close frame get a reply.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    held.push(ws);
                }
            }
        }
    });
    let sim = sim(1).await;
    let mut s = settings(&sim, Some(&["BTC-USD"]));
    s.ws_url = format!("ws://{addr}");
    let mut feed = Running::start(s);
    // The silence timeout abandons the mute peer: the connection goes on with a new one.
    feed.health_until(Duration::from_secs(20), |r| {
        r.connections.first().is_some_and(|c| {
            c.last_error
                .as_deref()
                .is_some_and(|e| e.contains("no frame"))
        })
    })
    .await;
    common::wait_for("a second connect", Duration::from_secs(20), || {
        let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
        async move { n >= 2 }
    })
    .await;
    feed.health_until(Duration::from_secs(10), |r| r.connected == 1)
        .await;
    // Stopping closes politely; the peer never answers, and the close times out instead of
    // hanging (`stop` fails after 10 s).
    feed.stop().await;
    server.abort();
    sim.stop().await;
}
