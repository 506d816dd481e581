//! The embedded servers' child processes: never left running (a stop signal while the service
//! is still starting, a panic, a dropped owner), never blocked by what an earlier run left
//! behind (a server of the same DATA_DIR after `kill -9`, a stale `postmaster.pid`), and never
//! given the service's secrets in their environment.
//!
//! The processes of a data directory are found through `/proc`: their command line names it
//! or they work inside it (the postmaster and its backends work in the cluster directory).

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{eventually, wait_for};
use serde_json::Value;
use spot_canvas::bus::EmbeddedNats;
use spot_canvas::store::EmbeddedPostgres;
use spot_canvas_sim::{SimConfig, Simulator};

/// Generous for a loaded 2-core CI: `initdb` alone can take many seconds there.
const START: Duration = Duration::from_secs(180);
const EXIT: Duration = Duration::from_secs(60);

/// A data directory that the `postgres` user can reach (the tests may run as root); every
/// process still working in it is killed when it goes (only after a failed assertion).
struct DataDir {
    /// Removed when dropped.
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl DataDir {
    fn new() -> DataDir {
        let dir = tempfile::Builder::new()
            .prefix("spot-canvas-life-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let path = std::fs::canonicalize(dir.path()).expect("canonical");
        DataDir { _dir: dir, path }
    }

    fn cluster(&self) -> PathBuf {
        self.path.join("postgres")
    }

    fn text(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        for pid in processes_of(&self.path) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Whether process `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every running process whose command line names `dir` or that works inside it.
fn processes_of(dir: &Path) -> Vec<u32> {
    let text = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id() && alive(pid))
        .filter(|&pid| {
            let in_dir = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(dir));
            in_dir || cmdline(pid).iter().any(|a| a.contains(&text))
        })
        .collect()
}

/// The first line of `postmaster.pid`, when the file exists.
fn postmaster_pid(cluster: &Path) -> Option<u32> {
    std::fs::read_to_string(cluster.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

fn nats_pids(data: &DataDir) -> Vec<u32> {
    processes_of(&data.path)
        .into_iter()
        .filter(|&pid| {
            cmdline(pid)
                .first()
                .is_some_and(|a| a.ends_with("nats-server"))
        })
        .collect()
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}

/// `spot-canvas serve` with JSON logs on stderr, read by a thread.
struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Serve {
    fn start(data: &DataDir, envs: &[(&str, String)]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_spot-canvas"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", "0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("DATA_DIR", data.text())
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Serve {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Takes the lines logged so far; the first one whose message is `message`.
    fn logged(&mut self, message: &str) -> Option<Value> {
        self.seen.extend(self.lines.try_iter());
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == message)
    }

    /// The log lines so far, for a failure message (the service logs no secret).
    fn log(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }

    async fn wait_logged(&mut self, message: &str) -> Value {
        let what = format!("the service to log {message:?}");
        eventually(&what, START, || {
            let found = self.logged(message);
            async move { found }
        })
        .await
    }

    /// Waits until `/health` answers 200.
    async fn wait_healthy(&mut self) -> u16 {
        let listening = self.wait_logged("listening").await;
        let port = listening["port"].as_u64().expect("port") as u16;
        let url = format!("http://127.0.0.1:{port}/health");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        wait_for("/health to answer 200", START, || {
            let request = client.get(&url).send();
            async move { request.await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        port
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let child = &mut self.child;
        eventually("the service to exit", EXIT, || {
            let status = child.try_wait().expect("wait");
            async move { status }
        })
        .await
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + EXIT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                // Polling interval of the exit check, from synchronous code (Drop).
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn simulator() -> Simulator {
    Simulator::start(SimConfig {
        products: 2,
        trades_per_second: 5.0,
        history_minutes: 5,
        ..SimConfig::default()
    })
    .await
    .expect("sim")
}

fn feed(sim: &Simulator) -> Vec<(&'static str, String)> {
    vec![
        ("COINBASE_WS_URL", sim.ws_url()),
        ("COINBASE_REST_URL", sim.rest_url()),
    ]
}

/// A loopback port where nothing answers.
fn silent_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Stops a healthy service with SIGTERM and checks that it exits cleanly with nothing of its
/// data directory left running.
async fn stop_cleanly(mut serve: Serve, data: &DataDir) {
    signal(serve.pid(), "-TERM");
    let status = serve.wait_exit().await;
    assert!(status.success(), "exit {status}: {}", serve.log());
    assert_eq!(
        processes_of(&data.path),
        Vec::<u32>::new(),
        "nothing left running"
    );
}

#[tokio::test]
async fn sigterm_while_waiting_for_nats_stops_the_database_and_the_next_start_works() {
    let sim = simulator().await;
    let data = DataDir::new();
    let mut envs = feed(&sim);
    envs.push(("NATS_URL", format!("nats://127.0.0.1:{}", silent_port())));
    let mut serve = Serve::start(&data, &envs);
    serve.wait_logged("embedded PostgreSQL running").await;
    let postmaster = postmaster_pid(&data.cluster()).expect("the database runs");
    assert!(alive(postmaster));
    assert!(
        serve.logged("listening").is_none(),
        "without NATS the service cannot have finished starting"
    );

    signal(serve.pid(), "-TERM");
    let status = serve.wait_exit().await;
    assert!(status.success(), "exit {status}: {}", serve.log());
    // The service stops its children before it exits: nothing to wait for.
    assert!(
        !alive(postmaster),
        "the postmaster {postmaster} was left running"
    );
    assert_eq!(processes_of(&data.path), Vec::<u32>::new());
    assert_eq!(postmaster_pid(&data.cluster()), None, "a clean shutdown");

    // The next start in the same directory (embedded NATS this time) comes up.
    let mut again = Serve::start(&data, &feed(&sim));
    again.wait_healthy().await;
    stop_cleanly(again, &data).await;
    sim.stop().await;
}

#[tokio::test]
async fn sigterm_while_the_cluster_is_created_leaves_nothing_and_the_next_start_works() {
    let data = DataDir::new();
    let nats = format!("nats://127.0.0.1:{}", silent_port());
    let mut serve = Serve::start(&data, &[("NATS_URL", nats)]);
    // initdb (or whatever it started) runs in the directory.
    wait_for("initdb to run", START, || {
        let running = !processes_of(&data.path).is_empty();
        async move { running }
    })
    .await;
    signal(serve.pid(), "-TERM");
    let status = serve.wait_exit().await;
    assert!(status.success(), "exit {status}: {}", serve.log());
    assert_eq!(
        processes_of(&data.path),
        Vec::<u32>::new(),
        "initdb or the server outlived the service"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_spot-canvas"))
        .args(["migrate", "up"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", data.text())
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "the next start works: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(processes_of(&data.path), Vec::<u32>::new());
}

#[tokio::test]
async fn sigterm_during_migrate_leaves_no_database_running_and_the_next_migrate_works() {
    let data = DataDir::new();
    let migrate = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_spot-canvas"));
        command
            .args(["migrate", "up"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATA_DIR", data.text())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        command
    };
    let mut child = migrate().spawn().expect("migrate starts");
    wait_for("migrate to start the database", START, || {
        let running = !processes_of(&data.path).is_empty();
        async move { running }
    })
    .await;
    signal(child.id(), "-TERM");
    let status = common::eventually("migrate to exit", START, || {
        let exited = child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    assert!(
        !status.success(),
        "an interrupted migrate says so in its exit code"
    );
    assert_eq!(
        processes_of(&data.path),
        Vec::<u32>::new(),
        "initdb or the server outlived migrate"
    );
    let output = migrate().output().expect("runs");
    assert!(
        output.status.success(),
        "the next migrate works: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(processes_of(&data.path), Vec::<u32>::new());
}

#[tokio::test]
async fn servers_left_by_a_killed_service_do_not_block_the_next_start() {
    let sim = simulator().await;
    let data = DataDir::new();
    let mut serve = Serve::start(&data, &feed(&sim));
    serve.wait_healthy().await;
    let postmaster = postmaster_pid(&data.cluster()).expect("the database runs");
    let nats = nats_pids(&data);
    assert_eq!(nats.len(), 1, "one nats-server: {nats:?}");

    signal(serve.pid(), "-KILL");
    serve.wait_exit().await;
    // kill -9 gives the service no chance: its servers still run.
    assert!(alive(postmaster), "the postmaster outlives a kill -9");
    assert!(alive(nats[0]), "the nats-server outlives a kill -9");

    let mut again = Serve::start(&data, &feed(&sim));
    again.wait_healthy().await;
    assert!(!alive(postmaster), "the leftover postmaster was stopped");
    assert!(!alive(nats[0]), "the leftover nats-server was stopped");
    stop_cleanly(again, &data).await;
    sim.stop().await;
}

/// Writes a `postmaster.pid` naming `pid`, as a crashed server leaves it.
fn write_pid_file(cluster: &Path, pid: u32) {
    let text = format!(
        "{pid}\n{}\n1700000000\n5432\n\n127.0.0.1\n  1234567   1\nready   \n",
        cluster.display()
    );
    std::fs::write(cluster.join("postmaster.pid"), text).expect("pid file");
}

/// The `postgres` user's ids when we are root (the server then runs as that user).
fn server_user() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("passwd");
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

fn migrate(data: &DataDir, action: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_spot-canvas"))
        .args(["migrate", action])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", data.text())
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "migrate {action}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_stale_postmaster_pid_does_not_block_the_start() {
    let data = DataDir::new();
    migrate(&data, "up");
    assert_eq!(postmaster_pid(&data.cluster()), None, "stopped cleanly");

    // The pid of a running process that is no PostgreSQL server (pids are reused), of the
    // server's user (another user's process cannot be signalled, which PostgreSQL takes as
    // not running).
    let mut sleep = Command::new("sleep");
    sleep.arg("600");
    if let Some((uid, gid)) = server_user() {
        std::os::unix::process::CommandExt::uid(&mut sleep, uid);
        std::os::unix::process::CommandExt::gid(&mut sleep, gid);
    }
    let mut other = sleep.spawn().expect("sleep starts");
    write_pid_file(&data.cluster(), other.id());
    migrate(&data, "status");
    assert!(alive(other.id()), "an unrelated process is left alone");
    other.kill().expect("kill");
    other.wait().expect("reaped");

    // The pid of a process that no longer exists.
    let mut gone = Command::new("true").spawn().expect("true starts");
    let gone_pid = gone.id();
    gone.wait().expect("reaped");
    write_pid_file(&data.cluster(), gone_pid);
    migrate(&data, "status");
    assert_eq!(processes_of(&data.path), Vec::<u32>::new());
}

#[tokio::test]
async fn the_embedded_servers_get_no_secret_in_their_environment() {
    use base64::Engine;
    let sim = simulator().await;
    let data = DataDir::new();
    let key_name = "organizations/o-lifecycle/apiKeys/k-lifecycle-9f3c".to_owned();
    let signing = ed25519_dalek::SigningKey::from_bytes(&[11u8; 32]);
    let mut secret = signing.to_bytes().to_vec();
    secret.extend_from_slice(signing.verifying_key().as_bytes());
    let private_key = base64::engine::general_purpose::STANDARD.encode(&secret);
    let mut envs = feed(&sim);
    envs.push(("COINBASE_API_KEY", key_name.clone()));
    envs.push(("COINBASE_PRIVATE_KEY", private_key.clone()));
    envs.push(("SPOT_CANVAS_TEST_MARKER", "marker-7d1e".into()));
    let mut serve = Serve::start(&data, &envs);
    serve.wait_healthy().await;
    let password = std::fs::read_to_string(data.path.join("postgres.password"))
        .expect("password file")
        .trim()
        .to_owned();

    let postmaster = postmaster_pid(&data.cluster()).expect("the database runs");
    let nats = nats_pids(&data);
    assert_eq!(nats.len(), 1, "one nats-server: {nats:?}");
    let children = processes_of(&data.path);
    assert!(children.contains(&postmaster), "{children:?}");
    for pid in children {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        let environ = String::from_utf8_lossy(&environ).into_owned();
        let vars: Vec<&str> = environ.split('\0').filter(|v| !v.is_empty()).collect();
        let name = cmdline(pid).first().cloned().unwrap_or_default();
        for var in &vars {
            assert!(
                !var.starts_with("COINBASE_") && !var.starts_with("DATABASE_URL"),
                "{name} ({pid}) has {}",
                var.split('=').next().unwrap_or_default()
            );
            assert!(
                !var.starts_with("SPOT_CANVAS_TEST_MARKER"),
                "{name} ({pid}) inherits the service's environment"
            );
        }
        for (what, value) in [
            ("the key name", key_name.as_str()),
            ("the private key", private_key.as_str()),
            ("the database password", password.as_str()),
        ] {
            assert!(!environ.contains(value), "{name} ({pid}) holds {what}");
        }
    }
    stop_cleanly(serve, &data).await;
    sim.stop().await;
}

#[tokio::test]
async fn dropping_the_last_owner_of_an_embedded_postgres_stops_its_server() {
    let data = DataDir::new();
    let pg = Arc::new(
        EmbeddedPostgres::start(&data.path)
            .await
            .expect("the cluster starts"),
    );
    let postmaster = postmaster_pid(&data.cluster()).expect("running");
    let url = pg.url();
    let other = pg.clone();
    drop(pg);
    assert!(alive(postmaster), "another owner keeps it running");
    let pool = spot_canvas::store::connect(&url)
        .await
        .expect("it still answers");
    pool.close().await;

    drop(other);
    // Drop stops it synchronously: gone by the time drop returns.
    assert!(
        !alive(postmaster),
        "the postmaster {postmaster} was left running"
    );
    assert_eq!(processes_of(&data.path), Vec::<u32>::new());
    assert_eq!(postmaster_pid(&data.cluster()), None, "a clean shutdown");
}

#[tokio::test]
async fn dropping_the_last_clone_of_an_embedded_nats_stops_it() {
    let data = DataDir::new();
    let nats = EmbeddedNats::start(None, &data.path)
        .await
        .expect("nats-server starts");
    let pid = nats.pid().await.expect("running");
    let other = nats.clone();
    drop(nats);
    assert!(alive(pid), "another clone keeps it running");
    let client = spot_canvas::bus::connect_plain(&other.client_url())
        .await
        .expect("it still answers");
    client.flush().await.expect("flush");
    drop(client);

    drop(other);
    assert!(!alive(pid), "the nats-server {pid} was left running");
    assert_eq!(nats_pids(&data), Vec::<u32>::new());
}

#[tokio::test]
async fn a_panic_while_holding_the_embedded_servers_stops_them() {
    let data = DataDir::new();
    let path = data.path.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let pg = EmbeddedPostgres::start(&path).await.expect("starts");
        let nats = EmbeddedNats::start(None, &path).await.expect("starts");
        let postmaster = postmaster_pid(pg.cluster_dir()).expect("running");
        let nats_pid = nats.pid().await.expect("running");
        tx.send((postmaster, nats_pid)).expect("send");
        panic!("a bug while the servers run (expected by this test)");
    });
    let (postmaster, nats_pid) = rx.await.expect("both started");
    assert!(task.await.is_err(), "the task panicked");
    assert!(
        !alive(postmaster),
        "the postmaster {postmaster} was left running"
    );
    assert!(
        !alive(nats_pid),
        "the nats-server {nats_pid} was left running"
    );
    assert_eq!(processes_of(&data.path), Vec::<u32>::new());
}
