//! Product activity: when each product last traded and how often it usually does, so that a
//! product quiet for far longer than its own rate is flagged.
//!
//! In: one-minute candle updates built from trades (their newest trade's exchange time), as
//! the live state applies them, from this instance's engine or from NATS. Out: the products
//! whose silence exceeds [`QUIET_FACTOR`] times their usual long gap between trades (the 90th
//! percentile of their last 32 gaps), and at least [`QUIET_FLOOR`].

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A silence this many times the product's usual long gap is unusual.
pub const QUIET_FACTOR: f64 = 10.0;
/// No product is called quiet before this many seconds without a trade.
pub const QUIET_FLOOR: f64 = 10.0;
/// Intervals a product needs before its rate is judged.
pub const MIN_SAMPLES: usize = 10;
/// A product silent for longer is forgotten (delisted, or halted for good).
pub const FORGET_AFTER: f64 = 86_400.0;
/// Intervals kept per product.
const KEPT: usize = 32;
/// The usual gap: this quantile of the kept intervals. Trades come in bursts (a taker sweeping
/// the book, news): a mean would be dominated by the bursts' tiny gaps and call an ordinary
/// lull in a thin market unusual; a high quantile measures the lulls themselves.
const QUANTILE: f64 = 0.9;
/// Trade times this far ahead of the clock are not taken.
const FUTURE_SLACK_MS: i64 = 5_000;
/// Longest interval taken (a restart's gap must not make a product look slow for hours).
const MAX_INTERVAL: f64 = 3_600.0;

#[derive(Debug, Clone)]
struct Activity {
    /// Exchange time of the newest trade seen, in milliseconds.
    last_ms: i64,
    /// The last intervals between trades, in seconds (a ring of [`KEPT`]).
    intervals: Vec<f32>,
    /// Where the next interval goes once the ring is full.
    next: usize,
}

impl Activity {
    fn push(&mut self, interval: f64) {
        let interval = interval.min(MAX_INTERVAL) as f32;
        if self.intervals.len() < KEPT {
            self.intervals.push(interval);
        } else {
            self.intervals[self.next] = interval;
            self.next = (self.next + 1) % KEPT;
        }
    }

    /// The usual long gap, in seconds.
    fn usual(&self) -> f64 {
        let mut sorted = self.intervals.clone();
        sorted.sort_by(f32::total_cmp);
        let at = ((sorted.len() as f64 - 1.0) * QUANTILE).round() as usize;
        sorted.get(at).copied().map_or(0.0, f64::from)
    }
}

/// A product quiet for unusually long.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuietProduct {
    pub product_id: String,
    /// Seconds since its last trade.
    pub silent_secs: f64,
    /// Its usual long gap between trades (the 90th percentile of its last 32), in seconds.
    pub usual_interval_secs: f64,
    pub last_trade: DateTime<Utc>,
}

/// Every product's activity; shared by the live state and the monitor.
#[derive(Debug, Default)]
pub struct ActivityTracker {
    products: Mutex<HashMap<String, Activity>>,
}

impl ActivityTracker {
    pub fn new() -> Self {
        ActivityTracker::default()
    }

    /// Records that `product_id` traded at `last_trade` (an update's newest trade), seen at
    /// `now`. Older or equal times change nothing; a time more than a few seconds ahead of
    /// `now` (a producer with a bad clock) is not taken, or the product would look busy forever.
    pub fn record(&self, product_id: &str, last_trade: DateTime<Utc>, now: DateTime<Utc>) {
        let at = last_trade.timestamp_millis();
        if at > now.timestamp_millis().saturating_add(FUTURE_SLACK_MS) {
            return;
        }
        let mut products = self.products.lock().unwrap_or_else(|e| e.into_inner());
        match products.get_mut(product_id) {
            Some(activity) => {
                if at <= activity.last_ms {
                    return;
                }
                activity.push((at - activity.last_ms) as f64 / 1000.0);
                activity.last_ms = at;
            }
            None => {
                products.insert(
                    product_id.to_owned(),
                    Activity {
                        last_ms: at,
                        intervals: Vec::with_capacity(KEPT),
                        next: 0,
                    },
                );
            }
        }
    }

