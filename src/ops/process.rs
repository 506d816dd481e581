//! The process itself: its id, the tokio tasks alive, its threads and resident memory.
//!
//! In: the current tokio runtime and, on Linux, `/proc/self`. Out: a [`ProcessReport`] for
//! `/health` (`process`) and the gauges `spot_canvas_runtime_tasks`,
//! `process_resident_memory_bytes` and `process_threads` on `/metrics`. An operator (and the
//! fault suite) compares them before and after a disturbance: tasks or memory that keep
//! growing after every reconnect are a leak.

use serde::Serialize;

/// What the process looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// Tokio tasks spawned and not yet finished, on the runtime and every lane of the process
    /// (`None` outside a runtime). A service process has one runtime and one lane; a test
    /// process holding several services counts all of theirs.
    pub tasks: Option<usize>,
    /// Resident set size in bytes (`None` where `/proc` does not tell).
    pub rss_bytes: Option<u64>,
    /// OS threads of the process (`None` where `/proc` does not tell).
    pub threads: Option<u64>,
}

impl ProcessReport {
    /// Reads the figures now: a few small reads of `/proc/self`, no allocation worth noting.
    pub fn now() -> ProcessReport {
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let field = |name: &str| status.as_deref().and_then(|s| status_field(s, name));
        ProcessReport {
            pid: std::process::id(),
            tasks: tokio::runtime::Handle::try_current()
                .ok()
                .map(|h| h.metrics().num_alive_tasks() + crate::supervise::lane_tasks()),
            rss_bytes: field("VmRSS:").and_then(|kib| kib.checked_mul(1024)),
            threads: field("Threads:"),
        }
    }
}

/// The number after `name` in `/proc/<pid>/status` (`VmRSS:   1234 kB` gives 1234).
fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_by_name_and_unit_free() {
        let status = "Name:\tspot-canvas\nVmHWM:\t  9000 kB\nVmRSS:\t  8192 kB\nThreads:\t7\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(8192));
        assert_eq!(status_field(status, "Threads:"), Some(7));
        assert_eq!(status_field(status, "VmSwap:"), None);
        assert_eq!(status_field("VmRSS:\tlots kB\n", "VmRSS:"), None);
    }

    #[tokio::test]
    async fn the_report_counts_this_runtimes_tasks_and_reads_proc() {
        let before = ProcessReport::now();
        assert_eq!(before.pid, std::process::id());
        let tasks = before.tasks.expect("inside a runtime");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let held = tokio::spawn(async move {
            let _ = rx.await;
        });
        assert_eq!(ProcessReport::now().tasks, Some(tasks + 1));
        drop(tx);
        held.await.expect("ends");
        assert_eq!(ProcessReport::now().tasks, Some(tasks));
        if cfg!(target_os = "linux") {
            assert!(before.rss_bytes > Some(1 << 20), "{before:?}");
            assert!(before.threads >= Some(1), "{before:?}");
        }
        assert_eq!(
            std::thread::spawn(ProcessReport::now)
                .join()
                .expect("joins")
                .tasks,
            None
        );
    }
}
