//! Running the postmaster: on a free loopback port (a fresh one when the port was taken
//! between choosing and binding it), ready only when `postmaster.pid` names OUR child as ready
//! and a connection answers; and ending a server of the same directory left by an earlier run.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{EmbeddedError, EmbeddedPostgres, ON_DROP};
use crate::children::{self, OwnedChild, Signal, StopPlan};

/// How long a fresh server gets to accept connections (recovery after a crash can be slow).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Ports tried before giving up.
const ATTEMPTS: u32 = 5;
/// How a leftover server of an earlier run is stopped.
const LEFTOVER: StopPlan = &[
    (Signal::INT, Duration::from_secs(30)),
    (Signal::QUIT, Duration::from_secs(10)),
];

/// Why one start attempt failed.
#[derive(Debug)]
pub(super) enum Launch {
    /// The port was taken (or the old server's memory is still held): worth another try.
    Retry(String),
    Failed(EmbeddedError),
}

impl Launch {
    pub(super) fn into_error(self) -> EmbeddedError {
        match self {
            Launch::Retry(detail) => EmbeddedError::Command {
                what: "starting PostgreSQL".into(),
                detail,
            },
            Launch::Failed(e) => e,
        }
    }
}

impl From<std::io::Error> for Launch {
    fn from(e: std::io::Error) -> Launch {
        Launch::Failed(e.into())
    }
}

impl EmbeddedPostgres {
    /// Starts the server on a free port, trying a fresh one while the chosen port turns out
    /// taken.
    pub(super) async fn start_on_free_port(&mut self) -> Result<(), EmbeddedError> {
        let mut attempt = 1;
        loop {
            self.port = free_port()?;
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(Launch::Retry(why)) if attempt < ATTEMPTS => {
                    tracing::warn!(port = self.port, attempt, reason = %why, "PostgreSQL could not start; trying again on another port");
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into_error()),
            }
        }
    }

    /// Spawns the postmaster on `self.port` and waits until it is ready.
    pub(super) async fn launch(&self) -> Result<(), Launch> {
        let log_path = self.cluster.join("server.log");
        let (log, offset) = children::append_log(&log_path)?;
        let mut command = self.pg_command("postgres");
        command
            .arg("-D")
            .arg(&self.cluster)
            .args(["-c", "listen_addresses=127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.socket_dir()))
            .stdout(log.try_clone()?)
            .stderr(log);
        // Dropped before it is ready (a stop signal while starting), the guard stops it.
        let mut child = OwnedChild::spawn(&mut command, "postgres", ON_DROP)?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.exited() {
                let output = children::log_since(&log_path, offset);
                let detail = format!("exited ({status}): {}", children::last_lines(&output, 4));
                return Err(if retryable(&output) {
                    Launch::Retry(detail)
                } else {
                    Launch::Failed(EmbeddedError::Command {
                        what: "starting PostgreSQL".into(),
                        detail,
                    })
                });
            }
            if ready_pid(&self.cluster) == Some(child.id())
                && self.connect("postgres").await.is_ok()
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Launch::Failed(EmbeddedError::Command {
                    what: "starting PostgreSQL".into(),
                    detail: format!("not ready within {START_TIMEOUT:?}"),
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        *self.slot() = Some(child);
        self.stopped.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn socket_dir(&self) -> String {
        // Unix socket paths are limited to 107 bytes; without room, TCP only.
        let path = self.cluster.display().to_string();
        if path.len() + 20 < 100 {
            path
        } else {
            String::new()
        }
    }
}

/// Whether a failed start is worth another try: the port was taken, or an old server's
/// processes still hold the shared memory a moment after it ended.
fn retryable(log: &str) -> bool {
    [
        "Address already in use",
        "could not create any TCP/IP sockets",
        "pre-existing shared memory block",
    ]
    .iter()
    .any(|needle| log.contains(needle))
}

/// The postmaster pid in `cluster/postmaster.pid` once its status line says `ready`.
fn ready_pid(cluster: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(cluster.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    // Line 8 is the status: `starting`, `ready`, `stopping`.
    (lines.nth(6)?.trim() == "ready").then_some(pid)
}

/// Ends a server of `cluster` left running by an earlier run (its process still runs from
/// that directory), and removes a `postmaster.pid` that no running server of it owns (its pid
/// may belong to another process by now, which would block the start).
pub(super) async fn end_leftover(cluster: &Path) -> Result<(), EmbeddedError> {
    let pid_file = cluster.join("postmaster.pid");
    let Ok(text) = std::fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let pid: Option<u32> = text.lines().next().and_then(|l| l.trim().parse().ok());
    if let Some(pid) = pid
        && children::is_running(pid)
        && serves(pid, cluster)
    {
        tracing::warn!(
            pid,
            "a PostgreSQL server of this DATA_DIR is still running (left by an earlier run); stopping it"
        );
        if !children::end_process(pid, LEFTOVER).await {
            return Err(EmbeddedError::Command {
                what: "stopping the PostgreSQL server left by an earlier run".into(),
                detail: format!("process {pid} did not end"),
            });
        }
    }
    match std::fs::remove_file(&pid_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Whether process `pid` is a PostgreSQL server of `cluster`: a postmaster works in its data
/// directory.
fn serves(pid: u32, cluster: &Path) -> bool {
    match children::working_dir(pid) {
        Some(dir) => dir == cluster,
        None => children::runs_program(pid, "postgres"),
    }
}

fn free_port() -> Result<u16, EmbeddedError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
