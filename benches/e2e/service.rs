//! The service under test as a separate process: `target/release/spot-canvas serve` with a
//! clean environment, its JSON log in a file, ready once it logged its port and `/health`
//! answers; and what the bench reads of it from outside: CPU time and peak RSS from `/proc`,
//! the stream counters from `/metrics`, the open-files limit it inherits.
//!
//! In: the environment variables. Out: its port and pid, readings, a stop by SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `spot-canvas serve`.
#[derive(Debug)]
pub(crate) struct Service {
    child: Child,
    pub port: u16,
    log: PathBuf,
    http: reqwest::Client,
}

impl Service {
    /// Starts the release binary with `vars` (and `PATH`) only; waits until it is ready.
    pub(crate) async fn start(vars: &[(&str, String)], log: &Path) -> Service {
        let child = Command::new(env!("CARGO_BIN_EXE_spot-canvas"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("the service starts");
        let mut service = Service {
            child,
            port: 0,
            log: log.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client"),
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        service.port = loop {
            if let Some(port) = service.logged_port() {
                break port;
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!("the service exited ({status}):\n{}", service.log_text());
            }
            assert!(Instant::now() < deadline, "no port logged within 180 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        loop {
            let url = format!("http://127.0.0.1:{}/health/ready", service.port);
            if let Ok(r) = service.http.get(&url).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "not ready within 180 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        service
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn logged_port(&self) -> Option<u16> {
        self.log_text().lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["message"] == "listening")
                .then(|| v["port"].as_u64())
                .flatten()
                .and_then(|p| u16::try_from(p).ok())
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Log lines at WARNING or worse so far (`LOG_FORMAT=json`: Cloud Logging's severities).
    pub(crate) fn warnings(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                matches!(
                    v["severity"].as_str(),
                    Some("WARNING" | "ERROR" | "CRITICAL" | "ALERT" | "EMERGENCY")
                )
            })
            .map(str::to_owned)
            .collect()
    }

    /// User + system CPU time of the process (not of its children), in seconds.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(&self.pid().to_string())
    }

    /// Resets the peak resident set size (`VmHWM`) to the current one.
    pub(crate) fn reset_peak_rss(&self) {
        let path = format!("/proc/{}/clear_refs", self.pid());
        if let Err(e) = std::fs::write(&path, "5") {
            eprintln!("cannot reset the peak RSS ({path}: {e}): it is the process's whole life");
        }
    }

    /// Peak resident set size since the last reset, in MiB.
    pub(crate) fn peak_rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// A counter or gauge of `/metrics` (summed over its label sets).
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let Ok(r) = self.http.get(&url).send().await else {
            return f64::NAN;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The cumulative buckets of a histogram of `/metrics`: (upper bound in s, count); empty
    /// when it has no sample yet, `None` when `/metrics` could not be read.
    pub(crate) async fn histogram(&self, name: &str) -> Option<Vec<(f64, f64)>> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let r = self.http.get(&url).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        let text = r.text().await.ok()?;
        let prefix = format!("{name}_bucket{{");
        let buckets = text
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect();
        Some(buckets)
    }

    /// SIGTERM, then the exit within 20 s (SIGKILL after, with whatever it started).
    pub(crate) async fn stop(mut self) {
        signal(self.pid(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("the service did not stop within 20 s: killed");
        self.kill();
    }

    /// Whether the service still runs (its process exists and is not a zombie).
    pub(crate) fn running(&self) -> bool {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z" | "X") | None)
    }

    /// The service's log so far.
    pub(crate) fn log(&self) -> String {
        self.log_text()
    }

    /// SIGKILL to what the service started (its embedded PostgreSQL sits in a process group
    /// of its own, so it would outlive it), listed and signalled while the service still runs
    /// and holds them (no id can have been reused), then to the service, which is reaped.
    fn kill(&mut self) {
        for pid in descendants(self.pid()) {
            signal(pid, rustix::process::Signal::KILL);
        }
        let _gone = self.child.kill();
        let _reaped = self.child.wait();
    }
}

impl Drop for Service {
    /// A bench that panics or is interrupted still stops the service: SIGTERM, up to 10 s for
    /// its own stop (which stops its servers), then SIGKILL to it and what it started.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        signal(self.pid(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            // Dropping: no runtime to await on, a short blocking poll of the exit.
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Ok(pid) = i32::try_from(pid)
        && let Some(pid) = rustix::process::Pid::from_raw(pid)
    {
        let _gone = rustix::process::kill_process(pid, signal);
    }
}

/// The processes below `root`, from the parent ids in `/proc/<pid>/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The parent id is the second field after the command name (which may hold spaces).
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(parent) = parent {
            parent_of.push((pid, parent));
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, p) in &parent_of {
            if p == parent && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

/// User + system CPU time of `/proc/<pid>` (`self` for this process), in seconds.
pub(crate) fn process_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the first; utime and
    // stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// The whole machine's (busy, total) CPU time from `/proc/stat`, in seconds of all cores;
/// idle and iowait are not busy.
pub(crate) fn machine_cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let times: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: f64 = times.iter().take(8).sum();
    let idle = times.get(3).copied().unwrap_or(0.0) + times.get(4).copied().unwrap_or(0.0);
    ((total - idle) / clock_ticks(), total / clock_ticks())
}

/// `sysconf(_SC_CLK_TCK)`, from `getconf` (100 on Linux when it cannot be asked).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Raises this process's open-files limit (and so the service's, which inherits it): both
/// limits to `want` when allowed (root with `CAP_SYS_RESOURCE`), else the soft one up to the
/// hard one. Returns the (soft, hard) limits in force.
pub(crate) fn raise_open_files(want: u64) -> (u64, u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    if setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(want.max(hard)),
        },
    )
    .is_err()
    {
        let _unchanged = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want.min(hard)),
                maximum: now.maximum,
            },
        );
    }
    let now = getrlimit(Resource::Nofile);
    (
        now.current.unwrap_or(u64::MAX),
        now.maximum.unwrap_or(u64::MAX),
    )
}

/// The `p` quantile (0–1) of the change between two readings of a histogram, as the upper
/// bound of the bucket it falls in (seconds); NaN without observations.
pub(crate) fn bucket_quantile(
    before: Option<&[(f64, f64)]>,
    after: Option<&[(f64, f64)]>,
    p: f64,
) -> f64 {
    // A reading that failed would turn the window into the process's whole life.
    let (Some(before), Some(after)) = (before, after) else {
        return f64::NAN;
    };
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |&(_, n)| n);
            (le, n - was)
        })
        .collect();
    let total = delta.iter().map(|&(_, n)| n).fold(0.0, f64::max);
    if total <= 0.0 {
        return f64::NAN;
    }
    delta
        .iter()
        .find(|&&(_, n)| n >= p * total)
        .map_or(f64::NAN, |&(le, _)| le)
}
