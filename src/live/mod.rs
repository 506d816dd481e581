//! The live view: what one instance holds of the markets for its pages and streams.
//!
//! In: candle updates, from this instance's engine ([`fan_out`], which also hands them on to
//! the publisher and the writer) and from every other instance through one NATS subscription
//! per instance (the `nats` loop, with the KV reloaded at start and after a reconnect),
//! and the stored last day at start ([`seed_day`]). Out: for each stream client, the current
//! candle of each series it wants, then every newer update, with no gap and no duplicate
//! between the two and never an update older than one already delivered; the rolling day of
//! every product ([`day`]); the `<spot-candle>` elements ([`element`]); the activity behind
//! the quiet-product alarm ([`quiet`]).
//!
//! Updates are applied in batches where they come in batches (a burst of engine output, the
//! NATS messages that waited together, which are first coalesced to the newest version of
//! each bucket: [`coalesce`]); the clients a batch reached are woken once after it, so a
//! burst costs each client one read and one write.
//!
//! Each update is rendered at most once into its server-sent event ([`LiveEntry::event`],
//! shared `Bytes`), when a client first reads it, and costs nothing for clients that did not
//! ask for its series: subscribers are indexed by series (and, for clients of every product,
//! by granularity). Each client has a bounded queue; one that overflows is marked lagged and
//! resynced to the latest state of its series when it next reads, and one that stays behind
//! (lagged for longer than its stall limit, or resynced too often) is cut off. Queue pushes
//! happen under the state's lock, so a subscribe sees every update either in its initial
//! state or in its queue; no lock is held while a client writes its socket.

mod client;
mod coalesce;
pub mod day;
pub mod element;
mod fan_out;
mod index;
mod nats;
pub mod quiet;
mod report;
mod series;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use client::{ClientQueue, Pushed};
pub use client::{ClientSettings, Delivery, Subscription};
use index::Index;

use crate::model::{CandleUpdate, Granularity, ProductId, Version};
pub use day::DayStats;
use element::ElementId;
pub use fan_out::{fan_out, seed_day};
pub use quiet::ActivityTracker;
pub use report::LiveReport;
use report::LiveStats;
pub use series::{Filter, LiveEntry, Series};

/// Older buckets per series whose last seen version is remembered (a revision window's worth
/// of one-minute buckets is longer, but a revision that old is rare and still goes out when
/// its bucket is forgotten: unknown counts as older).
const OLDER_BUCKETS: usize = 16;
/// Seconds beyond the next bucket's start that an update's bucket may start.
const FUTURE_SLACK_SECS: i64 = 60;

/// A series with no update received for this long is forgotten (a delisted product's, or one
/// a producer named once): the maps keyed by product hold what is listed now.
pub const FORGET_QUIET_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(48);

#[derive(Debug, Default)]
struct Inner {
    latest: HashMap<Series, Arc<LiveEntry>>,
    /// The last version seen of each series' recent older buckets (at most [`OLDER_BUCKETS`]).
    older: HashMap<Series, BTreeMap<i64, Version>>,
    /// The id of the last applied update.
    next_seq: u64,
    index: Index,
    next_client: u64,
}

impl Inner {
    /// The entries `filter` wants, in the order they were applied.
    fn snapshot(&self, filter: &Filter) -> Vec<Arc<LiveEntry>> {
        let mut entries: Vec<Arc<LiveEntry>> = match &filter.products {
            None => self
                .latest
                .iter()
                .filter(|((_, g), _)| filter.granularities.contains(g))
                .map(|(_, e)| e.clone())
                .collect(),
            Some(products) => products
                .iter()
                .flat_map(|p| {
                    filter
                        .granularities
                        .iter()
                        .filter_map(|g| self.latest.get(&(p.clone(), *g)).cloned())
                })
                .collect(),
        };
        entries.sort_by_key(|e| e.seq);
        entries
    }
}

/// The live state; clones share it.
#[derive(Debug, Clone, Default)]
pub struct LiveState {
    inner: Arc<Mutex<Inner>>,
    stats: Arc<LiveStats>,
    /// Asks the running loop to reload from the KV (NATS reconnects, slow consumers).
    resync: Arc<Notify>,
    /// The rolling last day of every product, from the one-minute updates applied.
    day: Arc<DayStats>,
    /// When each product last traded and how often it does (the quiet-product alarm).
    activity: Arc<ActivityTracker>,
    /// This instance's origin when it ingests: its own messages coming back from NATS are
    /// skipped unread (they were applied from the engine).
    origin: Option<Arc<str>>,
}

/// The clients to wake for a batch of updates: woken when it is dropped, after the batch
/// (outside the state's lock), even if applying it panicked half-way.
#[derive(Debug, Default)]
struct Wakes(Vec<Arc<ClientQueue>>);

