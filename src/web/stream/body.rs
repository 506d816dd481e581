//! One client's event stream: the initial state, then the live changes and resyncs, with
//! keep-alive comments, until the stop, a cut-off or the client going away.
//!
//! In: a [`Subscription`] and its initial entries. Out: the response body, a stream of shared
//! event `Bytes` (no per-client rendering or copying). It ends when the stop token fires (so
//! axum's graceful shutdown never waits on it) or when the client is cut off; dropping it (the
//! client went away) unsubscribes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::gate::Permit;
use crate::bus::{Delivery, LiveEntry, Subscription};

/// The comment sent on an idle stream.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";

struct StreamState {
    pending: VecDeque<Bytes>,
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
    pending.extend(initial.iter().map(|e| e.event.clone()));
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = StreamState {
        pending,
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

async fn next_chunk(state: &mut StreamState) -> Option<Bytes> {
    loop {
        if state.stop.is_cancelled() {
            return None;
        }
        if let Some(chunk) = state.pending.pop_front() {
            return Some(chunk);
        }
        tokio::select! {
            biased;
            () = state.stop.cancelled() => return None,
            delivery = state.subscription.next() => match delivery {
                Delivery::Updates(entries) | Delivery::Resync(entries) => {
                    state.pending.extend(entries.iter().map(|e| e.event.clone()));
                }
                Delivery::CutOff => return None,
            },
            _ = state.keepalive.tick() => return Some(Bytes::from_static(KEEPALIVE)),
        }
    }
}
