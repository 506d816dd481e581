//! Product activity: when each product last traded and how often it usually does, so that a
//! product quiet for far longer than its own rate is flagged.
//!
//! In: one-minute candle updates built from trades (their newest trade's exchange time), as
//! the live state applies them, from this instance's engine or from NATS. Out: the products
//! whose silence exceeds [`QUIET_FACTOR`] times their usual interval between updates, and at
//! least [`QUIET_FLOOR`].

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A silence this many times the product's usual interval is unusual.
pub const QUIET_FACTOR: f64 = 20.0;
/// No product is called quiet before this many seconds without a trade.
pub const QUIET_FLOOR: f64 = 10.0;
/// Intervals a product needs before its rate is judged.
pub const MIN_SAMPLES: u32 = 10;
/// A product silent for longer is forgotten (delisted, or halted for good).
pub const FORGET_AFTER: f64 = 86_400.0;
/// Weight of the newest interval in the running mean.
const WEIGHT: f64 = 0.1;
/// Longest interval taken into the mean (a restart's gap must not make a product look slow
/// for hours).
const MAX_INTERVAL: f64 = 3_600.0;

#[derive(Debug, Clone, Copy)]
struct Activity {
    /// Exchange time of the newest trade seen, in milliseconds.
    last_ms: i64,
    /// Running mean of the intervals between updates, in seconds.
    mean_interval: f64,
    samples: u32,
}

/// A product quiet for unusually long.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuietProduct {
    pub product_id: String,
    /// Seconds since its last trade.
    pub silent_secs: f64,
    /// Its usual interval between trades, in seconds.
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

    /// Records that `product_id` traded at `last_trade` (an update's newest trade). Older or
    /// equal times change nothing.
    pub fn record(&self, product_id: &str, last_trade: DateTime<Utc>) {
        let at = last_trade.timestamp_millis();
        let mut products = self.products.lock().unwrap_or_else(|e| e.into_inner());
        match products.get_mut(product_id) {
            Some(activity) => {
                if at <= activity.last_ms {
                    return;
                }
                let interval = ((at - activity.last_ms) as f64 / 1000.0).min(MAX_INTERVAL);
                activity.mean_interval = if activity.samples == 0 {
                    interval
                } else {
                    activity.mean_interval * (1.0 - WEIGHT) + interval * WEIGHT
                };
                activity.samples = activity.samples.saturating_add(1);
                activity.last_ms = at;
            }
            None => {
                products.insert(
                    product_id.to_owned(),
                    Activity {
                        last_ms: at,
                        mean_interval: 0.0,
                        samples: 0,
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
                let silent = (now_ms - a.last_ms) as f64 / 1000.0;
                let limit = (a.mean_interval * QUIET_FACTOR).max(QUIET_FLOOR);
                (a.samples >= MIN_SAMPLES && silent > limit).then(|| QuietProduct {
                    product_id: id.clone(),
                    silent_secs: silent,
                    usual_interval_secs: a.mean_interval,
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

    #[test]
    fn a_busy_product_is_quiet_after_the_floor_and_a_slow_one_only_after_its_own_rate() {
        let tracker = ActivityTracker::new();
        // Busy: every half second. Slow: every 30 s.
        for i in 0..=20 {
            tracker.record("BUSY-USD", at(i * 500));
            tracker.record("SLOW-USD", at(i * 30_000));
        }
        let busy_last = 20 * 500;
        let slow_last = 20 * 30_000;
        // 9 s after the busy one's last trade: under the floor.
        assert!(tracker.quiet(at(busy_last + 9_000)).is_empty());
        let quiet = tracker.quiet(at(busy_last + 11_000));
        assert_eq!(quiet.len(), 1);
        assert_eq!(quiet[0].product_id, "BUSY-USD");
        assert!((quiet[0].usual_interval_secs - 0.5).abs() < 1e-9);
        // The slow one: 20 × 30 s = 600 s.
        let ids = |q: Vec<QuietProduct>| q.into_iter().map(|p| p.product_id).collect::<Vec<_>>();
        assert!(!ids(tracker.quiet(at(slow_last + 590_000))).contains(&"SLOW-USD".to_owned()));
        assert!(ids(tracker.quiet(at(slow_last + 610_000))).contains(&"SLOW-USD".to_owned()));
    }

    #[test]
    fn too_few_samples_judge_nothing_and_old_times_change_nothing() {
        let tracker = ActivityTracker::new();
        for i in 0..5 {
            tracker.record("NEW-USD", at(i * 100));
        }
        assert!(
            tracker.quiet(at(3_600_000)).is_empty(),
            "5 intervals are no basis"
        );
        for i in 5..=12 {
            tracker.record("NEW-USD", at(i * 100));
        }
        // A copy of an older update (NATS after the local path) is not a new interval.
        tracker.record("NEW-USD", at(0));
        assert_eq!(tracker.quiet(at(1_200 + 10_500)).len(), 1);
    }

    #[test]
    fn a_product_silent_for_a_day_is_forgotten() {
        let tracker = ActivityTracker::new();
        for i in 0..=20 {
            tracker.record("GONE-USD", at(i * 1000));
        }
        assert_eq!(tracker.quiet(at(60_000)).len(), 1);
        assert!(tracker.quiet(at(20_000 + 86_400_000)).is_empty());
        assert_eq!(tracker.products(), 0);
    }
}
