//! Clustered mode: a 3-node NATS cluster on loopback, the KV bucket with 3 replicas, two
//! `serve` instances sharing the products (`SHARD_COUNT=2`), fed by the simulator. Each
//! instance serves every product; stopping the NATS node an instance is connected to keeps
//! its stream going.

use crate::common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{AppEnv, Service, TestDb};
use futures_util::StreamExt;
use serde_json::Value;
use spot_canvas_sim::{SimConfig, Simulator};

struct Node {
    child: Child,
    client_port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts a 3-node cluster. The ports are chosen free but another program may take one before
/// a node binds it: then that node exits, and the whole cluster starts again on fresh ports.
async fn start_cluster(dir: &std::path::Path) -> Vec<Node> {
    let mut failures = Vec::new();
    for attempt in 1..=5 {
        match try_start_cluster(&dir.join(format!("attempt{attempt}"))).await {
            Ok(nodes) => return nodes,
            Err(why) => failures.push(why),
        }
    }
    panic!("the NATS cluster does not start: {failures:#?}");
}

async fn try_start_cluster(dir: &std::path::Path) -> Result<Vec<Node>, String> {
    let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes = route_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let ports_dir = dir.join("ports");
    std::fs::create_dir_all(&ports_dir).expect("ports dir");
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let store = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&store).expect("store dir");
            let log = std::fs::File::create(dir.join(format!("n{i}.log"))).expect("log");
            let child = Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &client_ports[i].to_string(), "-js"])
                .arg("-sd")
                .arg(&store)
                .args(["--server_name", &format!("n{i}"), "--cluster_name", "spot"])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", route_ports[i])])
                .args(["--routes", &routes])
                .arg("--ports_file_dir")
                .arg(&ports_dir)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("nats-server starts");
            Node {
                child,
                client_port: client_ports[i],
            }
        })
        .collect();
    // Ready: each node (this very process: the file is named with its pid) says it listens on
    // both of its ports. A node that could not bind one exits.
    let outcome = common::eventually("the NATS nodes to listen", Duration::from_secs(60), || {
        let state = cluster_state(&mut nodes, &route_ports, &ports_dir, dir);
        async move { state }
    })
    .await;
    outcome.map(|()| nodes)
}

/// `Some(Ok)` once every node listens on its ports, `Some(Err)` when one exited, else `None`.
fn cluster_state(
    nodes: &mut [Node],
    route_ports: &[u16],
    ports_dir: &std::path::Path,
    dir: &std::path::Path,
) -> Option<Result<(), String>> {
    for (i, node) in nodes.iter_mut().enumerate() {
        if let Ok(Some(status)) = node.child.try_wait() {
            let log = std::fs::read_to_string(dir.join(format!("n{i}.log"))).unwrap_or_default();
            let last: Vec<&str> = log.lines().rev().take(2).collect();
            return Some(Err(format!("node n{i} exited ({status}): {last:?}")));
        }
    }
    let ready = nodes.iter().zip(route_ports).all(|(node, route)| {
        let file = ports_dir.join(format!("nats-server_{}.ports", node.child.id()));
        let Ok(text) = std::fs::read_to_string(file) else {
            return false;
        };
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        value["nats"][0] == format!("nats://127.0.0.1:{}", node.client_port)
            && value["cluster"][0] == format!("nats://127.0.0.1:{route}")
    });
    ready.then_some(Ok(()))
}

async fn health(service: &Service) -> Value {
    service
        .health()
        .await
        .map(|(_, h)| h)
        .unwrap_or(Value::Null)
}

fn applied(h: &Value) -> u64 {
    h["bus"]["live"]["applied"].as_u64().unwrap_or(0)
}

/// Polls `service` until its live state applied at least `target` updates.
async fn wait_for_applied(service: &Service, target: u64) -> Value {
    service
        .wait_for_health(
            &format!("the live state to apply {target} updates"),
            Duration::from_secs(90),
            |_, h| applied(h) >= target,
        )
        .await
}

/// Candle messages seen on `candles.>`: product and the time of the candle's last trade.
type Seen = Arc<Mutex<Vec<(String, DateTime<Utc>)>>>;

