//! One client's event stream: the initial state, then the live changes and resyncs, with
//! keep-alive comments, until the stop, a cut-off or the client going away.
//!
//! In: a [`Subscription`] and its initial entries. Out: the response body: each event's shared
//! `Bytes` (rendered once, by the first client to read it, for every client), several queued ones joined into one chunk. It ends when the stop token fires (so
//! axum's graceful shutdown never waits on it) or when the client is cut off; dropping it (the
//! client went away) unsubscribes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::gate::Permit;
use crate::live::{Delivery, LiveEntry, Subscription};

/// Most bytes of events joined into one chunk.
const MAX_CHUNK: usize = 64 * 1024;
/// The comment sent on an idle stream.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";

struct StreamState {
    pending: VecDeque<Bytes>,
    /// Exchange frame received → event handed to the connection.
    latency: metrics::Histogram,
    subscription: Subscription,
    keepalive: Interval,
    stop: CancellationToken,
    _permit: Permit,
}

/// The body of a stream: `opening` (comments) and the initial entries first.
pub(super) fn body(
    opening: String,
    initial: Vec<Arc<LiveEntry>>,
    subscription: Subscription,
    permit: Permit,
    stop: CancellationToken,
    keepalive: Duration,
) -> Body {
    let mut pending = VecDeque::with_capacity(initial.len() + 1);
    pending.push_back(Bytes::from(opening));
    pending.extend(initial.iter().map(|e| e.event().clone()));
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = StreamState {
        pending,
        latency: metrics::histogram!(crate::telemetry::END_TO_END_SECONDS),
        subscription,
        keepalive,
        stop,
        _permit: permit,
    };
    let events = futures_util::stream::unfold(state, |mut state| async move {
        let chunk = next_chunk(&mut state).await?;
        Some((Ok::<_, Infallible>(chunk), state))
    });
    Body::from_stream(events)
}

/// The next chunk to write: one event as the shared bytes; several (a burst, a snapshot) joined
/// into one chunk of at most [`MAX_CHUNK`] bytes, so that a burst costs one write and one read
/// instead of one per event.
fn take_chunk(pending: &mut VecDeque<Bytes>) -> Option<Bytes> {
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

async fn next_chunk(state: &mut StreamState) -> Option<Bytes> {
    loop {
        if state.stop.is_cancelled() {
            return None;
        }
        if let Some(chunk) = take_chunk(&mut state.pending) {
            // A stream that carries events needs no keep-alive.
            state.keepalive.reset();
            return Some(chunk);
        }
        tokio::select! {
            biased;
            () = state.stop.cancelled() => return None,
            delivery = state.subscription.next() => match delivery {
                Delivery::Updates(entries) => {
                    let now = chrono::Utc::now();
                    for entry in entries.iter() {
                        if let Some(seconds) =
                            crate::telemetry::latency::trade_latency(&entry.update, now)
                        {
                            state.latency.record(seconds);
                        }
                        state.pending.push_back(entry.event().clone());
                    }
                }
                Delivery::Resync(entries) => {
                    state.pending.extend(entries.iter().map(|e| e.event().clone()));
                }
                Delivery::CutOff => return None,
            },
            _ = state.keepalive.tick() => return Some(Bytes::from_static(KEEPALIVE)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_goes_as_it_is_and_a_burst_is_joined_up_to_the_chunk_size() {
        let event = Bytes::from(vec![b'e'; 1000]);
        let mut pending: VecDeque<Bytes> = VecDeque::from([event.clone()]);
        let single = take_chunk(&mut pending).expect("one");
        assert_eq!(
            single.as_ptr(),
            event.as_ptr(),
            "the shared bytes, not a copy"
        );
        let mut burst: VecDeque<Bytes> = (0..100).map(|_| event.clone()).collect();
        let joined = take_chunk(&mut burst).expect("a chunk");
        assert_eq!(joined.len(), 65_000, "65 whole events fit in 64 KiB");
        assert_eq!(burst.len(), 35);
        let rest = take_chunk(&mut burst).expect("the rest");
        assert_eq!(rest.len(), 35_000);
        assert!(take_chunk(&mut burst).is_none());
    }
}
