//! Processes that are not our children (a leftover of an earlier run): recognised through
//! `/proc` and ended by signals.
//!
//! In: a pid. Out: whether it runs, its working directory and command line, and its end.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use rustix::process::{Pid, kill_process};

use super::{AFTER_KILL, POLL, Signal, StopPlan};

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
