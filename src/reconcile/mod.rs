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
//! Windows: a first subscribe at `at` reaches back to the newest stored minute (or, with no
//! stored minute within the horizon, to the start of the day: the larger candles over it are
//! then whole) and at least the revision window before `at` (the subscribe snapshot may hold
//! trades that old); a reconnect covers `[disconnected_at, reconnected_at]`, a gap
//! `[since, at]`. Each is fetched once its last minute is complete and REST has settled.

pub mod rest;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::equal_jitter;
use crate::candles::crosscheck::{CheckCounts, CheckReport, CrossCheck, compare};
use crate::candles::{Backfill, Timing};
use crate::coinbase::pacer::Priority;
use crate::config::Config;
use crate::model::FeedEvent;
use crate::model::{Candle, CandleUpdate, Clock, Granularity, TradeId};
use crate::store::Repository;

pub use rest::{CandleClient, RestError};

/// Products compared with REST per cross-check round.
const CHECK_PRODUCTS_PER_ROUND: usize = 10;
/// Minutes compared per product at most (the first round of a product).
const CHECK_MINUTES: i64 = 30;
/// How far before the last frame received a reconnect or gap window begins.
const WINDOW_MARGIN: TimeDelta = TimeDelta::seconds(5);
/// Attempts of a whole window (REST pages retry on their own) before it is given up.
const JOB_ATTEMPTS: u32 = 10;

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
}

/// Why a window's trades may be missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// From the stored history (or a day boundary) up to the minute of a first subscribe:
    /// fetched at once.
    Start,
    /// The minute of a first subscribe, once it is complete.
    StartEdge,
    Reconnect,
    Gap,
    /// Minutes the REST cross-check found wrong.
    Repair,
}

/// The history a start fills in before its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum History {
    /// The store holds recent minutes: the window bridges to them.
    None,
    /// Nothing stored: fill holes.
    Fresh,
    /// The newest stored minute is older than the horizon: fill holes, and replace the
    /// buckets from that minute's on (they may be partial).
    Stale { newest: i64 },
}

/// What a cross-check round found for one product.
#[derive(Debug)]
struct Checked {
    product: String,
    /// Minutes before this were compared.
    until: i64,
    /// Starts of the minutes that did not match REST.
    wrong: Vec<i64>,
}

/// A window of one product to backfill.
#[derive(Debug, Clone)]
struct Job {
    product: String,
    kind: WindowKind,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// Counters for `/health`.
#[derive(Debug, Default)]
pub struct ReconcileStats {
    backfill_enabled: bool,
    windows_queued: AtomicU64,
    windows_done: AtomicU64,
    windows_failed: AtomicU64,
    minutes_fetched: AtomicU64,
    history_candles: AtomicU64,
    pending: AtomicU64,
    rest: Arc<rest::RestStats>,
    /// Complete one-minute candles compared with REST.
    pub rest_1m: CheckCounts,
    /// REST minutes we have no candle for.
    rest_1m_missing: AtomicU64,
}

/// What `/health` shows of the reconciler.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    pub backfill_enabled: bool,
    pub windows_queued: u64,
    pub windows_done: u64,
    pub windows_failed: u64,
    pub windows_pending: u64,
    pub minutes_fetched: u64,
    pub history_candles: u64,
    pub rest_requests: u64,
    pub rest_retries: u64,
    pub rest_failures: u64,
    pub crosscheck_rest_1m: CheckReport,
    pub crosscheck_rest_1m_missing: u64,
}

