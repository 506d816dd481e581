//! The whole service for a test: its environment ([`AppEnv`]), run in-process ([`TestApp`],
//! with its port, `AppState` and stage registry) or as the `spot-canvas` binary (see
//! `service.rs`), and `/health` read over HTTP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;
use spot_canvas::app::App;
use spot_canvas::config::Config;
use spot_canvas::feed::FeedSettings;
use spot_canvas::supervise::Stages;
use spot_canvas::web::AppState;
use spot_canvas_sim::Simulator;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::TestDb;

/// How long a stop may take: the service's own grace period (6 s, inside Cloud Run's 10 s)
/// and plenty for a loaded CI (tests of the 10 s bound say so themselves).
pub const STOP_WITHIN: Duration = Duration::from_secs(90);

/// A service's environment variables, for [`TestApp`] and the spawned binary alike.
#[derive(Debug, Clone)]
pub struct AppEnv {
    vars: BTreeMap<String, String>,
}

impl AppEnv {
    /// A free port (`PORT=0`, read back from the app or the log) and JSON logs.
    pub fn new() -> AppEnv {
        AppEnv {
            vars: BTreeMap::new(),
        }
        .set("PORT", "0")
        .set("LOG_FORMAT", "json")
        .set("RUST_LOG", "info")
    }

    /// Fed by `sim`, with `DATA_DIR` at `data_dir` (embedded PostgreSQL and nats-server there
    /// unless `DATABASE_URL` / `NATS_URL` are set).
    pub fn for_sim(sim: &Simulator, data_dir: &Path) -> AppEnv {
        AppEnv::new()
            .set("DATA_DIR", data_dir.display().to_string())
            .set("COINBASE_WS_URL", sim.ws_url())
            .set("COINBASE_REST_URL", sim.rest_url())
    }

    /// Uses `db` instead of the embedded database.
    pub fn database(self, db: &TestDb) -> AppEnv {
        self.set("DATABASE_URL", db.url.expose_secret())
    }

    pub fn set(mut self, name: &str, value: impl Into<String>) -> AppEnv {
        self.vars.insert(name.to_owned(), value.into());
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The configuration these variables make.
    pub fn config(&self) -> Config {
        Config::from_lookup(|name| self.vars.get(name).cloned()).expect("a valid configuration")
    }

    fn data_dir(&self) -> Option<PathBuf> {
        self.get("DATA_DIR").map(PathBuf::from)
    }
}

impl Default for AppEnv {
    fn default() -> Self {
        AppEnv::new()
    }
}

/// A temporary `DATA_DIR` that the database server (the `postgres` user when the tests run as
/// root) can reach.
pub fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("spot-canvas-data-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    dir
}

/// `GET /health` on `port`: its status code and body, or `None` when nothing answers.
pub async fn health(port: u16) -> Option<(u16, Value)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let response = client
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body = response.json().await.ok()?;
    Some((status, body))
}

/// Polls `/health` on `port` until `done` holds for its status and body; returns that body.
pub async fn wait_for_health(
    port: u16,
    what: &str,
    within: Duration,
    done: impl Fn(u16, &Value) -> bool,
) -> Value {
    super::eventually(what, within, || async {
        health(port)
            .await
            .and_then(|(status, body)| done(status, &body).then_some(body))
    })
    .await
}

/// The service built and run in this process, as `serve` does, until [`TestApp::stop`].
pub struct TestApp {
    pub port: u16,
    pub state: AppState,
    pub stages: Arc<Stages>,
    cancel: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// For the safety net in `Drop`: the embedded cluster's directory, if any.
    embedded_pg: Option<PathBuf>,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp").field("port", &self.port).finish()
    }
}

impl TestApp {
    /// Builds the app from `env` (feed settings from it, then `tweak`, which tests use to
    /// shorten timeouts) and runs it.
    pub async fn start(env: &AppEnv, tweak: impl FnOnce(&mut FeedSettings)) -> TestApp {
        let config = env.config();
        let mut settings = FeedSettings::from_config(&config);
        tweak(&mut settings);
        let app = App::build_with(&config, settings)
            .await
            .expect("the app builds");
        let port = app.port();
        let state = app.state();
        let stages = app.stages();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(cancel.clone()));
        let embedded_pg = match env.get("DATABASE_URL") {
            Some(_) => None,
            None => env.data_dir().map(|d| d.join("postgres")),
        };
        TestApp {
            port,
            state,
            stages,
            cancel,
            task: Some(task),
            embedded_pg,
        }
    }

    pub async fn health(&self) -> Option<(u16, Value)> {
        health(self.port).await
    }

    /// Polls `/health` until `done` holds; returns that body.
    pub async fn wait_for_health(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(u16, &Value) -> bool,
    ) -> Value {
        wait_for_health(self.port, what, within, done).await
    }

    /// Stops it as SIGTERM would and returns how `run_until_stopped` ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.finished(STOP_WITHIN).await
    }

    /// Waits, without asking it to stop, until `run_until_stopped` returns (a fatal stage
    /// ended), at most `within`.
    pub async fn finished(&mut self, within: Duration) -> anyhow::Result<()> {
        let task = self.task.take().expect("the app has not finished yet");
        tokio::time::timeout(within, task)
            .await
            .unwrap_or_else(|_| panic!("the app did not stop within {within:?}"))
            .expect("the app task does not panic")
    }
}

impl Drop for TestApp {
    /// A test that panicked before `stop`: the runtime goes away with the app's tasks, so the
    /// embedded PostgreSQL (a separate process) is stopped here.
    fn drop(&mut self) {
        self.cancel.cancel();
        if self.task.is_none() {
            return;
        }
        if let Some(cluster) = &self.embedded_pg {
            stop_cluster_blocking(cluster);
        }
    }
}

/// `pg_ctl stop -m immediate` on a cluster, from synchronous code, ignoring failures.
fn stop_cluster_blocking(cluster: &Path) {
    if !cluster.join("postmaster.pid").exists() {
        return;
    }
    let Some(pg_ctl) = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/pg_ctl"))
        .find(|p| p.exists())
    else {
        return;
    };
    let uid = |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    // As root, the cluster belongs to `postgres`, who must run pg_ctl.
    let as_postgres = uid(Path::new("/proc/self")).ok() == Some(0) && uid(cluster).ok() != Some(0);
    let mut command = if as_postgres {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_ctl);
        c
    } else {
        std::process::Command::new(pg_ctl)
    };
    let _ignored = command
        .arg("-D")
        .arg(cluster)
        .args(["-w", "-t", "30", "-m", "immediate", "stop"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Processes whose command line mentions `path` (a server left running for a `DATA_DIR`).
pub fn processes_mentioning(path: &Path) -> Vec<(u32, String)> {
    let needle = path.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}
