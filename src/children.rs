//! The service's child processes (the embedded PostgreSQL and `nats-server`): started with a
//! minimal environment in their own process group, and never left running.
//!
//! In: a prepared [`Command`] and how the program is asked to stop (a [`StopPlan`]). Out: an
//! [`OwnedChild`] whose explicit [`OwnedChild::stop`] is the normal end and whose `Drop` stops
//! it when that did not happen (an error while starting, a dropped start on a stop signal, a
//! panic). Also: recognising and ending a leftover process of an earlier run through `/proc`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

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

/// Whether process `pid` exists and is not a zombie waiting to be reaped.
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`: comm may hold spaces and parentheses, the state follows the last `)`.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x") | None)
}

/// The working directory of process `pid`, when we may read it.
pub fn working_dir(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// The command line of process `pid` (empty when unknown).
pub fn command_line(pid: u32) -> Vec<OsString> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| std::ffi::OsStr::from_bytes(a).to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the program of process `pid` is named `program` (its first argument's file name).
pub fn runs_program(pid: u32, program: &str) -> bool {
    command_line(pid)
        .first()
        .and_then(|arg| Path::new(arg).file_name().map(|n| n == program))
        .unwrap_or(false)
}

/// Ends process `pid`, which is not our child (a leftover of an earlier run): each signal of
/// `plan` in turn, then SIGKILL. True when it is gone.
pub async fn end_process(pid: u32, plan: StopPlan) -> bool {
    let Some(target) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    let steps = plan.iter().copied().chain([(Signal::KILL, AFTER_KILL)]);
    for (signal, within) in steps {
        if !is_running(pid) {
            return true;
        }
        let _gone = kill_process(target, signal);
        let deadline = tokio::time::Instant::now() + within;
        while is_running(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
    }
    !is_running(pid)
}

/// The bytes appended to a log file since `offset`, as text (for a start's error).
pub fn log_since(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _read = file.take(64 * 1024).read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The last `n` lines of `text`, joined with ` | ` (for an error message).
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Opens `path` for appending (created if missing) and returns it with its current length:
/// a child's output goes there, and what it wrote since is read from that offset.
pub fn append_log(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let offset = file.metadata()?.len();
    Ok((file, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: StopPlan = &[(Signal::TERM, Duration::from_secs(5))];
    const SHORT: StopPlan = &[(Signal::TERM, Duration::from_millis(200))];

    /// `sh -c script`, where the script starts a process in its group and prints its pid
    /// first: the child and that pid. Its input is a pipe (closing it ends a `read`).
    fn with_grandchild(script: &str, plan: StopPlan) -> (OwnedChild, u32) {
        let mut command = Command::new("sh");
        command
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = OwnedChild::spawn(&mut command, "sh", plan).expect("sh starts");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("the grandchild's pid");
        let grandchild: u32 = line.trim().parse().expect("pid");
        (child, grandchild)
    }

    #[test]
    fn a_dropped_child_and_its_process_group_are_stopped() {
        // A shell that ignores SIGTERM and keeps a grandchild in its group: only the final
        // SIGKILL to the group ends both.
        let (child, grandchild) = with_grandchild("trap '' TERM; sleep 600 & echo $!; wait", SHORT);
        let pid = child.id();
        assert!(is_running(pid) && is_running(grandchild));
        drop(child);
        assert!(!is_running(pid), "the child was left running");
        // The grandchild is not ours to reap: it may linger as a zombie of init, not running.
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_running(grandchild) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        assert!(!is_running(grandchild), "its group was left running");
    }

    #[tokio::test]
    async fn a_child_that_exits_on_sigterm_leaves_nothing_of_its_group_running() {
        // As initdb stopped half-way: the child goes at SIGTERM, a process it started in its
        // group (here one that ignores SIGTERM) would stay.
        let (mut child, grandchild) = with_grandchild(
            "sh -c \"trap '' TERM; exec sleep 600\" & echo $!; wait",
            QUICK,
        );
        assert!(is_running(grandchild));
        let status = child.stop(QUICK).await.expect("it exited");
        assert!(!status.success(), "ended by SIGTERM: {status}");
        // Killed and waited for by the stop; a zombie of init at most.
        assert!(!is_running(grandchild), "its group was left running");
    }

    #[test]
    fn a_child_that_exits_by_itself_leaves_nothing_of_its_group_running() {
        // As an initdb that fails on its own: its exit is seen by a caller watching it, and a
        // process it started in its group must not stay.
        let (mut child, grandchild) = with_grandchild(
            "sh -c \"trap '' TERM; exec sleep 600\" & echo $!; read _ ; exit 3",
            QUICK,
        );
        assert!(is_running(grandchild));
        assert_eq!(child.exited(), None, "it waits for its input");
        // Closing its input ends it (`read` returns at end of file).
        drop(child.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.exited() {
                break status;
            }
            assert!(Instant::now() < deadline, "the child did not exit");
            std::thread::sleep(POLL);
        };
        assert_eq!(status.code(), Some(3));
        // Killed when the exit was seen; a zombie of init at most.
        let deadline = Instant::now() + Duration::from_secs(2);
        while is_running(grandchild) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        assert!(!is_running(grandchild), "its group was left running");
        assert_eq!(child.stop_blocking(QUICK), Some(status), "stopped once");
    }

    #[test]
    fn a_child_stopped_in_order_is_not_stopped_again_and_the_environment_is_minimal() {
        let mut command = Command::new("sh");
        command.args(["-c", "env; exec sleep 600"]);
        minimal_env(&mut command).stdout(std::process::Stdio::piped());
        let mut child = OwnedChild::spawn(&mut command, "sh", QUICK).expect("sh starts");
        let mut env = String::new();
        let mut out = std::io::BufReader::new(child.child.stdout.take().expect("stdout"));
        while !env.contains("LANG=") {
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut out, &mut line).expect("env") == 0 {
                break;
            }
            env.push_str(&line);
        }
        let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
        for name in &names {
            assert!(
                ["PATH", "LANG", "PWD", "SHLVL", "_"].contains(name),
                "unexpected variable {name}"
            );
        }
        let status = child.stop_blocking(QUICK).expect("it ends on SIGTERM");
        assert!(!status.success());
        assert!(child.exited().is_some());
        drop(child);
    }

    #[test]
    fn a_reaped_process_does_not_count_as_running() {
        assert!(is_running(std::process::id()));
        let mut done = Command::new("true").spawn().expect("true starts");
        let pid = done.id();
        done.wait().expect("reaped");
        assert!(!is_running(pid));
    }
}
