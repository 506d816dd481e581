//! What the page streams share: their timers and the development reload signal.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

/// The heartbeat of a page stream, sent every keep-alive period: a patch of the page's
/// `<spot-beat>`, which presumes the connection dead when three periods pass without one (a
/// comment would keep proxies from closing the stream but tell the page nothing).
pub(super) fn beat(n: u64, every: Duration) -> bytes::Bytes {
    let event = datastar::prelude::PatchElements::new(format!(
        "<spot-beat id=\"beat\" data-n=\"{n}\" data-every=\"{}\"></spot-beat>",
        every.as_secs().max(1)
    ))
    .into_datastar_event();
    crate::sse::render(event)
}

/// A timer whose first tick is one `period` from now, and that never bursts to catch up.
pub(super) fn interval(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Resolves when the reload signal moves (`true`), or when its poller is gone (`false`, and
/// the signal is dropped); never without a signal (production).
pub(super) async fn reload_changed(reload: &mut Option<watch::Receiver<u64>>) -> bool {
    let Some(rx) = reload.as_mut() else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_ok() {
        return true;
    }
    *reload = None;
    false
}
