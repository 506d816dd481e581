//! The service's child processes (the embedded PostgreSQL and `nats-server`): started with a
//! minimal environment in their own process group, and never left running.
//!
//! In: a prepared [`Command`] and how the program is asked to stop (a [`StopPlan`]). Out: an
//! [`OwnedChild`] whose explicit [`OwnedChild::stop`] is the normal end and whose `Drop` stops
//! it when that did not happen (an error while starting, a dropped start on a stop signal, a
//! panic). Also: recognising and ending a leftover process of an earlier run through `/proc`.

mod leftover;
mod logs;
#[cfg(test)]
mod tests;

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub use leftover::{command_line, end_process, is_running, runs_program, working_dir};
pub use logs::{append_log, last_lines, log_since};
pub use rustix::process::Signal;
use rustix::process::{
    Pid, WaitId, WaitIdOptions, kill_process, kill_process_group, test_kill_process_group, waitid,
};

/// How often a stopping process is looked at.
const POLL: Duration = Duration::from_millis(20);
/// How long a process gets after SIGKILL to be gone (it cannot refuse; only a stuck disk
/// delays it).
const AFTER_KILL: Duration = Duration::from_secs(10);
/// How long the rest of a stopped child's process group gets to go after SIGKILL.
const GROUP_GONE: Duration = Duration::from_secs(2);

/// How a program is asked to stop: each signal in turn, each followed by the time it gets to
/// end; after the last, SIGKILL to its whole process group.
pub type StopPlan = &'static [(Signal, Duration)];

/// The environment a child gets: nothing of ours (no key, no password, no `DATABASE_URL`),
/// only `PATH` (to find its own helpers) and the plain C locale. Callers add what their
/// program needs.
pub fn minimal_env(command: &mut Command) -> &mut Command {
    command.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command.env("LANG", "C")
}

/// A running child in its own process group (a Ctrl-C in the terminal reaches the service,
/// which then stops the child in order, instead of both at once).
#[derive(Debug)]
pub struct OwnedChild {
    child: Child,
    name: &'static str,
    /// How `Drop` stops it.
    on_drop: StopPlan,
    exited: Option<ExitStatus>,
    /// The leader's process group when something was left in it at the leader's exit (and
    /// was sent SIGKILL): a stop waits a moment for it to be gone.
    left_over: Option<Pid>,
}

impl OwnedChild {
    /// Spawns `command` in a new process group.
    pub fn spawn(
        command: &mut Command,
        name: &'static str,
        on_drop: StopPlan,
    ) -> std::io::Result<OwnedChild> {
        use std::os::unix::process::CommandExt;
        let child = command.process_group(0).spawn()?;
        Ok(OwnedChild {
            child,
            name,
            on_drop,
            exited: None,
            left_over: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status once it ended (and it is reaped); `None` while it runs.
    ///
    /// However the exit is seen (a stop, or a caller watching a child that ends by itself),
    /// what is left of its process group goes with it: initdb's `postgres` can outlive an
    /// initdb that failed or was stopped half-way. The exit is first seen without reaping, so
    /// the zombie still holds the leader's id and the group's id names only our group.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let Some(pid) = self.pid() else {
            return self.reap();
        };
        let seen = waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        );
        match seen {
            Ok(Some(_)) => {
                // An error is ESRCH: nothing else was in the group.
                if kill_process_group(pid, Signal::KILL).is_ok() {
                    self.left_over = Some(pid);
                }
                self.reap()
            }
            Ok(None) => None,
            // ECHILD (reaped elsewhere) or EINTR: what the standard library's wait says.
            Err(_) => self.reap(),
        }
    }

    /// Reaps the leader if it has exited.
    fn reap(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.exited = Some(status);
        }
        self.exited
    }

    fn pid(&self) -> Option<Pid> {
        Pid::from_raw(i32::try_from(self.child.id()).ok()?)
    }

    /// Sends `signal` to the process (not its group) while it runs.
    pub fn signal(&mut self, signal: Signal) {
        if self.exited().is_none()
            && let Some(pid) = self.pid()
        {
            let _gone = kill_process(pid, signal);
        }
    }

    /// SIGKILL to the group of a leader not reaped yet (its id still names the group).
    fn kill_group(&self) {
        if let Some(pid) = self.pid() {
            let _gone = kill_process_group(pid, Signal::KILL);
        }
    }

    /// SIGKILL to the group (the leader is not reaped yet, so its id still names the group),
    /// then reaps the leader.
    fn kill(&mut self) -> Option<ExitStatus> {
        if self.exited().is_some() {
            return self.exited;
        }
        self.kill_group();
        let deadline = Instant::now() + AFTER_KILL;
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        self.exited
    }

    /// Stops it following `plan`, waiting between steps without blocking the runtime; then
    /// waits a moment for what was left of its group (killed at the leader's exit) to go.
    pub async fn stop(&mut self, plan: StopPlan) -> Option<ExitStatus> {
        let exited = self.stop_steps(plan).await;
        if let Some(group) = self.left_over.take() {
            let deadline = tokio::time::Instant::now() + GROUP_GONE;
            while test_kill_process_group(group).is_ok() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
        }
        exited
    }

    async fn stop_steps(&mut self, plan: StopPlan) -> Option<ExitStatus> {
        for &(signal, within) in plan {
            if self.exited().is_some() {
                break;
            }
            self.signal(signal);
            let deadline = tokio::time::Instant::now() + within;
            while self.exited().is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
        }
        // [`OwnedChild::kill`] without blocking the runtime while the group goes.
        if self.exited().is_none() {
            self.kill_group();
            let deadline = tokio::time::Instant::now() + AFTER_KILL;
            while self.exited().is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
        }
        self.exited
    }

    /// Stops it following `plan` from synchronous code (blocks for at most the plan's total).
    pub fn stop_blocking(&mut self, plan: StopPlan) -> Option<ExitStatus> {
        let exited = self.stop_steps_blocking(plan);
        if let Some(group) = self.left_over.take() {
            let deadline = Instant::now() + GROUP_GONE;
            while test_kill_process_group(group).is_ok() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        exited
    }

    fn stop_steps_blocking(&mut self, plan: StopPlan) -> Option<ExitStatus> {
        for &(signal, within) in plan {
            if self.exited().is_some() {
                break;
            }
            self.signal(signal);
            let deadline = Instant::now() + within;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        self.kill()
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        if self.exited().is_none() {
            tracing::warn!(
                child = self.name,
                pid = self.child.id(),
                "stopping a child process that was not stopped in order"
            );
            self.stop_blocking(self.on_drop);
        }
    }
}
