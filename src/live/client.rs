//! One stream client's side of the live state: its bounded queue and its subscription.
//!
//! In: events pushed by [`LiveState::apply`](super::LiveState::apply) under the state's lock.
//! Out: through [`Subscription::next`], the queued events, or after an overflow the latest
//! state of the client's series (a resync), or the end when the client is cut off.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Filter, LiveEntry, LiveState};

/// A client's limits.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    /// Events its queue holds; one more and it is lagged (emptied, resynced on its next read).
    pub capacity: usize,
    /// A lagged client that has not read for this long is cut off at the next update.
    pub stall: Duration,
    /// More resyncs than this within `resync_window` cut the client off.
    pub max_resyncs: u32,
    pub resync_window: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            capacity: 1_024,
            stall: Duration::from_secs(10),
            max_resyncs: 5,
            resync_window: Duration::from_secs(60),
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pushed {
    /// Queued; `first`: the queue was empty, so the client must be woken
    /// ([`ClientQueue::wake`]) once the batch being applied is done.
    Queued { first: bool },
    /// The queue overflowed: emptied, the client will get the latest state on its next read.
    Lagged,
    /// The client is lagged (or closed): its resync will bring the latest state.
    Dropped,
    /// The client stayed lagged past its stall limit: remove it.
    CutOff,
}

#[derive(Debug)]
struct QueueState {
    events: VecDeque<Arc<LiveEntry>>,
    /// When the queue overflowed; cleared by the resync.
    lagged_since: Option<Instant>,
    /// Recent resyncs, oldest first (within the window).
    resyncs: VecDeque<Instant>,
    closed: bool,
}

/// A client's queue of events.
#[derive(Debug)]
pub(super) struct ClientQueue {
    state: Mutex<QueueState>,
    ready: Notify,
    settings: ClientSettings,
    /// Cancelled when the client is cut off: its stream closes the connection.
    cut_off: CancellationToken,
}

impl ClientQueue {
    pub(super) fn new(settings: ClientSettings, cut_off: CancellationToken) -> ClientQueue {
        ClientQueue {
            state: Mutex::new(QueueState {
                events: VecDeque::new(),
                lagged_since: None,
                resyncs: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
            settings: ClientSettings {
                capacity: settings.capacity.max(1),
                ..settings
            },
            cut_off,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `entry`, or marks the client lagged when its queue is full.
    pub(super) fn push(&self, entry: &Arc<LiveEntry>, now: Instant) -> Pushed {
        let mut q = self.lock();
        if q.closed {
            return Pushed::Dropped;
        }
        if let Some(since) = q.lagged_since {
            if now.duration_since(since) <= self.settings.stall {
                return Pushed::Dropped;
            }
            self.close(&mut q);
            return Pushed::CutOff;
        }
        if q.events.len() >= self.settings.capacity {
            q.events.clear();
            q.lagged_since = Some(now);
            drop(q);
            self.ready.notify_one();
            return Pushed::Lagged;
        }
        q.events.push_back(entry.clone());
        Pushed::Queued {
            first: q.events.len() == 1,
        }
    }

    /// Wakes the client to read what was queued.
    pub(super) fn wake(&self) {
        self.ready.notify_one();
    }

    /// Closes the queue when it has been lagged for longer than its stall limit.
    pub(super) fn cut_off_if_stalled(&self, now: Instant) -> bool {
        let mut q = self.lock();
        let stalled = !q.closed
            && q.lagged_since
                .is_some_and(|since| now.duration_since(since) > self.settings.stall);
        if stalled {
            self.close(&mut q);
        }
        stalled
    }

    /// Starts over after a lag: empties the queue and clears the lag. `false` (and closed)
    /// when the client has resynced too often.
    pub(super) fn restart(&self, now: Instant) -> bool {
        let mut q = self.lock();
        q.events.clear();
        q.lagged_since = None;
        let window = self.settings.resync_window;
        while q
            .resyncs
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            q.resyncs.pop_front();
        }
        q.resyncs.push_back(now);
        if q.resyncs.len() > self.settings.max_resyncs as usize {
            self.close(&mut q);
            return false;
        }
        true
    }

    fn close(&self, q: &mut QueueState) {
        q.closed = true;
        q.events.clear();
        self.ready.notify_one();
        self.cut_off.cancel();
    }
}

/// What [`Subscription::next`] hands over.
#[derive(Debug)]
pub enum Delivery {
    /// Newer updates, in order.
    Updates(Vec<Arc<LiveEntry>>),
    /// The queue overflowed: the latest state of every series of the client, which replaces
    /// everything it missed.
    Resync(Vec<Arc<LiveEntry>>),
    /// The client was cut off for staying behind; nothing more comes.
    CutOff,
}

/// A client's subscription; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    filter: Filter,
    queue: Arc<ClientQueue>,
    live: LiveState,
}

impl Subscription {
    pub(super) fn new(
        id: u64,
        filter: Filter,
        queue: Arc<ClientQueue>,
        live: LiveState,
    ) -> Subscription {
        Subscription {
            id,
            filter,
            queue,
            live,
        }
    }

    /// The next updates (waiting for them), a resync, or the end. Cancel-safe: nothing is
    /// taken from the queue until the wait is over.
    pub async fn next(&mut self) -> Delivery {
        loop {
            let lagged = {
                let mut q = self.queue.lock();
                if q.closed {
                    return Delivery::CutOff;
                }
                if q.lagged_since.is_none() && !q.events.is_empty() {
                    return Delivery::Updates(q.events.drain(..).collect());
                }
                q.lagged_since.is_some()
            };
            if lagged {
                return match self.live.resync_client(self.id, &self.filter, &self.queue) {
                    Some(entries) => Delivery::Resync(entries),
                    None => Delivery::CutOff,
                };
            }
            self.queue.ready.notified().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.live.unsubscribe(self.id);
    }
}
