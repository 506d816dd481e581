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

mod auth;
mod connection;
mod products;
mod sequence;

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

fn next_fault(after_frames: u64, kind: FaultKind) -> FaultRequest {
    FaultRequest {
        scope: Scope::Named(ScopeName::Next),
        after_frames,
        kind,
    }
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
