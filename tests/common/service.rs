//! The `spot-canvas` binary as a child process: started with a clean environment of exactly
//! the given variables, its log captured to a file, ready once it logged its port and
//! `/health` answers; stopped with SIGTERM and a deadline (and on drop, so that a failed test
//! leaves no service or embedded server behind).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::app::{AppEnv, STOP_WITHIN, health};

/// How long a start may take: creating the embedded database on a loaded CI is slow.
pub const READY_WITHIN: Duration = Duration::from_secs(120);

/// A running `spot-canvas serve`.
#[derive(Debug)]
pub struct Service {
    child: Child,
    pub port: u16,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Service {
    /// Starts `spot-canvas serve` with `env` (and `PATH`) only, its stderr into `log`, and
    /// waits until it is ready.
    pub async fn start(env: &AppEnv, log: &Path) -> Service {
        Service::start_with_args(&["serve"], env, log).await
    }

    pub async fn start_with_args(args: &[&str], env: &AppEnv, log: &Path) -> Service {
        let child = Command::new(env!("CARGO_BIN_EXE_spot-canvas"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.vars())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("the binary starts");
        let mut service = Service {
            child,
            port: 0,
            log: log.to_owned(),
            exited: None,
        };
        service.port = service.wait_for_port().await;
        let port = service.port;
        super::wait_for("/health to answer", READY_WITHIN, || async move {
            health(port).await.is_some()
        })
        .await;
        service
    }

    /// The port from the `listening` log line; panics with the log if the process ends first.
    async fn wait_for_port(&mut self) -> u16 {
        let log = self.log.clone();
        let child = &mut self.child;
        super::eventually("the service to log its port", READY_WITHIN, || {
            let port = log_lines(&log)
                .iter()
                .find(|v| v["message"] == "listening")
                .and_then(|v| v["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok());
            if port.is_none()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "the service exited ({status}) before it was ready:\n{}",
                    read_log(&log)
                );
            }
            std::future::ready(port)
        })
        .await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs (it has not exited, nor been reaped).
    pub fn running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Err(_) => false,
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Its JSON log lines so far (lines that are not JSON are skipped).
    pub fn log_lines(&self) -> Vec<Value> {
        log_lines(&self.log)
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
        super::app::wait_for_health(self.port, what, within, done).await
    }

    /// Sends `SIGTERM`.
    pub fn terminate(&self) {
        signal(self.pid(), "TERM");
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let child = &mut self.child;
        let status = super::eventually("the service to exit", within, || {
            std::future::ready(child.try_wait().expect("wait"))
        })
        .await;
        self.exited = Some(status);
        status
    }

    /// `SIGTERM`, then the exit within the service's grace period.
    pub async fn stop(&mut self) -> ExitStatus {
        self.terminate();
        self.wait_exit(STOP_WITHIN).await
    }

    /// The process ids of its children and their children.
    pub fn descendants(&self) -> Vec<u32> {
        let mut found = Vec::new();
        let mut parents = vec![self.pid()];
        while let Some(parent) = parents.pop() {
            for child in children_of(parent) {
                found.push(child);
                parents.push(child);
            }
        }
        found
    }
}

impl Drop for Service {
    /// A test that failed before the stop: SIGTERM so the service stops its embedded servers,
    /// then SIGKILL if it does not exit in time.
    fn drop(&mut self) {
        if self.exited.is_some() || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.terminate();
        let deadline = std::time::Instant::now() + STOP_WITHIN;
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            // Polling interval of the exit check, from synchronous code.
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `SIG<name>` to `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn log_lines(path: &Path) -> Vec<Value> {
    read_log(path)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Direct children of `pid`, from `/proc/*/stat`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces, so split after the last ')'.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// The environment of process `pid` as `NAME=value` entries (empty if unreadable).
pub fn environment_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|e| !e.is_empty())
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .collect()
        })
        .unwrap_or_default()
}