async fn watch_candles(client: &async_nats::Client) -> Seen {
    let mut subscriber = client.subscribe("candles.>").await.expect("subscribes");
    let seen: Seen = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            let Ok(v) = serde_json::from_slice::<Value>(&message.payload) else {
                continue;
            };
            let (Some(product), Some(time)) = (
                v["product_id"].as_str(),
                v["last_trade_time"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok()),
            ) else {
                continue;
            };
            out.lock()
                .expect("lock")
                .push((product.to_owned(), time.with_timezone(&Utc)));
        }
    });
    seen
}

#[tokio::test]
async fn two_shards_on_a_nats_cluster_each_serve_every_product() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster(dir.path()).await;
    let db = TestDb::migrated().await;
    let sim = Simulator::start(SimConfig {
        products: 8,
        trades_per_second: 4.0,
        history_minutes: 3,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let node_url = |i: usize| format!("nats://127.0.0.1:{}", nodes[i].client_port);
    let mut instances = Vec::new();
    for shard in 0..2usize {
        let env = AppEnv::for_sim(&sim, &dir.path().join(format!("data{shard}")))
            .database(&db)
            // Each instance knows one node; the cluster tells it about the others.
            .set("NATS_URL", node_url(shard))
            .set("NATS_KV_REPLICAS", "3")
            .set("SHARD_INDEX", shard.to_string())
            .set("SHARD_COUNT", "2");
        let log = dir.path().join(format!("serve{shard}.log"));
        instances.push(Service::start(&env, &log).await);
    }

    // Both instances come up and each sees all 8 products in its live state.
    let reports = common::eventually(
        "both instances up with 8 products live",
        Duration::from_secs(180),
        || async {
            let mut reports = Vec::new();
            for instance in &instances {
                reports.push(health(instance).await);
            }
            reports
                .iter()
                .all(|h| h["bus"]["live"]["products"].as_u64() == Some(8) && h["status"] == "ok")
                .then_some(reports)
        },
    )
    .await;
    // Each ingests its own share, and together all of them.
    let shares: Vec<u64> = reports
        .iter()
        .map(|h| h["feed"]["products"].as_u64().expect("products"))
        .collect();
    assert_eq!(shares.iter().sum::<u64>(), 8, "{shares:?}");
    assert!(shares.iter().all(|&s| s > 0 && s < 8), "{shares:?}");
    let own: BTreeSet<String> = reports[0]["feed"]["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .flat_map(|c| c["products"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    assert_eq!(own.len() as u64, shares[0], "{own:?}");

    // The bucket has 3 replicas.
    let client = async_nats::connect(node_url(2)).await.expect("connects");
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("live-candles").await.expect("bucket");
    let status = kv.status().await.expect("status");
    assert_eq!(status.info.config.num_replicas, 3);

    // A client on node 2 sees instance 0's updates (published through node 0).
    let seen = watch_candles(&client).await;
    let of_instance_0 = |after: Option<DateTime<Utc>>| {
        seen.lock()
            .expect("lock")
            .iter()
            .any(|(p, t)| own.contains(p) && after.is_none_or(|a| *t > a))
    };
    common::wait_for(
        "instance 0's updates on node 2",
        Duration::from_secs(60),
        || async { of_instance_0(None) },
    )
    .await;

    // Stop the node instance 0 is connected to: its stream keeps going.
    wait_for_applied(&instances[0], applied(&reports[0]) + 50).await;
    let mut nodes = nodes;
    drop(nodes.remove(0));
    let killed = Utc::now();
    let at_kill = applied(&health(&instances[0]).await);
    let after = wait_for_applied(&instances[0], at_kill + 50).await;
    assert_eq!(after["bus"]["live"]["products"], 8);
    // And what it publishes keeps getting out: an update of one of its products for a trade
    // made after the kill (so published after it) reaches the client on another node.
    common::wait_for(
        "an update of instance 0 for a trade after the kill",
        Duration::from_secs(90),
        || async { of_instance_0(Some(killed)) },
    )
    .await;
    // The other instance's live state keeps applying too.
    let other = applied(&health(&instances[1]).await);
    wait_for_applied(&instances[1], other + 20).await;
    for instance in &mut instances {
        let status = instance.stop().await;
        assert!(status.success(), "{status}\n{}", instance.log());
    }
    sim.stop().await;
}
