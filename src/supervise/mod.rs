//! Stage supervision: every long-running task of the service is spawned through here, so that
//! a stage that ends before the stop signal (an error, a panic, a closed input) is noticed at
//! once instead of at SIGTERM.
//!
//! In: stage futures with a [`Policy`]. Out: a [`Stages`] registry that `/health` reads (which
//! stages run, restart, stopped or failed, and why), and for [`Policy::Fatal`] stages a notice
//! of the first early end, on which the service runs its ordered stop and exits non-zero so
//! that the platform (Cloud Run, systemd) restarts the process. [`Policy::Restart`] stages are
//! started again with backoff while the service runs; they hold no channel that cannot be
//! rebuilt. The order of the stop is data: [`Phase::ORDER`], each stage tracked under the
//! phase it stops in ([`Phases`]).

mod lane;
mod phases;

pub use lane::{Lane, alive_tasks as lane_tasks};
pub use phases::{Phase, Phases};

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::equal_jitter;

/// What the service does when a stage ends before the stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Start it again after a backoff; the service keeps running.
    Restart,
    /// Run the ordered stop and exit non-zero: the stage owns state or a channel that only a
    /// fresh process rebuilds correctly.
    Fatal,
}

/// A stage's state as `/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Running,
    /// Ended early; waiting to be started again.
    Restarting,
    /// Ended after the stop signal, as asked.
    Stopped,
    /// Ended early; the service is stopping because of it.
    Failed,
}

/// One stage in the report.
#[derive(Debug, Clone, Serialize)]
pub struct StageView {
    pub state: StageState,
    pub policy: Policy,
    pub restarts: u64,
    /// Why it last ended early (error or panic message).
    pub last_error: Option<String>,
}

/// What `/health` shows of the stages.
#[derive(Debug, Clone, Serialize)]
pub struct StagesReport {
    pub stages: BTreeMap<&'static str, StageView>,
    /// Stages that are not running although no stop was asked (restarting or failed).
    pub failed: Vec<&'static str>,
}

#[derive(Debug)]
struct Entry {
    view: StageView,
    /// Ends this stage alone, as a fault would; see [`Stages::end_stage`].
    fault: CancellationToken,
}

/// The registry of stages; shared with `/health`.
#[derive(Debug, Default)]
pub struct Stages {
    entries: Mutex<BTreeMap<&'static str, Entry>>,
    stopping: std::sync::atomic::AtomicBool,
    /// Counts every change of a stage's state (and the stop): a cached `/health` answer is
    /// used only while it is unchanged.
    changes: std::sync::atomic::AtomicU64,
}

/// Counts a change when dropped (after the change it guards).
struct Changed<'a>(&'a Stages);

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        self.0.changed();
    }
}

/// How a stage's run ended.
type Outcome = Result<anyhow::Result<()>, String>;

impl Stages {
    pub fn new() -> Arc<Stages> {
        Arc::new(Stages::default())
    }

    /// The count of state changes so far (see [`Stages::report`]).
    pub fn generation(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn changed(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<&'static str, Entry>) -> R) -> R {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut entries)
    }

    fn register(&self, name: &'static str, policy: Policy) -> CancellationToken {
        self.changed();
        let fault = CancellationToken::new();
        self.with(|entries| {
            entries.insert(
                name,
                Entry {
                    view: StageView {
                        state: StageState::Running,
                        policy,
                        restarts: 0,
                        last_error: None,
                    },
                    fault: fault.clone(),
                },
            )
        });
        fault
    }

    fn set(&self, name: &'static str, state: StageState, error: Option<String>) {
        // Counted after the change: a reader that sees the new count sees the new state.
        let _changed = Changed(self);
        self.with(|entries| {
            if let Some(entry) = entries.get_mut(name) {
                entry.view.state = state;
                if state == StageState::Running && error.is_none() {
                    return;
                }
                if error.is_some() {
                    entry.view.last_error = error;
                }
                if state == StageState::Restarting {
                    entry.view.restarts += 1;
                }
            }
        });
    }

    /// The service is stopping: stages that end from now on ended as asked.
    pub fn begin_stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.changed();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Ends one stage now, as a fault would (its run returns early). The supervisor then
    /// handles it by its policy. Tests use it to check supervision end to end; operators have
    /// no route to it. Returns false for an unknown stage.
    pub fn end_stage(&self, name: &str) -> bool {
        self.with(|entries| {
            entries
                .get(name)
                .map(|entry| entry.fault.cancel())
                .is_some()
        })
    }

    pub fn report(&self) -> StagesReport {
        self.with(|entries| {
            let stages: BTreeMap<&'static str, StageView> = entries
                .iter()
                .map(|(name, entry)| (*name, entry.view.clone()))
                .collect();
            let failed = stages
                .iter()
                .filter(|(_, v)| matches!(v.state, StageState::Restarting | StageState::Failed))
                .map(|(name, _)| *name)
                .collect();
            StagesReport { stages, failed }
        })
    }
}

/// Spawns stages and tells the service about early ends of fatal ones.
#[derive(Debug)]
pub struct Supervisor {
    stages: Arc<Stages>,
    early_tx: mpsc::UnboundedSender<(&'static str, String)>,
    early_rx: mpsc::UnboundedReceiver<(&'static str, String)>,
    /// Backoff of restarted stages.
    restart_base: Duration,
    restart_cap: Duration,
}

impl Supervisor {
    pub fn new(stages: Arc<Stages>) -> Supervisor {
        let (early_tx, early_rx) = mpsc::unbounded_channel();
        Supervisor {
            stages,
            early_tx,
            early_rx,
            restart_base: Duration::from_millis(500),
            restart_cap: Duration::from_secs(30),
        }
    }

    /// Shorter restart backoff (tests).
    pub fn with_restart_backoff(mut self, base: Duration, cap: Duration) -> Supervisor {
        self.restart_base = base;
        self.restart_cap = cap;
        self
    }

    pub fn stages(&self) -> Arc<Stages> {
        self.stages.clone()
    }

    /// Spawns a stage that runs once. It gets a token that is cancelled by `stop` (its place
    /// in the ordered stop) or by a fault; an end before the service's stop is reported by
    /// [`Supervisor::early_end`]. The handle resolves once it has ended.
    pub fn spawn_fatal<F, Fut>(
        &self,
        name: &'static str,
        stop: &CancellationToken,
        stage: F,
    ) -> JoinHandle<()>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.spawn_fatal_on(&tokio::runtime::Handle::current(), name, stop, stage)
    }

    /// [`Supervisor::spawn_fatal`] on the runtime of `runtime` (a [`Lane`]'s): the stage and
    /// what it spawns run there.
    pub fn spawn_fatal_on<F, Fut>(
        &self,
        runtime: &tokio::runtime::Handle,
        name: &'static str,
        stop: &CancellationToken,
        stage: F,
    ) -> JoinHandle<()>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let fault = self.stages.register(name, Policy::Fatal);
        let token = either(stop, &fault);
        // Ends the watcher behind `token` once the stage has ended.
        let done = token.clone().drop_guard();
        let future = stage(token);
        let stages = self.stages.clone();
        let early = self.early_tx.clone();
        runtime.spawn(async move {
            let outcome = catch(future).await;
            drop(done);
            if stages.is_stopping() {
                report_end(name, &outcome);
                stages.set(name, StageState::Stopped, error_text(&outcome));
                return;
            }
            let why = error_text(&outcome).unwrap_or_else(|| "ended".to_owned());
            tracing::error!(stage = name, error = %why, "stage ended before the stop signal; stopping the service");
            stages.set(name, StageState::Failed, Some(why.clone()));
            let _ = early.send((name, why));
        })
    }