impl Drop for Wakes {
    fn drop(&mut self) {
        for queue in self.0.drain(..) {
            queue.wake();
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Every change keeps the maps consistent step by step, even if a holder panicked.
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl LiveState {
    pub fn new() -> Self {
        LiveState::default()
    }

    /// The live state of an instance that ingests and publishes as `origin`
    /// ([`super::super::Publisher::with_origin`]).
    pub fn with_origin(origin: Arc<str>) -> Self {
        LiveState {
            origin: Some(origin),
            ..LiveState::default()
        }
    }

    /// The rolling last day of every product.
    pub fn day(&self) -> &Arc<DayStats> {
        &self.day
    }

    /// Every product's trading activity, from the one-minute updates applied.
    pub fn activity(&self) -> &Arc<ActivityTracker> {
        &self.activity
    }

    /// A handle that makes the running loop reload from the KV.
    pub fn resync_trigger(&self) -> Arc<Notify> {
        self.resync.clone()
    }

    /// Takes `update` if it is newer than what the series holds, and queues its event for the
    /// clients of the series. An update of an older bucket than the series' newest (its
    /// completion, a late trade's revision) is not kept, but is news when it is newer than what
    /// was last seen of that bucket: it goes to the clients as the element of that bucket
    /// (`<product>-<granularity>-<start>`). Returns whether it was news.
    pub fn apply(&self, update: CandleUpdate) -> bool {
        self.apply_at(update, chrono::Utc::now())
    }

    /// [`LiveState::apply`] at clock time `now`.
    pub fn apply_at(&self, update: CandleUpdate, now: DateTime<Utc>) -> bool {
        let mut wakes = Wakes::default();
        self.apply_waking(update, now, &mut wakes.0)
    }

    /// [`LiveState::apply`] for each of `updates` in order; the clients that got events are
    /// woken once, after the last, so that a burst costs each client one read and one write
    /// rather than one per update. Returns how many were news.
    pub fn apply_all(&self, updates: impl IntoIterator<Item = CandleUpdate>) -> usize {
        let now = chrono::Utc::now();
        let mut wakes = Wakes::default();
        updates
            .into_iter()
            .map(|update| self.apply_waking(update, now, &mut wakes.0))
            .filter(|news| *news)
            .count()
    }

    /// [`LiveState::apply_all`] for updates of this instance's own engine, counted apart from
    /// those that come over NATS.
    pub fn apply_all_local<'u>(
        &self,
        updates: impl IntoIterator<Item = &'u CandleUpdate>,
    ) -> usize {
        let mut count = 0u64;
        let news = self.apply_all(updates.into_iter().inspect(|_| count += 1).cloned());
        self.stats.local.fetch_add(count, Ordering::Relaxed);
        news
    }

    /// Applies `update`, adding the queues that must be woken for it to `wakes`.
    fn apply_waking(
        &self,
        update: CandleUpdate,
        now: DateTime<Utc>,
        wakes: &mut Vec<Arc<ClientQueue>>,
    ) -> bool {
        let series: Series = (update.candle.product_id.clone(), update.candle.granularity);
        let start = update.candle.start.timestamp();
        // A bucket after the next one comes from a bad or clock-skewed producer: taken, it
        // would outrank every real update of the series until its time came.
        let clock = now.timestamp();
        let horizon = clock + update.candle.granularity.seconds() + FUTURE_SLACK_SECS;
        if start > horizon {
            self.stats.future.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // Its own version check: a stale copy changes nothing there either.
        self.day.record(&update, clock);
        // Built from trades (REST candles name no trade): the product traded then.
        if update.candle.granularity == Granularity::OneMinute
            && update.last_trade_id.0 != 0
            && update.last_trade_time >= update.candle.start
            && update.last_trade_time < update.candle.end()
        {
            self.activity.record(
                &update.candle.product_id,
                update.last_trade_time,
                chrono::Utc::now(),
            );
        }
        let version = update.version();
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let current = inner
            .latest
            .get(&series)
            .map(|e| (e.update.candle.start.timestamp(), e.update.version()));
        let older_bucket = match current {
            Some((_, newest)) if newest >= version => {
                let known = inner
                    .older
                    .get(&series)
                    .and_then(|b| b.get(&start))
                    .copied();
                let current_start = current.map_or(i64::MIN, |(s, _)| s);
                if start >= current_start || known.is_some_and(|k| k >= version) {
                    self.stats.stale.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                true
            }
            _ => false,
        };
        // Ids follow the order of application: taken under the lock (the event, rendered
        // when a client first reads it, carries this id whenever that is).
        inner.next_seq += 1;
        let seq = inner.next_seq;
        let id = if older_bucket {
            ElementId::Bucket
        } else {
            ElementId::Series
        };
        let entry = Arc::new(LiveEntry::new(update, seq, id, clock));
        let mut cut_off = Vec::new();
        let mut queued = 0u64;
        let named = inner.index.by_series.get(&series).into_iter().flatten();
        let every = inner.index.by_granularity[series.1.index()].iter();
        for (id, queue) in named.chain(every) {
            match queue.push(&entry, now) {
                Pushed::Queued { first } => {
                    queued += 1;
                    if first {
                        wakes.push(queue.clone());
                    }
                }
                Pushed::Lagged => {
                    self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                }
                Pushed::Dropped => {}
                Pushed::CutOff => cut_off.push(*id),
            }
        }
        for id in cut_off {
            if inner.index.remove(id).is_some() {
                self.stats.clients_cut_off.fetch_add(1, Ordering::Relaxed);
            }
        }
        // What was seen of older buckets: the one the series just left, and revisions.
        let remembered = match current {
            _ if older_bucket => Some((start, version)),
            Some((previous, seen)) if previous < start => Some((previous, seen)),
            _ => None,
        };
        if let Some((bucket, seen)) = remembered {
            let buckets = inner.older.entry(series.clone()).or_default();
            buckets.insert(bucket, seen);
            while buckets.len() > OLDER_BUCKETS {
                buckets.pop_first();
            }
        }
        if older_bucket {
            self.stats.older_buckets.fetch_add(1, Ordering::Relaxed);
        } else {
            inner.latest.insert(series, entry);
            self.stats.applied.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .events_queued
            .fetch_add(queued, Ordering::Relaxed);
        true
    }

    /// Cuts off the clients that stayed lagged past their stall limit: those of quiet series
    /// are not reached by [`LiveState::apply`]. The running loop calls it every second.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let stalled: Vec<u64> = inner
            .index
            .clients
            .iter()
            .filter(|(_, (_, queue))| queue.cut_off_if_stalled(now))
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            if inner.index.remove(id).is_some() {
                self.stats.clients_cut_off.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forgets the series with no update applied since [`FORGET_QUIET_AFTER`] before `now`,
    /// and the rolling day of products with no minute in the last day. Returns how many series
    /// went. The running loop calls it every minute.
    pub fn forget_quiet(&self, now: DateTime<Utc>) -> usize {
        let cutoff = (now - FORGET_QUIET_AFTER).timestamp();
        let forgotten = {
            let mut inner = lock(&self.inner);
            let Inner { latest, older, .. } = &mut *inner;
            let before = latest.len();
            latest.retain(|_, entry| entry.applied >= cutoff);
            older.retain(|series, _| latest.contains_key(series));
            before - latest.len()
        };
        self.day.forget_empty(now.timestamp());
        forgotten
    }

    /// The current candle of each series `filter` wants (oldest applied first), then, through
    /// the returned subscription, every newer update. `cut_off` is cancelled if the client is
    /// cut off for staying behind (the stream closes its connection with it).
    pub fn subscribe(
        &self,
        filter: Filter,
        settings: ClientSettings,
        cut_off: CancellationToken,
    ) -> (Subscription, Vec<Arc<LiveEntry>>) {
        let queue = Arc::new(ClientQueue::new(settings, cut_off));
        let mut inner = lock(&self.inner);
        let initial = inner.snapshot(&filter);
        let id = inner.next_client;
        inner.next_client += 1;
        inner.index.insert(id, filter.clone(), queue.clone());
        drop(inner);
        let subscription = Subscription::new(id, filter, queue, self.clone());
        (subscription, initial)
    }

    /// Under the lock: the client's queue is emptied and its snapshot taken, so that
    /// everything after the snapshot reaches the queue. `None` when the client is gone or is
    /// cut off for resyncing too often.
    fn resync_client(
        &self,
        id: u64,
        filter: &Filter,
        queue: &ClientQueue,
    ) -> Option<Vec<Arc<LiveEntry>>> {
        let mut inner = lock(&self.inner);
        if !inner.index.clients.contains_key(&id) {
            return None;
        }
        if !queue.restart(Instant::now()) {
            inner.index.remove(id);
            self.stats.clients_cut_off.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.stats.resync_snapshots.fetch_add(1, Ordering::Relaxed);
        Some(inner.snapshot(filter))
    }

    fn unsubscribe(&self, id: u64) {
        lock(&self.inner).index.remove(id);
    }

    /// The current candle of a series.
    pub fn current(
        &self,
        product_id: &ProductId,
        granularity: Granularity,
    ) -> Option<CandleUpdate> {
        lock(&self.inner)
            .latest
            .get(&(product_id.clone(), granularity))
            .map(|e| e.update.clone())
    }

    /// Per product, when its newest update was received (the newest `last_received` of its
    /// series): whether live data flows for it.
    pub fn product_activity(&self) -> HashMap<ProductId, DateTime<Utc>> {
        let inner = lock(&self.inner);
        let mut activity: HashMap<ProductId, DateTime<Utc>> = HashMap::new();
        for ((product, _), entry) in &inner.latest {
            let at = entry.update.last_received;
            activity
                .entry(product.clone())
                .and_modify(|t| *t = (*t).max(at))
                .or_insert(at);
        }
        activity
    }
}