impl ReconcileStats {
    pub fn report(&self) -> ReconcileReport {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReconcileReport {
            backfill_enabled: self.backfill_enabled,
            windows_queued: load(&self.windows_queued),
            windows_done: load(&self.windows_done),
            windows_failed: load(&self.windows_failed),
            windows_pending: load(&self.pending),
            minutes_fetched: load(&self.minutes_fetched),
            history_candles: load(&self.history_candles),
            rest_requests: load(&self.rest.requests),
            rest_retries: load(&self.rest.retries),
            rest_failures: load(&self.rest.failures),
            crosscheck_rest_1m: self.rest_1m.report(),
            crosscheck_rest_1m_missing: load(&self.rest_1m_missing),
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
        let mut pending: Vec<Job> = Vec::new();
        let mut running: JoinSet<()> = JoinSet::new();
        let mut busy: BTreeSet<String> = BTreeSet::new();
        let mut tasks: BTreeMap<tokio::task::Id, String> = BTreeMap::new();
        let mut products: BTreeSet<String> = BTreeSet::new();
        let mut checked_until: BTreeMap<String, i64> = BTreeMap::new();
        let mut rotation = 0usize;
        let mut checking: Option<tokio::task::JoinHandle<Vec<Checked>>> = None;
        let mut check_timer = settings.check_interval.map(|every| {
            let mut timer = tokio::time::interval(every);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        });
        loop {
            let next_due = pending
                .iter()
                .filter(|j| !busy.contains(&j.product))
                .map(|j| self.worker.due(j))
                .min();
            let wait = next_due.map(|due| {
                (due - self.worker.clock.now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
            });
            let can_start = running.len() < settings.concurrency;
            tokio::select! {
                () = cancel.cancelled() => break,
                notice = self.notices.recv() => match notice {
                    Some(notice) => {
                        if let FeedEvent::Subscribed { products: new, .. } = &notice {
                            products.extend(new.iter().cloned());
                        }
                        if settings.backfill_enabled() {
                            for job in jobs_of(&notice) {
                                self.worker.stats.windows_queued.fetch_add(1, Ordering::Relaxed);
                                queue(&mut pending, job);
                            }
                        }
                    }
                    None => break,
                },
                () = sleep_or_never(wait), if can_start => {
                    let now = self.worker.clock.now();
                    while running.len() < settings.concurrency {
                        let Some(i) = pending.iter().position(|j| {
                            !busy.contains(&j.product) && self.worker.due(j) <= now
                        }) else {
                            break;
                        };
                        let job = pending.remove(i);
                        busy.insert(job.product.clone());
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
                            self.worker.stats.windows_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, "backfill task failed");
                            e.id()
                        }
                    };
                    if let Some(product) = tasks.remove(&id) {
                        busy.remove(&product);
                    }
                }
                _ = tick_or_never(&mut check_timer), if checking.is_none() => {
                    let list: Vec<String> = products
                        .iter()
                        .filter(|p| !busy.contains(*p) && !pending.iter().any(|j| &j.product == *p))
                        .cloned()
                        .collect();
                    if !list.is_empty() {
                        let size = CHECK_PRODUCTS_PER_ROUND.min(list.len());
                        let round: Vec<(String, Option<i64>)> = (0..size)
                            .map(|k| {
                                let p = list[(rotation + k) % list.len()].clone();
                                let since = checked_until.get(&p).copied();
                                (p, since)
                            })
                            .collect();
                        rotation = rotation.wrapping_add(round.len());
                        let worker = self.worker.clone();
                        checking = Some(tokio::spawn(worker.check_round(round)));
                    }
                }
                done = join_or_never(&mut checking) => {
                    checking = None;
                    match done {
                        Ok(checked) => {
                            for c in checked {
                                // A wrong minute is taken again from REST.
                                for &minute in &c.wrong {
                                    if settings.backfill_enabled() {
                                        let queued = &self.worker.stats.windows_queued;
                                        queued.fetch_add(1, Ordering::Relaxed);
                                        queue(&mut pending, Job {
                                            product: c.product.clone(),
                                            kind: WindowKind::Repair,
                                            from: at(minute),
                                            to: at(minute + 60),
                                        });
                                    }
                                }
                                checked_until.insert(c.product, c.until);
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "cross-check round failed"),
                    }
                }
            }
            self.worker
                .stats
                .pending
                .store(pending.len() as u64, Ordering::Relaxed);
        }
        running.abort_all();
        if let Some(checking) = checking {
            checking.abort();
        }
        Ok(())
    }
}

/// The windows a feed notice opens, per product.
fn jobs_of(notice: &FeedEvent) -> Vec<Job> {
    let (kind, products, from, to) = match notice {
        FeedEvent::Subscribed { products, at, .. } => {
            // The complete minutes before the subscribe can be fetched now (a chart gets its
            // history at once); the minute of the subscribe once it is over.
            let minute = self::at(Granularity::OneMinute.bucket_start_secs(at.timestamp()));
            return products
                .iter()
                .flat_map(|product| {
                    [
                        Job {
                            product: product.clone(),
                            kind: WindowKind::Start,
                            from: minute,
                            to: minute,
                        },
                        Job {
                            product: product.clone(),
                            kind: WindowKind::StartEdge,
                            from: minute,
                            to: *at,
                        },
                    ]
                })
                .collect();
        }
        FeedEvent::Reconnected {
            products,
            disconnected_at,
            reconnected_at,
            ..
        } => (
            WindowKind::Reconnect,
            products,
            *disconnected_at,
            *reconnected_at,
        ),
        FeedEvent::Gap {
            products,
            since,
            at,
            ..
        } => (WindowKind::Gap, products, *since, *at),
        _ => return Vec::new(),
    };
    // A lost frame carries trades from up to a batch interval before it was sent, which may
    // be before the last frame received (of another product or channel): reach back a little.
    let from = from - WINDOW_MARGIN;
    products
        .iter()
        .map(|product| Job {
            product: product.clone(),
            kind,
            from: from.min(to),
            to,
        })
        .collect()
}

/// Adds a job, merging it into a waiting window of the same product (one wider window).
/// A start window stays apart: it decides its own beginning from the store.
fn queue(pending: &mut Vec<Job>, job: Job) {
    let mergeable = |j: &Job| j.product == job.product && j.kind != WindowKind::Start;
    match pending.iter_mut().find(|j| mergeable(j)) {
        Some(waiting) if job.kind != WindowKind::Start => {
            waiting.from = waiting.from.min(job.from);
            waiting.to = waiting.to.max(job.to);
        }
        _ => pending.push(job),
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

/// Unix seconds rounded up to the minute.
fn ceil_minute(t: DateTime<Utc>) -> i64 {
    Granularity::OneMinute.bucket_start_secs(t.timestamp() + 59)
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

impl Worker {
    /// When a window can be fetched: its last minute complete, plus the settle time.
    fn due(&self, job: &Job) -> DateTime<Utc> {
        let settle = TimeDelta::from_std(self.settings.settle).unwrap_or_default();
        at(ceil_minute(job.to)) + self.settings.timing.grace + settle
    }

    /// Backfills one window, retrying the whole of it a few times.
    async fn run_job(self, job: Job) {
        let mut attempt = 0;
        loop {
            match self.backfill(&job).await {
                Ok(()) => {
                    self.stats.windows_done.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) if attempt + 1 < JOB_ATTEMPTS => {
                    let delay = equal_jitter(
                        Duration::from_secs(2),
                        Duration::from_secs(60),
                        attempt,
                        rand::rng().random::<f64>(),
                    );
                    tracing::warn!(
                        product = %job.product,
                        kind = ?job.kind,
                        error = %e,
                        attempt,
                        "backfill failed, retrying"
                    );
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    self.stats.windows_failed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("spot_canvas_backfill_failures_total").increment(1);
                    tracing::error!(
                        product = %job.product,
                        kind = ?job.kind,
                        from = %job.from,
                        to = %job.to,
                        error = %e,
                        "backfill given up: these minutes stay as the live feed built them"
                    );
                    return;
                }
            }
        }
    }

    async fn backfill(&self, job: &Job) -> anyhow::Result<()> {
        let minute = Granularity::OneMinute;
        let (from, history) = match job.kind {
            WindowKind::Start => self.start_of(&job.product, job.to).await?,
            WindowKind::StartEdge
            | WindowKind::Reconnect
            | WindowKind::Gap
            | WindowKind::Repair => (job.from, History::None),
        };
        let from = minute.bucket_start_secs(from.timestamp());
        let to = ceil_minute(job.to);
        if to <= from {
            return Ok(());
        }
        let minutes = self
            .client
            .candles(&job.product, minute, from, to, Priority::High)
            .await?;
        let day = Granularity::OneDay;
        let (first, end) = (
            day.bucket_start_secs(from),
            day.bucket_start_secs(to - 1) + day.seconds(),
        );
        let stored = self
            .repository
            .candles_between(&job.product, at(first), at(end))
            .await?;
        let context: Vec<Candle> = stored
            .iter()
            .filter(|s| s.candle.granularity == minute)
            .filter(|s| !(from..to).contains(&s.candle.start.timestamp()))
            .map(|s| s.candle.clone())
            .collect();
        let revisions = stored
            .iter()
            .map(|s| (s.candle.granularity, s.candle.start.timestamp(), s.revision))
            .collect();
        let fetched = minutes.len() as u64;
        tracing::info!(
            product = %job.product,
            kind = ?job.kind,
            from = %at(from),
            to = %at(to),
            minutes = fetched,
            context = context.len(),
            "backfilling"
        );
        self.backfills
            .send(Backfill {
                product_id: job.product.clone(),
                from,
                to,
                minutes,
                context,
                stored: revisions,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the engine stopped"))?;
        self.stats
            .minutes_fetched
            .fetch_add(fetched, Ordering::Relaxed);
        if history != History::None {
            self.fill_history(&job.product, from, history).await?;
        }
        Ok(())
    }

    /// Where a start window begins, and what history the product needs before it.
    async fn start_of(
        &self,
        product: &str,
        subscribed: DateTime<Utc>,
    ) -> anyhow::Result<(DateTime<Utc>, History)> {
        let now = self.clock.now();
        // The subscribe snapshot may carry trades this old: minutes from here on may already
        // hold this process's own (partial) candles, so they do not count as stored history.
        let reach = subscribed - self.settings.timing.revision_window - TimeDelta::minutes(1);
        let newest = self.repository.newest_minute(product, reach).await?;
        Ok(match newest {
            Some(newest) if newest >= now - self.settings.horizon => {
                (newest.min(reach), History::None)
            }
            _ => {
                // Nothing recent stored: start at a day boundary, so every larger candle
                // over the window is built from whole minutes.
                let day = Granularity::OneDay.bucket_start(reach);
                let history = match (self.settings.history_buckets, newest) {
                    (0, _) => History::None,
                    (_, None) => History::Fresh,
                    (_, Some(newest)) => History::Stale {
                        newest: newest.timestamp(),
                    },
                };
                (day, history)
            }
        })
    }

    /// Writes REST candles of every granularity for the buckets before `until` (which the
    /// engine does not hold) among the newest `history_buckets` of each. Elsewhere existing
    /// rows win (a history candle has the lowest version its bucket can have), but from the
    /// bucket of a stale product's newest stored minute on, where the stored candles may be
    /// partial (the service stopped in them), REST replaces them with a higher revision.
    async fn fill_history(
        &self,
        product: &str,
        until: i64,
        history: History,
    ) -> anyhow::Result<()> {
        let now = self.clock.now();
        let n = i64::from(self.settings.history_buckets);
        let mut written = 0u64;
        for g in Granularity::ALL {
            let from = g.bucket_start_secs(now.timestamp()) - (n - 1) * g.seconds();
            if from >= until {
                continue;
            }
            let candles = self
                .client
                .candles(product, g, from, until, Priority::Low)
                .await?;
            let replace_from = match history {
                History::Stale { newest } => Some(g.bucket_start_secs(newest).max(from)),
                History::None | History::Fresh => None,
            };
            let mut stored: BTreeMap<i64, u32> = BTreeMap::new();
            if let Some(replace_from) = replace_from.filter(|&r| r < until) {
                let rows = self
                    .repository
                    .candles(product, g, at(replace_from), at(until), n as u32 + 1)
                    .await?;
                stored.extend(
                    rows.iter()
                        .map(|r| (r.candle.start.timestamp(), r.revision)),
                );
            }
            let updates: Vec<CandleUpdate> = candles
                .into_iter()
                .map(|candle| {
                    let start = candle.start.timestamp();
                    let revision = match replace_from {
                        Some(r) if start >= r => {
                            stored.get(&start).map_or(0, |r| r.saturating_add(1))
                        }
                        _ => 0,
                    };
                    CandleUpdate {
                        complete: true,
                        revision,
                        counted_trades: 0,
                        last_trade_id: TradeId(0),
                        last_trade_time: candle.end(),
                        last_received: now,
                        candle,
                    }
                })
                .collect();
            written += self.repository.upsert_candles(&updates).await?;
        }
        self.stats
            .history_candles
            .fetch_add(written, Ordering::Relaxed);
        tracing::info!(product, written, ?history, "history filled from REST");
        Ok(())
    }

    /// Compares the complete one-minute candles stored since the last check of each product
    /// with REST's. Returns how far each product was checked, and the wrong minutes.
    async fn check_round(self, round: Vec<(String, Option<i64>)>) -> Vec<Checked> {
        let minute = Granularity::OneMinute;
        let lag = self.settings.timing.grace
            + TimeDelta::from_std(self.settings.settle * 2).unwrap_or_default();
        let to = minute.bucket_start_secs((self.clock.now() - lag).timestamp());
        let mut out = Vec::new();
        for (product, since) in round {
            let from = since.unwrap_or(i64::MIN).max(to - CHECK_MINUTES * 60);
            if from >= to {
                continue;
            }
            match self.check(&product, from, to).await {
                Ok(wrong) => out.push(Checked {
                    product,
                    until: to,
                    wrong,
                }),
                Err(e) => tracing::warn!(product, error = %e, "cross-check with REST failed"),
            }
        }
        out
    }

    /// Compares one product's minutes in `[from, to)`; returns the starts of the wrong ones.
    async fn check(&self, product: &str, from: i64, to: i64) -> anyhow::Result<Vec<i64>> {
        let minute = Granularity::OneMinute;
        let ours = self
            .repository
            .candles(product, minute, at(from), at(to), CHECK_MINUTES as u32 + 1)
            .await?;
        let theirs = self
            .client
            .candles(product, minute, from, to, Priority::Low)
            .await?;
        let theirs: BTreeMap<i64, Candle> = theirs
            .into_iter()
            .map(|c| (c.start.timestamp(), c))
            .collect();
        let mut ours_at = BTreeSet::new();
        let mut wrong = Vec::new();
        for stored in ours {
            ours_at.insert(stored.candle.start.timestamp());
            // Ours from REST are REST's: nothing to compare.
            if stored.backfilled || !stored.complete {
                continue;
            }
            let start = stored.candle.start.timestamp();
            let check = match theirs.get(&start) {
                Some(theirs) => CrossCheck {
                    verdict: compare(&stored.candle, theirs, true),
                    theirs: theirs.clone(),
                    ours: stored.candle,
                },
                None => {
                    // Coinbase has no trades in a minute we have a candle for.
                    let mut nothing = stored.candle.clone();
                    nothing.volume = rust_decimal::Decimal::ZERO;
                    CrossCheck {
                        verdict: crate::candles::crosscheck::Verdict::Mismatch,
                        theirs: nothing,
                        ours: stored.candle,
                    }
                }
            };
            self.stats.rest_1m.record("rest_1m", &check);
            if check.verdict == crate::candles::crosscheck::Verdict::Mismatch {
                wrong.push(start);
            }
        }
        let missing = theirs.keys().filter(|s| !ours_at.contains(s)).count() as u64;
        if missing > 0 {
            tracing::warn!(
                product,
                missing,
                "cross-check: REST has minutes we have no candle for"
            );
            self.stats
                .rest_1m_missing
                .fetch_add(missing, Ordering::Relaxed);
        }
        Ok(wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn notices_open_one_window_per_product() {
        let jobs = jobs_of(&FeedEvent::Reconnected {
            connection: 1,
            products: vec!["A-USD".into(), "B-USD".into()],
            disconnected_at: t("2026-11-23T10:00:30Z"),
            reconnected_at: t("2026-11-23T10:01:40Z"),
        });
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].product, "B-USD");
        assert_eq!(jobs[0].kind, WindowKind::Reconnect);
        let gap = jobs_of(&FeedEvent::Gap {
            connection: 1,
            products: vec!["A-USD".into()],
            expected: 5,
            got: 9,
            since: t("2026-11-23T10:00:30Z"),
            at: t("2026-11-23T10:00:31Z"),
        });
        assert_eq!(gap[0].from, t("2026-11-23T10:00:25Z"), "with the margin");
        assert!(
            jobs_of(&FeedEvent::Heartbeat {
                connection: 1,
                time: None
            })
            .is_empty()
        );
    }

    #[test]
    fn a_first_subscribe_opens_a_start_window_now_and_its_minute_later() {
        let jobs = jobs_of(&FeedEvent::Subscribed {
            connection: 1,
            products: vec!["A-USD".into()],
            at: t("2026-11-23T10:00:30Z"),
        });
        let kinds: Vec<_> = jobs.iter().map(|j| (j.kind, j.from, j.to)).collect();
        assert_eq!(
            kinds,
            vec![
                (
                    WindowKind::Start,
                    t("2026-11-23T10:00:00Z"),
                    t("2026-11-23T10:00:00Z")
                ),
                (
                    WindowKind::StartEdge,
                    t("2026-11-23T10:00:00Z"),
                    t("2026-11-23T10:00:30Z")
                ),
            ]
        );
        let mut pending = Vec::new();
        for job in jobs {
            queue(&mut pending, job);
        }
        assert_eq!(pending.len(), 2, "a start window is not merged");
    }

    #[test]
    fn a_waiting_window_of_the_same_product_widens_instead_of_doubling() {
        let mut pending = Vec::new();
        let job = |from: &str, to: &str, kind| Job {
            product: "A-USD".into(),
            kind,
            from: t(from),
            to: t(to),
        };
        queue(
            &mut pending,
            job(
                "2026-11-23T10:00:00Z",
                "2026-11-23T10:01:00Z",
                WindowKind::Gap,
            ),
        );
        queue(
            &mut pending,
            job(
                "2026-11-23T10:05:00Z",
                "2026-11-23T10:07:00Z",
                WindowKind::Reconnect,
            ),
        );
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].from, pending[0].to),
            (t("2026-11-23T10:00:00Z"), t("2026-11-23T10:07:00Z"))
        );
    }

    #[test]
    fn a_window_is_due_after_its_last_minute_completes_and_settles() {
        assert_eq!(
            ceil_minute(t("2026-11-23T10:01:40Z")),
            t("2026-11-23T10:02:00Z").timestamp()
        );
        assert_eq!(
            ceil_minute(t("2026-11-23T10:02:00Z")),
            t("2026-11-23T10:02:00Z").timestamp()
        );
    }
}
