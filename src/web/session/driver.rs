//! One stream's body: a [`View`]'s opening events, then its live events, with keep-alive,
//! until the stop, a cut-off or the client going away.
//!
//! In: the view, its subscription to the live state and its first entries, the stop token, the
//! stream's permit and (in development) the reload signal. Out: the response body. Each loop
//! writes what is queued (several events joined into one chunk of at most [`MAX_CHUNK`]
//! bytes, one event as its shared `Bytes`), else waits, by priority, for the stop, the reload
//! signal, the view's timers, the keep-alive and the live state's next delivery; a chunk is
//! gzip-encoded when the session negotiated it (a page stream). The body ends
//! when the stop token fires (so axum's graceful shutdown never waits on it) or when the client
//! is cut off; dropping it (the client went away) unsubscribes and gives the permit back.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use datastar::DatastarEvent;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Session;
use super::gate::Permit;
use super::gzip::Gzip;
use crate::live::{Delivery, LiveEntry, Subscription};

/// Most bytes of events joined into one chunk.
const MAX_CHUNK: usize = 64 * 1024;
/// The comment sent on an idle candle stream.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// What one stream shows: its opening events, what it makes of the live state's updates, and
/// what its own timers do (a flush of coalesced changes, a health panel).
pub trait View: Send + 'static {
    /// The opening events, from the current entries of the view's series.
    fn open(&mut self, initial: Vec<Arc<LiveEntry>>, out: &mut Events);
    /// Updates, in order; `resync`: the latest state of every series, replacing what the
    /// client missed.
    fn note(&mut self, entries: &[Arc<LiveEntry>], resync: bool, out: &mut Events);
    /// The periods of the view's timers, by priority; `tick(i)` runs when the `i`-th fires.
    fn timers(&self) -> Vec<Duration> {
        Vec::new()
    }
    fn tick(&mut self, _timer: usize, _out: &mut Events) {}
}

/// The events queued for the client, rendered.
#[derive(Debug, Default)]
pub struct Events {
    queue: VecDeque<Bytes>,
}

impl Events {
    pub fn with_capacity(capacity: usize) -> Events {
        Events {
            queue: VecDeque::with_capacity(capacity),
        }
    }

    /// Queues `event`, rendered by [`crate::sse::render`] (control characters escaped).
    pub fn push(&mut self, event: DatastarEvent) {
        self.queue.push_back(crate::sse::render(event));
    }

    /// Queues an event [`crate::sse::render`] rendered already (a live entry's, shared by
    /// every client).
    pub(crate) fn push_rendered(&mut self, event: Bytes) {
        self.queue.push_back(event);
    }

    /// Queues the comment `: text`; a control character in `text` becomes a space, so the
    /// comment stays one line.
    pub fn comment(&mut self, text: &str) {
        let text: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        self.queue.push_back(Bytes::from(format!(": {text}\n\n")));
    }

    /// The next chunk to write: one event as the shared bytes; several (a burst, a snapshot)
    /// joined into one chunk of at most [`MAX_CHUNK`] bytes, so that a burst costs one write
    /// and one read instead of one per event.
    fn take_chunk(&mut self) -> Option<Bytes> {
        let pending = &mut self.queue;
        let first = pending.pop_front()?;
        if pending.is_empty() || first.len() >= MAX_CHUNK {
            return Some(first);
        }
        let mut chunk = BytesMut::with_capacity(MAX_CHUNK.min(first.len() * (pending.len() + 1)));
        chunk.extend_from_slice(&first);
        while let Some(next) = pending.front() {
            if chunk.len() + next.len() > MAX_CHUNK {
                break;
            }
            chunk.extend_from_slice(next);
            pending.pop_front();
        }
        Some(chunk.freeze())
    }
}

/// How an idle stream shows it is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// A comment after a period without events (programs; proxies keep the stream open).
    Comment,
    /// A heartbeat every period, events or not: a patch of the page's `<spot-beat>`, which
    /// presumes the connection dead when three periods pass without one (a comment would keep
    /// proxies from closing the stream but tell the page nothing).
    Beat,
}

/// A view's stream and everything it waits on.
pub(super) struct Driver<V> {
    view: V,
    events: Events,
    subscription: Subscription,
    timers: Vec<Interval>,
    keepalive: KeepAlive,
    heart: Interval,
    /// Heartbeats sent.
    beats: u64,
    reload: Option<watch::Receiver<u64>>,
    stop: CancellationToken,
    _permit: Permit,
}

