//! The fault suite (`task test:faults`, with `tests/suite/stream_churn.rs`): one
//! `spot-canvas serve` process, fed by the simulator, with a real PostgreSQL and a real nats-server, goes through
//! every fault in turn while a stream client stays open: the exchange closes with 1001, the
//! TCP connection drops, the feed stalls, sequence numbers skip, a malformed and an oversized
//! frame arrive, PostgreSQL stops and restarts, NATS stops and restarts; then SIGTERM under
//! load. After each fault the same process is ready again, trades flow into the stream, and
//! its tokio task count and resident memory are back near where they started. At the end the
//! candles in PostgreSQL equal an aggregation, written here, of the simulator's trade log, and
//! nothing the stream showed before the signal is missing from them.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::footprint::{Footprint, back_near, footprint};
use common::{
    AppEnv, LoggedTrade, Service, SseReader, TestDb, aggregate, read_trade_log, stored_rows,
};
use serde_json::Value;
use spot_canvas::bus::EmbeddedNats;
use spot_canvas::model::{Granularity, Version};
use spot_canvas::reconcile::rest::POOL_IDLE;
use spot_canvas_sim::faults::{FaultKind, FaultRequest, Scope};
use spot_canvas_sim::market::MarketSpec;
use spot_canvas_sim::{SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

mod survival;

/// A generous deadline for a loaded 2-core CI.
const WITHIN: Duration = Duration::from_secs(60);

/// Tasks allowed above the baseline once a fault is over (each reading the lowest of five
/// samples, within a minute in which the REST client's idle connections close): a request or
/// a backfill window in flight. A task left behind by every reconnect exceeds it by
/// the last of the four.
const TASK_SLACK: usize = 3;

/// Resident memory allowed above the baseline once a fault is over: allocator arenas and
/// caches that grew under the fault and are kept for reuse (the baseline is about 40 MiB).
const RSS_SLACK: u64 = 16 << 20;

/// Products the suite trades.
const PRODUCTS: usize = 4;

fn trades_of(health: &Value) -> u64 {
    health["engine"]["trades"].as_u64().unwrap_or(0)
}

fn feed_sum(health: &Value, field: &str) -> u64 {
    health["feed"]["connections"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c[field].as_u64()).sum())
        .unwrap_or(0)
}

fn engine(health: &Value, field: &str) -> u64 {
    health["engine"][field].as_u64().unwrap_or(0)
}

fn written(health: &Value) -> u64 {
    health["store"]["writer"]["written_rows"]
        .as_u64()
        .unwrap_or(0)
}

fn published(health: &Value) -> u64 {
    health["bus"]["publisher"]["live"]["written_rows"]
        .as_u64()
        .unwrap_or(0)
}

fn windows_done(health: &Value) -> u64 {
    health["reconcile"]["windows_done"].as_u64().unwrap_or(0)
}

/// No backfill window waiting or running.
fn reconcile_idle(health: &Value) -> bool {
    health["reconcile"]["windows_pending"].as_u64() == Some(0)
        && health["reconcile"]["windows_running"].as_u64() == Some(0)
}

fn raised(health: &Value, alarm: &str) -> bool {
    health["alarms"]["raised"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["kind"] == alarm))
}

/// The id of the simulator connection that carries `market_trades` now (the newest).
fn trades_connection(sim: &Simulator) -> u64 {
    let connections = sim.state.connections();
    connections
        .as_array()
        .expect("connections")
        .iter()
        .filter(|c| c["subscriptions"]["market_trades"].is_array())
        .filter_map(|c| c["id"].as_u64())
        .max()
        .unwrap_or_else(|| panic!("a market_trades connection: {connections}"))
}

/// Arms `kind` on the connection that carries the trades now.
fn arm(sim: &Simulator, kind: FaultKind) {
    sim.arm(FaultRequest {
        scope: Scope::Connection(trades_connection(sim)),
        after_frames: 0,
        kind,
    });
}

/// A stream client of `/api/v1/stream` for every product at one minute, read in the
/// background: it remembers the newest trade id it saw per product.
struct StreamClient {
    newest: Arc<Mutex<BTreeMap<String, u64>>>,
    reader: tokio::task::JoinHandle<Result<(), String>>,
}