    /// Spawns a stage that is started again, with backoff, whenever it ends before `stop`.
    /// `stage` builds one run from a token.
    pub fn spawn_restarting<F, Fut>(
        &self,
        name: &'static str,
        stop: &CancellationToken,
        stage: F,
    ) -> JoinHandle<()>
    where
        F: Fn(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let mut fault = self.stages.register(name, Policy::Restart);
        let stages = self.stages.clone();
        let stop = stop.clone();
        let (base, cap) = (self.restart_base, self.restart_cap);
        tokio::spawn(async move {
            let mut attempt: u32 = 0;
            loop {
                let started = tokio::time::Instant::now();
                let token = either(&stop, &fault);
                let done = token.clone().drop_guard();
                let outcome = catch(stage(token)).await;
                // The run is over: its watcher task ends with it.
                drop(done);
                if stop.is_cancelled() || stages.is_stopping() {
                    report_end(name, &outcome);
                    stages.set(name, StageState::Stopped, error_text(&outcome));
                    return;
                }
                let why = error_text(&outcome).unwrap_or_else(|| "ended".to_owned());
                // A run that lasted a while starts the backoff over.
                if started.elapsed() > cap * 2 {
                    attempt = 0;
                }
                let delay = equal_jitter(base, cap, attempt, rand::random::<f64>());
                attempt = attempt.saturating_add(1);
                tracing::error!(stage = name, error = %why, retry_in = ?delay, "stage ended before the stop signal; restarting it");
                stages.set(name, StageState::Restarting, Some(why));
                tokio::select! {
                    () = stop.cancelled() => {
                        stages.set(name, StageState::Stopped, None);
                        return;
                    }
                    () = tokio::time::sleep(delay) => {}
                }
                // A fresh fault token for the next run.
                fault = stages.register_again(name);
                stages.set(name, StageState::Running, None);
                tracing::info!(stage = name, "stage restarted");
            }
        })
    }

    /// Resolves with the first fatal stage that ended before the stop, and why.
    pub async fn early_end(&mut self) -> (&'static str, String) {
        match self.early_rx.recv().await {
            Some(end) => end,
            // The sender lives in self: never closes.
            None => std::future::pending().await,
        }
    }
}

impl Stages {
    /// A new fault token for a restarted stage, keeping its counts.
    fn register_again(&self, name: &'static str) -> CancellationToken {
        let fault = CancellationToken::new();
        self.with(|entries| {
            if let Some(entry) = entries.get_mut(name) {
                entry.fault = fault.clone();
            }
        });
        fault
    }
}

/// A token cancelled when either is. The watcher task behind it ends when the token is
/// cancelled, so callers cancel it once the stage that uses it has ended.
fn either(a: &CancellationToken, b: &CancellationToken) -> CancellationToken {
    let token = a.child_token();
    let (b, child) = (b.clone(), token.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = b.cancelled() => child.cancel(),
            () = child.cancelled() => {}
        }
    });
    token
}

async fn catch(future: impl Future<Output = anyhow::Result<()>>) -> Outcome {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            format!("panicked: {message}")
        })
}

fn error_text(outcome: &Outcome) -> Option<String> {
    match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(panic) => Some(panic.clone()),
    }
}

fn report_end(name: &str, outcome: &Outcome) {
    match outcome {
        Ok(Ok(())) => tracing::info!(stage = name, "stage stopped"),
        Ok(Err(e)) => tracing::error!(stage = name, error = ?e, "stage failed while stopping"),
        Err(panic) => {
            tracing::error!(stage = name, error = %panic, "stage panicked while stopping")
        }
    }
}

#[cfg(test)]
mod tests;