impl<V: View> Driver<V> {
    /// `view` opened on `initial` in `session`, then fed by `subscription`.
    pub(super) fn new(
        session: Session,
        mut view: V,
        initial: Vec<Arc<LiveEntry>>,
        subscription: Subscription,
        keepalive: KeepAlive,
    ) -> Driver<V> {
        let Session {
            permit,
            stop,
            keepalive: every,
            reload,
            opening: mut events,
            cut_off: _,
            budget: _,
            encoding: _,
        } = session;
        view.open(initial, &mut events);
        Driver {
            timers: view.timers().into_iter().map(interval).collect(),
            view,
            events,
            subscription,
            keepalive,
            heart: interval(every),
            beats: 0,
            reload,
            stop,
            _permit: permit,
        }
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.stop.is_cancelled() {
                return None;
            }
            if let Some(chunk) = self.events.take_chunk() {
                if self.keepalive == KeepAlive::Comment {
                    // A stream that carries events needs no keep-alive.
                    self.heart.reset();
                }
                return Some(chunk);
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return None,
                changed = reload_changed(&mut self.reload) => {
                    if changed {
                        self.events.push(reload_event());
                    }
                }
                timer = next_tick(&mut self.timers) => self.view.tick(timer, &mut self.events),
                _ = self.heart.tick() => match self.keepalive {
                    KeepAlive::Comment => return Some(Bytes::from_static(KEEPALIVE)),
                    KeepAlive::Beat => {
                        self.beats += 1;
                        self.events.push(beat(self.beats, self.heart.period()));
                    }
                },
                delivery = self.subscription.next() => match delivery {
                    Delivery::Updates(entries) => self.view.note(&entries, false, &mut self.events),
                    Delivery::Resync(entries) => self.view.note(&entries, true, &mut self.events),
                    Delivery::CutOff => return None,
                },
            }
        }
    }
}

/// The body that `driver` writes, each chunk encoded by `gzip` when there is one (and its
/// trailer at the end).
pub(super) fn body<V: View>(driver: Driver<V>, gzip: Option<Gzip>) -> Body {
    let events = futures_util::stream::unfold(Some((driver, gzip)), |state| async move {
        let (mut driver, mut gzip) = state?;
        let Some(chunk) = driver.next_chunk().await else {
            // The end: the gzip trailer, if encoded, then nothing.
            let trailer = gzip.as_mut()?.finish().ok()?;
            return Some((Ok::<_, Infallible>(trailer), None));
        };
        let chunk = match gzip.as_mut() {
            None => chunk,
            Some(encoder) => match encoder.encode(&chunk) {
                Ok(encoded) => encoded,
                Err(error) => {
                    tracing::warn!(%error, "a page stream's gzip encoder failed; the stream ends");
                    return None;
                }
            },
        };
        Some((Ok(chunk), Some((driver, gzip))))
    });
    Body::from_stream(events)
}

/// A timer whose first tick is one `period` from now, and that never bursts to catch up.
fn interval(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// The first of `timers` to fire (by position); never without timers.
async fn next_tick(timers: &mut [Interval]) -> usize {
    std::future::poll_fn(|cx| {
        for (i, timer) in timers.iter_mut().enumerate() {
            if timer.poll_tick(cx).is_ready() {
                return Poll::Ready(i);
            }
        }
        Poll::Pending
    })
    .await
}

/// The `n`th heartbeat of a page stream sent every `every`.
fn beat(n: u64, every: Duration) -> DatastarEvent {
    datastar::prelude::PatchElements::new(format!(
        "<spot-beat id=\"beat\" data-n=\"{n}\" data-every=\"{}\"></spot-beat>",
        every.as_secs().max(1)
    ))
    .into_datastar_event()
}

/// The script that reloads a page (development).
pub(super) fn reload_event() -> DatastarEvent {
    datastar::prelude::ExecuteScript::new("window.location.reload()").into_datastar_event()
}

/// Resolves when the reload signal moves (`true`), or when its poller is gone (`false`, and
/// the signal is dropped); never without a signal (production).
async fn reload_changed(reload: &mut Option<watch::Receiver<u64>>) -> bool {
    let Some(rx) = reload.as_mut() else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_ok() {
        return true;
    }
    *reload = None;
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_goes_as_it_is_and_a_burst_is_joined_up_to_the_chunk_size() {
        let event = Bytes::from(vec![b'e'; 1000]);
        let mut pending = Events::default();
        pending.push_rendered(event.clone());
        let single = pending.take_chunk().expect("one");
        assert_eq!(
            single.as_ptr(),
            event.as_ptr(),
            "the shared bytes, not a copy"
        );
        let mut burst = Events::default();
        for _ in 0..100 {
            burst.push_rendered(event.clone());
        }
        let joined = burst.take_chunk().expect("a chunk");
        assert_eq!(joined.len(), 65_000, "65 whole events fit in 64 KiB");
        assert_eq!(burst.queue.len(), 35);
        let rest = burst.take_chunk().expect("the rest");
        assert_eq!(rest.len(), 35_000);
        assert!(burst.take_chunk().is_none());
    }

    #[test]
    fn the_reload_event_reloads_the_page() {
        let event = crate::sse::render(reload_event());
        assert!(String::from_utf8_lossy(&event).contains("window.location.reload()"));
    }

    #[test]
    fn a_comment_stays_one_line() {
        let mut events = Events::default();
        events.comment("resumed\r\nretry: 0");
        assert_eq!(
            events.take_chunk().expect("one"),
            Bytes::from_static(b": resumed  retry: 0\n\n")
        );
    }
}