impl StreamClient {
    async fn open(port: u16, products: &[String]) -> StreamClient {
        let request = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{port}/api/v1/stream?products={}&granularity=1m",
                products.join(",")
            ))
            .send();
        let response = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("the stream answers within 10 s")
            .expect("the stream opens");
        assert_eq!(response.status(), 200);
        let newest = Arc::new(Mutex::new(BTreeMap::new()));
        let into = newest.clone();
        let reader = tokio::spawn(async move {
            let mut reader = SseReader::new(response);
            // Keepalives come every 15 s: an hour without an event is a hung stream.
            while let Some(event) = reader.next(Duration::from_secs(3600)).await {
                let product = event.attr("data-product");
                let id = event.attr("data-last-trade-id");
                let (Some(product), Some(id)) = (product, id) else {
                    continue;
                };
                let id: u64 = id.parse().map_err(|e| format!("trade id {id}: {e}"))?;
                let mut newest = into.lock().map_err(|_| "poisoned".to_owned())?;
                let slot = newest.entry(product).or_insert(0);
                *slot = (*slot).max(id);
            }
            Ok(())
        });
        StreamClient { newest, reader }
    }

    fn newest(&self) -> BTreeMap<String, u64> {
        self.newest.lock().expect("newest").clone()
    }

    /// Waits until the client has seen, for every product, a trade newer than it had seen
    /// when this was called.
    async fn moves_on(&self, what: &str) {
        let then = self.newest();
        common::wait_for(
            &format!("{what}: the stream client sees newer trades of every product"),
            WITHIN,
            || async {
                assert!(!self.reader.is_finished(), "{what}: the stream ended");
                let now = self.newest();
                now.len() == PRODUCTS
                    && now
                        .iter()
                        .all(|(p, id)| then.get(p).is_none_or(|old| id > old))
            },
        )
        .await;
    }
}

/// The service under faults, with what it looked like before them.
struct Subject {
    service: Service,
    baseline: Footprint,
    stream: StreamClient,
}

impl Subject {
    async fn health(&self) -> Value {
        self.service.health().await.expect("/health answers").1
    }

    /// Waits until the service is ready again (the same process, never restarted), trades
    /// flow past `reference` and into the stream, and its tasks and memory are back near the
    /// baseline. Returns `/health` from when it was ready.
    async fn recovered(&mut self, what: &str, reference: &Value) -> Value {
        let trades_then = trades_of(reference);
        let pid = u64::from(self.service.pid());
        let health = self
            .service
            .wait_for_health(&format!("{what}: ready, trades flowing"), WITHIN, |s, h| {
                s == 200
                    && h["process"]["pid"].as_u64() == Some(pid)
                    && h["feed"]["connected"].as_u64() == Some(1)
                    && trades_of(h) > trades_then + 20
            })
            .await;
        assert!(self.service.running(), "{what}: the process still runs");
        self.stream.moves_on(what).await;
        back_near(
            &self.service,
            self.baseline,
            (TASK_SLACK, RSS_SLACK),
            what,
            WITHIN,
        )
        .await;
        health
    }

    /// Arms a feed fault and waits until `seen` says the service noticed it.
    async fn feed_fault(
        &mut self,
        sim: &Simulator,
        what: &str,
        kind: FaultKind,
        seen: impl Fn(&Value, &Value) -> bool,
    ) {
        let before = self.health().await;
        arm(sim, kind);
        self.service
            .wait_for_health(&format!("{what}: noticed"), WITHIN, |_, h| seen(&before, h))
            .await;
        let noticed = self.health().await;
        self.recovered(what, &noticed).await;
    }
}

fn reconnected(before: &Value, now: &Value) -> bool {
    engine(now, "reconnects_seen") > engine(before, "reconnects_seen")
}

fn gap(before: &Value, now: &Value) -> bool {
    engine(now, "gaps_seen") > engine(before, "gaps_seen")
}

/// The minute `t` falls in, in Unix seconds.
fn minute_of(t: DateTime<Utc>) -> i64 {
    t.timestamp() - t.timestamp().rem_euclid(60)
}
