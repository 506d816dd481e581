//! From what was sent and what arrived to the figures of one scenario.
//!
//! In: the simulator's frames, the clients' logs, the floor's hops and the measured window.
//! Out: latencies of every (frame, subscribed client) delivery, lost and duplicated updates,
//! updates delivered per second, the floor's latencies.
//!
//! Definitions. A frame of product P with newest trade id T, sent at S inside the judged part
//! of the window (its start up to the end minus the loss window W), is *delivered* to a client
//! subscribed to P at the first moment R that client received an element of P whose
//! `data-last-trade-id` is at least T (the element of T itself, or a later one that already
//! includes it); its latency is R − S. It is *lost* for that client when no such element
//! arrived within W of S. A *duplicate* is an element of the same product and the same
//! `data-version` received a second time by one client (over its whole connection, the
//! initial state included).
//!
//! A delivery stands for the trades before it only if it counts them: every element received
//! in the window, of a bucket the service saw from its start, must say in `data-trades`
//! exactly how many trades the simulator's log has for that product and bucket up to the
//! element's last trade id. An element that does not is *miscounted*: a trade the service
//! dropped (or counted twice) shows there, even when a later delivery hides it from *lost*.

use std::collections::HashMap;

use crate::client::ClientLog;
use crate::floor::{Frame, Hop};

/// The measured window, µs since the base instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub start_us: u32,
    pub end_us: u32,
    pub loss_window_us: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// µs, sorted.
    pub latencies: Vec<u32>,
    pub floor: Vec<u32>,
    pub judged: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Candle elements received inside the window.
    pub events_in_window: u64,
    /// Frames (product updates) sent inside the window.
    pub frames_in_window: u64,
    pub client_errors: Vec<String>,
}

pub(crate) fn analyse(
    products: usize,
    frames: &[Frame],
    clients: &[ClientLog],
    hops: &[Hop],
    window: Window,
) -> Outcome {
    let judged_until = window.end_us.saturating_sub(window.loss_window_us);
    // Frames to judge, per product, in send order.
    let mut by_product: Vec<Vec<(u32, u64)>> = vec![Vec::new(); products];
    let mut frames_in_window = 0;
    for f in frames {
        if f.sent_us >= window.start_us && f.sent_us < window.end_us {
            frames_in_window += 1;
        }
        if f.sent_us >= window.start_us && f.sent_us < judged_until {
            by_product[usize::from(f.product)].push((f.sent_us, f.trade_id));
        }
    }
    let mut out = Outcome {
        frames_in_window,
        ..Outcome::default()
    };
    let all: Vec<u16> = (0..products as u16).collect();
    // Per product of one client: (arrival, highest trade id seen so far).
    let mut seen: Vec<Vec<(u32, u64)>> = vec![Vec::new(); products];
    for client in clients {
        if let Some(e) = &client.error {
            out.client_errors.push(e.clone());
        }
        for s in &mut seen {
            s.clear();
        }
        let mut versions: Vec<(u16, u64)> = Vec::with_capacity(client.events.len());
        for e in &client.events {
            if e.at_us >= window.start_us && e.at_us < window.end_us {
                out.events_in_window += 1;
            }
            versions.push((e.product, e.version));
            let s = &mut seen[usize::from(e.product)];
            let highest = s.last().map_or(e.trade_id, |&(_, id)| id.max(e.trade_id));
            s.push((e.at_us, highest));
        }
        versions.sort_unstable();
        out.duplicates += versions.windows(2).filter(|w| w[0] == w[1]).count() as u64;
        let subscribed = client.products.as_deref().unwrap_or(&all);
        for &p in subscribed {
            let s = &seen[usize::from(p)];
            for &(sent, id) in &by_product[usize::from(p)] {
                out.judged += 1;
                let first = s.partition_point(|&(_, highest)| highest < id);
                match s.get(first) {
                    Some(&(at, _)) if at.saturating_sub(sent) <= window.loss_window_us => {
                        out.latencies.push(at.saturating_sub(sent));
                    }
                    _ => out.lost += 1,
                }
            }
        }
    }
    out.latencies.sort_unstable();
    out.floor = hops
        .iter()
        .filter(|h| h.sent_us >= window.start_us && h.sent_us < window.end_us)
        .map(|h| h.latency_us)
        .collect();
    out.floor.sort_unstable();
    out
}

/// The `p` quantile (0–1) of sorted µs, in ms.
pub(crate) fn quantile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// The simulator's trades per (product index, bucket start): their ids, ascending.
pub(crate) type TradeIds = HashMap<(u16, i64), Vec<u64>>;

/// Elements checked against the trade log, and those whose trade count differs from it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counted {
    pub checked: u64,
    pub miscounted: u64,
    /// Elements without a trade count (a candle from REST: none should come here, where
    /// backfill is off).
    pub unknown: u64,
}

/// Checks every element received in the window whose bucket starts at `from_bucket` or later
/// (buckets the service saw whole) against `ids`.
pub(crate) fn count_check(
    clients: &[ClientLog],
    ids: &TradeIds,
    from_bucket: i64,
    window: Window,
) -> Counted {
    let mut out = Counted::default();
    for client in clients {
        for e in &client.events {
            if e.at_us < window.start_us || e.at_us >= window.end_us || e.bucket < from_bucket {
                continue;
            }
            let Some(trades) = e.trades else {
                out.unknown += 1;
                continue;
            };
            out.checked += 1;
            let expected = ids
                .get(&(e.product, e.bucket))
                .map_or(0, |ids| ids.partition_point(|&id| id <= e.trade_id));
            if expected != trades as usize {
                out.miscounted += 1;
            }
        }
    }
    out
}
