//! The reconciler: whole history after gaps and restarts, history on a fresh database, and
//! checks against Coinbase's own REST candles.
//!
//! In: the feed's first subscribes, reconnects and sequence gaps (passed on by the engine),
//! Coinbase's REST candles and the stored candles. Out: [`Backfill`]s to the engine (REST
//! one-minute candles for each window of possibly missing trades, with the stored minutes
//! and revisions it needs to recompute the larger candles around them), history candles
//! written straight to the store (buckets before anything the engine holds), and cross-check
//! counts.
//!
//! Parts: `windows` (which spans a notice opens, when each is due), `scheduler` (the
//! bookkeeping between events, without a runtime), `backfill` (one window from REST into the
//! engine, and history), `crosscheck` (stored minutes against REST), `stats` (counters for
//! `/health`), [`rest`] (the paced REST client). This file is the async loop that moves
//! notices, timers and finished tasks through the scheduler.
//!
//! Windows: a first subscribe at `at` reaches back to the newest stored minute (or, with no
//! stored minute within the horizon, to the start of the day: the larger candles over it are
//! then whole) and at least the revision window before `at` (the subscribe snapshot may hold
//! trades that old); a reconnect covers `[disconnected_at, reconnected_at]`, a gap
//! `[since, at]`. Each is fetched once its last minute is complete and REST has settled.

mod backfill;
mod crosscheck;
pub mod rest;
mod scheduler;
mod stats;
mod windows;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::TimeDelta;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::candles::{Backfill, Timing};
use crate::config::Config;
use crate::model::{Clock, FeedEvent, ProductId};
use crate::store::Repository;

use crosscheck::Checked;
use scheduler::{Rules, Scheduler};

pub use rest::{CandleClient, RETRY_BASE, RestError};
pub use stats::{ReconcileReport, ReconcileStats};
pub use windows::WindowKind;

/// Reconciler tunables.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    pub rest_url: String,
    pub requests_per_second: u32,
    /// How far back a start reaches to close a gap; zero turns backfill off.
    pub horizon: TimeDelta,
    /// Buckets of each granularity a product without stored history gets from REST.
    pub history_buckets: u32,
    /// How often a round of REST cross-checks runs; `None`: never.
    pub check_interval: Option<Duration>,
    /// Wait after a window's last minute completes before asking REST (Coinbase caches
    /// public answers for a second).
    pub settle: Duration,
    /// Windows fetched at once.
    pub concurrency: usize,
    /// The engine's timing (grace and revision window).
    pub timing: Timing,
}

impl ReconcileSettings {
    pub fn from_config(config: &Config, timing: Timing) -> Self {
        ReconcileSettings {
            rest_url: config.coinbase_rest_url.clone(),
            requests_per_second: config.rest_requests_per_second,
            horizon: TimeDelta::hours(i64::from(config.backfill_horizon_hours)),
            history_buckets: config.history_buckets,
            check_interval: (config.crosscheck_interval_secs > 0)
                .then(|| Duration::from_secs(config.crosscheck_interval_secs)),
            settle: Duration::from_secs(5),
            concurrency: 4,
            timing,
        }
    }

    fn backfill_enabled(&self) -> bool {
        self.horizon > TimeDelta::zero()
    }

    /// What the scheduler needs of these settings.
    fn rules(&self) -> Rules {
        Rules {
            backfill: self.backfill_enabled(),
            concurrency: self.concurrency,
            grace: self.timing.grace,
            settle: self.settle,
        }
    }
}

/// The reconciler stage.
#[derive(Debug)]
pub struct Reconciler {
    worker: Worker,
    notices: mpsc::UnboundedReceiver<FeedEvent>,
}

/// What a running window or check needs (cheap to clone into tasks).
#[derive(Debug, Clone)]
struct Worker {
    settings: Arc<ReconcileSettings>,
    clock: Arc<dyn Clock>,
    client: CandleClient,
    repository: Repository,
    backfills: mpsc::Sender<Backfill>,
    stats: Arc<ReconcileStats>,
}

impl Reconciler {
    pub fn new(
        settings: ReconcileSettings,
        clock: Arc<dyn Clock>,
        repository: Repository,
        notices: mpsc::UnboundedReceiver<FeedEvent>,
        backfills: mpsc::Sender<Backfill>,
    ) -> Self {
        let client = CandleClient::new(&settings.rest_url, settings.requests_per_second);
        let stats = Arc::new(ReconcileStats {
            backfill_enabled: settings.backfill_enabled(),
            rest: client.stats(),
            ..ReconcileStats::default()
        });
        Reconciler {
            worker: Worker {
                settings: Arc::new(settings),
                clock,
                client,
                repository,
                backfills,
                stats,
            },
            notices,
        }
    }

    pub fn stats(&self) -> Arc<ReconcileStats> {
        self.worker.stats.clone()
    }
    /// Runs until the notices close (the engine stopped) or `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let settings = self.worker.settings.clone();
        let stats = self.worker.stats.clone();
        let mut scheduler = Scheduler::new(settings.rules());
        let mut running: JoinSet<()> = JoinSet::new();
        let mut tasks: BTreeMap<tokio::task::Id, ProductId> = BTreeMap::new();
        let mut checking: Option<tokio::task::JoinHandle<Vec<Checked>>> = None;
        let mut check_timer = settings.check_interval.map(|every| {
            let mut timer = tokio::time::interval(every);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        });
        loop {
            let wait = scheduler.next_due().map(|due| {
                (due - self.worker.clock.now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                () = cancel.cancelled() => break,
                notice = self.notices.recv() => match notice {
                    Some(notice) => {
                        let queued = scheduler.on_notice(&notice);
                        stats.windows_queued.fetch_add(queued, Ordering::Relaxed);
                    }
                    None => break,
                },
                () = sleep_or_never(wait) => {
                    for job in scheduler.take_ready(self.worker.clock.now()) {
                        let worker = self.worker.clone();
                        let product = job.product.clone();
                        let task = running.spawn(async move { worker.run_job(job).await });
                        tasks.insert(task.id(), product);
                    }
                }
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => {
                            stats.windows_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, "backfill task failed");
                            e.id()
                        }
                    };
                    if let Some(product) = tasks.remove(&id) {
                        scheduler.on_done(&product);
                    }
                }
                _ = tick_or_never(&mut check_timer), if !scheduler.checking() => {
                    if let Some(round) = scheduler.check_round() {
                        let worker = self.worker.clone();
                        checking = Some(tokio::spawn(worker.check_round(round)));
                    }
                }
                done = join_or_never(&mut checking) => {
                    checking = None;
                    let checked = done.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "cross-check round failed");
                        Vec::new()
                    });
                    let queued = scheduler.on_checked(checked);
                    stats.windows_queued.fetch_add(queued, Ordering::Relaxed);
                }
            }
            stats
                .pending
                .store(scheduler.pending() as u64, Ordering::Relaxed);
            stats
                .running
                .store(scheduler.running() as u64, Ordering::Relaxed);
        }
        running.abort_all();
        if let Some(checking) = checking {
            checking.abort();
        }
        Ok(())
    }
}

async fn sleep_or_never(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

async fn tick_or_never(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn join_or_never<T>(
    handle: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match handle {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}
