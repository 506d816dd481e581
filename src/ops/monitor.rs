//! The monitor stage: once a second, the backpressure of every bounded channel and the alarms.
//!
//! In: the bounded channels between the stages (held weakly: the monitor never keeps a channel
//! open), the application state (feed, live state, clock, database, NATS). Out: the gauges
//! `spot_canvas_channel_{length,capacity,utilization}`, `spot_canvas_ready`, the alarm report
//! (every second; the database and readiness checks every [`CHECK_EVERY`] rounds, each within
//! the health check's timeout), and the exporter's upkeep.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::alarms::{self, Readings};
use crate::web::AppState;

/// Seconds between rounds.
const ROUND: Duration = Duration::from_secs(1);
/// Rounds between readiness checks (a database round trip) and exporter upkeeps.
const CHECK_EVERY: u64 = 5;

/// A bounded channel whose fill can be sampled.
pub trait Queue: Send + Sync {
    /// (items queued, capacity); `None` once the channel is closed.
    fn depth(&self) -> Option<(usize, usize)>;
}

impl<T: Send> Queue for mpsc::WeakSender<T> {
    fn depth(&self) -> Option<(usize, usize)> {
        // A strong sender for the moment of the sample only.
        let sender = self.upgrade()?;
        let capacity = sender.max_capacity();
        Some((capacity - sender.capacity(), capacity))
    }
}

/// A named channel to watch.
pub struct Watched {
    pub name: &'static str,
    pub queue: Box<dyn Queue>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched").field("name", &self.name).finish()
    }
}

impl Watched {
    pub fn new<T: Send + 'static>(name: &'static str, sender: &mpsc::Sender<T>) -> Watched {
        Watched {
            name,
            queue: Box::new(sender.downgrade()),
        }
    }
}

/// Samples the channels and sets their gauges.
pub fn sample(channels: &[Watched]) {
    for channel in channels {
        let Some((length, capacity)) = channel.queue.depth() else {
            continue;
        };
        let utilization = if capacity == 0 {
            0.0
        } else {
            length as f64 / capacity as f64
        };
        metrics::gauge!("spot_canvas_channel_length", "channel" => channel.name).set(length as f64);
        metrics::gauge!("spot_canvas_channel_capacity", "channel" => channel.name)
            .set(capacity as f64);
        metrics::gauge!("spot_canvas_channel_utilization", "channel" => channel.name)
            .set(utilization);
    }
}

/// Runs the rounds until `token`.
pub async fn run(
    state: AppState,
    channels: std::sync::Arc<Vec<Watched>>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let mut every = tokio::time::interval(ROUND);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    let mut database: Option<String> = None;
    let mut nats: Option<String> = None;
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        sample(&channels);
        if round.is_multiple_of(CHECK_EVERY) {
            let stages = state.stages.report();
            let checks = tokio::select! {
                () = token.cancelled() => return Ok(()),
                checks = crate::web::health::checks(&state, &stages) => checks,
            };
            database = (!checks.database.ok).then(|| checks.database.detail.clone());
            nats = (!checks.nats.ok).then(|| checks.nats.detail.clone());
            metrics::gauge!("spot_canvas_ready").set(if checks.ok() { 1.0 } else { 0.0 });
            if let Some(handle) = &state.metrics {
                handle.run_upkeep();
            }
        } else if let Some(client) = &state.nats {
            // NATS is a flag to read: no need to wait for the next readiness round.
            let connection = client.connection_state();
            nats = (connection != async_nats::connection::State::Connected)
                .then(|| format!("NATS connection {connection}"));
        }
        round = round.wrapping_add(1);
        let now = chrono::Utc::now();
        let readings = Readings {
            tracked_products: state.live.activity().products(),
            feed: state.role.ingests().then(|| state.feed.report()),
            quiet: state.live.activity().quiet(now),
            clock: state.clock.as_ref().map(|c| c.report()),
            database: database.clone(),
            nats: nats.clone(),
        };
        state.alarms.set(alarms::evaluate(readings, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watched_channel_reports_its_fill_and_never_keeps_it_open() {
        let (tx, mut rx) = mpsc::channel::<u32>(8);
        let watched = Watched::new("test", &tx);
        assert_eq!(watched.queue.depth(), Some((0, 8)));
        for i in 0..6 {
            tx.send(i).await.expect("room");
        }
        assert_eq!(watched.queue.depth(), Some((6, 8)));
        drop(tx);
        // The receiver sees the end although the monitor still watches.
        let mut got = 0;
        while rx.recv().await.is_some() {
            got += 1;
        }
        assert_eq!(got, 6);
        assert_eq!(watched.queue.depth(), None);
    }
}
