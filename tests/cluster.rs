//! Clustered mode: a 3-node NATS cluster on loopback, the KV bucket with 3 replicas, two
//! `serve` instances sharing the products (`SHARD_COUNT=2`), fed by the simulator. Each
//! instance serves every product; stopping the NATS node an instance is connected to keeps
//! its stream going.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::TestDb;
use secrecy::ExposeSecret;
use serde_json::Value;
use spot_canvas::sim::{SimConfig, Simulator};

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

/// Reads the JSON log lines of `serve` from its stderr: sends the port it logs as
/// `listening`, and keeps reading so that the pipe never fills.
fn listening_port(child: &mut Child) -> std::sync::mpsc::Receiver<u16> {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["message"] == "listening"
                && let Some(port) = v["port"].as_u64()
            {
                let _ = tx.send(port as u16);
            }
        }
    });
    rx
}

struct Instance {
    child: Child,
    port: u16,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

async fn health(port: u16) -> Option<Value> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .ok()?;
    response.json().await.ok()
}

/// Polls instance `port` until its live state applied at least `target` updates.
async fn wait_for_applied(port: u16, target: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(h) = health(port).await
            && h["bus"]["live"]["applied"].as_u64() >= Some(target)
        {
            return h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "live updates stopped short of {target}: {:?}",
            health(port).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
    for shard in 0..2u32 {
        let data = dir.path().join(format!("data{shard}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_spot-canvas"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // The service binds a free port itself and logs it: no port to race for.
            .env("PORT", "0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("DATA_DIR", &data)
            .env("DATABASE_URL", db.url.expose_secret())
            // Each instance knows one node; the cluster tells it about the others.
            .env("NATS_URL", node_url(shard as usize))
            .env("NATS_KV_REPLICAS", "3")
            .env("SHARD_INDEX", shard.to_string())
            .env("SHARD_COUNT", "2")
            .env("COINBASE_WS_URL", sim.ws_url())
            .env("COINBASE_REST_URL", sim.rest_url())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let ports = listening_port(&mut child);
        let mut instance = Instance { child, port: 0 };
        instance.port = common::eventually(
            "the instance to log its port",
            Duration::from_secs(180),
            || {
                let port = ports.try_recv().ok();
                async move { port }
            },
        )
        .await;
        instances.push(instance);
    }

    // Both instances come up and each sees all 8 products in its live state.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut reports = Vec::new();
    loop {
        reports.clear();
        for instance in &instances {
            reports.push(health(instance.port).await.unwrap_or(Value::Null));
        }
        let ready = reports
            .iter()
            .all(|h| h["bus"]["live"]["products"].as_u64() == Some(8) && h["status"] == "ok");
        if ready {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{reports:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Each ingests its own share, and together all of them.
    let shares: Vec<u64> = reports
        .iter()
        .map(|h| h["feed"]["products"].as_u64().expect("products"))
        .collect();
    assert_eq!(shares.iter().sum::<u64>(), 8, "{shares:?}");
    assert!(shares.iter().all(|&s| s > 0 && s < 8), "{shares:?}");

    // The bucket has 3 replicas.
    let client = async_nats::connect(node_url(2)).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value("live-candles").await.expect("bucket");
    let status = kv.status().await.expect("status");
    assert_eq!(status.info.config.num_replicas, 3);

    // Stop the node instance 0 is connected to: its stream keeps going.
    let applied = |h: &Value| h["bus"]["live"]["applied"].as_u64().unwrap_or(0);
    let flowing = applied(&reports[0]);
    wait_for_applied(instances[0].port, flowing + 50).await;
    let mut nodes = nodes;
    drop(nodes.remove(0));
    let at_kill = applied(&health(instances[0].port).await.expect("instance 0 answers"));
    let after = wait_for_applied(instances[0].port, at_kill + 50).await;
    assert_eq!(after["bus"]["live"]["products"], 8);
    // And what it publishes keeps getting out: the other instance sees instance 0's products.
    let other = health(instances[1].port).await.expect("instance 1 answers");
    assert_eq!(other["bus"]["live"]["products"], 8);
    drop(instances);
    sim.stop().await;
}
