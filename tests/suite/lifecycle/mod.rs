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

mod embedded;
mod leftovers;
mod signals;

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