    /// The products quiet for unusually long at `now`, longest silence first. Products silent
    /// past [`FORGET_AFTER`] are forgotten.
    pub fn quiet(&self, now: DateTime<Utc>) -> Vec<QuietProduct> {
        let now_ms = now.timestamp_millis();
        let mut products = self.products.lock().unwrap_or_else(|e| e.into_inner());
        products.retain(|_, a| ((now_ms - a.last_ms) as f64 / 1000.0) < FORGET_AFTER);
        let mut quiet: Vec<QuietProduct> = products
            .iter()
            .filter_map(|(id, a)| {
                if a.intervals.len() < MIN_SAMPLES {
                    return None;
                }
                let silent = (now_ms - a.last_ms) as f64 / 1000.0;
                let usual = a.usual();
                let limit = (usual * QUIET_FACTOR).max(QUIET_FLOOR);
                (silent > limit).then(|| QuietProduct {
                    product_id: id.clone(),
                    silent_secs: silent,
                    usual_interval_secs: usual,
                    last_trade: DateTime::from_timestamp_millis(a.last_ms).unwrap_or(now),
                })
            })
            .collect();
        quiet.sort_by(|a, b| b.silent_secs.total_cmp(&a.silent_secs));
        quiet
    }

    /// Products tracked.
    pub fn products(&self) -> usize {
        self.products
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).expect("a time")
    }

    fn ids(quiet: Vec<QuietProduct>) -> Vec<String> {
        quiet.into_iter().map(|p| p.product_id).collect()
    }

    #[test]
    fn a_busy_product_is_quiet_after_the_floor_and_a_slow_one_only_after_its_own_rate() {
        let tracker = ActivityTracker::new();
        // Busy: every half second. Slow: every 30 s.
        for i in 0..=20 {
            tracker.record("BUSY-USD", at(i * 500), at(i * 500));
            tracker.record("SLOW-USD", at(i * 30_000), at(i * 30_000));
        }
        let busy_last = 20 * 500;
        let slow_last = 20 * 30_000;
        // 9 s after the busy one's last trade: under the floor.
        assert!(!ids(tracker.quiet(at(busy_last + 9_000))).contains(&"BUSY-USD".into()));
        let quiet = tracker.quiet(at(busy_last + 11_000));
        assert_eq!(ids(quiet.clone()), vec!["BUSY-USD"]);
        assert!((quiet[0].usual_interval_secs - 0.5).abs() < 1e-6);
        // The slow one: 10 × 30 s = 300 s.
        assert!(!ids(tracker.quiet(at(slow_last + 290_000))).contains(&"SLOW-USD".into()));
        assert!(ids(tracker.quiet(at(slow_last + 310_000))).contains(&"SLOW-USD".into()));
    }

    #[test]
    fn a_bursty_product_is_judged_by_its_lulls_not_its_bursts() {
        let tracker = ActivityTracker::new();
        // Bursts of 5 trades 10 ms apart, every 60 s: the mean gap is 12 s, the lulls 60 s.
        let mut t = 0;
        for _ in 0..8 {
            for _ in 0..5 {
                tracker.record("THIN-USD", at(t), at(t));
                t += 10;
            }
            t += 60_000;
        }
        let last = t - 60_000 - 10;
        // A two-minute lull is ordinary for it.
        assert!(tracker.quiet(at(last + 120_000)).is_empty());
        assert_eq!(ids(tracker.quiet(at(last + 601_000))), vec!["THIN-USD"]);
    }

    #[test]
    fn too_few_samples_judge_nothing_and_old_or_future_times_change_nothing() {
        let tracker = ActivityTracker::new();
        for i in 0..5 {
            tracker.record("NEW-USD", at(i * 100), at(i * 100));
        }
        assert!(
            tracker.quiet(at(3_600_000)).is_empty(),
            "4 intervals are no basis"
        );
        for i in 5..=12 {
            tracker.record("NEW-USD", at(i * 100), at(i * 100));
        }
        // A copy of an older update (NATS after the local path) is not a new interval.
        tracker.record("NEW-USD", at(0), at(1_200));
        // Nor is a trade stamped a day ahead by a bad producer.
        tracker.record("NEW-USD", at(86_400_000), at(1_200));
        assert_eq!(ids(tracker.quiet(at(1_200 + 10_500))), vec!["NEW-USD"]);
    }

    #[test]
    fn a_product_silent_for_a_day_is_forgotten() {
        let tracker = ActivityTracker::new();
        for i in 0..=20 {
            tracker.record("GONE-USD", at(i * 1000), at(i * 1000));
        }
        assert_eq!(tracker.quiet(at(60_000)).len(), 1);
        assert!(tracker.quiet(at(20_000 + 86_400_000)).is_empty());
        assert_eq!(tracker.products(), 0);
    }
}
