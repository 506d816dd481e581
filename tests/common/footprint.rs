//! A service process's footprint: its tokio tasks (from `/health` `process.tasks`) and its
//! resident memory (from `/proc/<pid>/status`, not from the service's own report), each the
//! lowest of a few samples so that a request in flight (the sampling's own among them) does
//! not count. Tests compare it before and after a disturbance: what keeps growing is a leak.

use std::time::Duration;

use super::Service;

/// Samples per reading, and the time between them.
const SAMPLES: usize = 5;
const BETWEEN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub tasks: usize,
    pub rss: u64,
}

impl std::fmt::Display for Footprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tasks, {} MiB resident", self.tasks, self.rss >> 20)
    }
}

/// Resident memory of `pid` in bytes; `None` once the process is gone.
pub fn rss_of(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The lowest tasks and memory of a few samples; `None` when the service does not answer.
pub async fn footprint(service: &Service) -> Option<Footprint> {
    let mut low: Option<Footprint> = None;
    for i in 0..SAMPLES {
        if i > 0 {
            // The interval between samples of a fluctuating figure, not a wait for an event.
            tokio::time::sleep(BETWEEN).await;
        }
        let (_, health) = service.health().await?;
        let tasks = health["process"]["tasks"].as_u64()? as usize;
        let rss = rss_of(service.pid())?;
        low = Some(match low {
            None => Footprint { tasks, rss },
            Some(l) => Footprint {
                tasks: l.tasks.min(tasks),
                rss: l.rss.min(rss),
            },
        });
    }
    low
}

/// Waits until the footprint is back within `tasks` and `rss` bytes of `baseline`; panics
/// naming `what` with the last reading when it does not come back within `within`.
pub async fn back_near(
    service: &Service,
    baseline: Footprint,
    (tasks, rss): (usize, u64),
    what: &str,
    within: Duration,
) -> Footprint {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = None;
    loop {
        if let Some(now) = footprint(service).await {
            last = Some(now);
            if now.tasks <= baseline.tasks + tasks && now.rss <= baseline.rss + rss {
                eprintln!("after {what}: {now} (baseline {baseline})");
                return now;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the footprint did not come back within {within:?}: {last:?}, baseline \
             {baseline}, allowed {tasks} tasks and {} MiB more\n{}",
            rss >> 20,
            service.log()
        );
    }
}
