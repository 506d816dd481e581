//! Backoff for everything that retries: exponential with "equal jitter", and the feed's
//! reconnect policy built on it. Used by the feed, the sinks and the reconciler.

use std::time::Duration;

/// Reconnection backoff: exponential with jitter, reset after a healthy period.
#[derive(Debug, Clone, Copy)]
pub struct ReconnectPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// A connection up this long counts as healthy: the next failure starts from `base`.
    pub healthy_after: Duration,
}

impl ReconnectPolicy {
    /// Coinbase's production settings: 2 s base, 60 s cap, healthy after 30 s.
    pub const DEFAULT: ReconnectPolicy = ReconnectPolicy {
        base: Duration::from_secs(2),
        cap: Duration::from_secs(60),
        healthy_after: Duration::from_secs(30),
    };

    /// The delay before reconnect attempt `attempt` (0-based): "equal jitter", half fixed and
    /// half random, so delays grow monotonically while spreading reconnects out.
    pub fn delay(&self, attempt: u32, unit_random: f64) -> Duration {
        equal_jitter(self.base, self.cap, attempt, unit_random)
    }
}

/// Exponential backoff with "equal jitter": `base · 2^attempt` capped at `cap`, half of it
/// fixed and half random (`unit_random` in 0..=1). Shared by reconnects and sink retries.
pub fn equal_jitter(base: Duration, cap: Duration, attempt: u32, unit_random: f64) -> Duration {
    let full = base
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(cap);
    let half = full / 2;
    half + half.mul_f64(unit_random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_from_the_base_to_the_cap() {
        let p = ReconnectPolicy::DEFAULT;
        assert_eq!(p.delay(0, 1.0), Duration::from_secs(2));
        assert_eq!(p.delay(0, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(1, 1.0), Duration::from_secs(4));
        assert_eq!(p.delay(10, 1.0), Duration::from_secs(60));
        assert_eq!(p.delay(u32::MAX, 0.5), Duration::from_secs(45));
        // Below the cap, the least next delay is the greatest current one.
        for attempt in 0..4 {
            assert!(
                p.delay(attempt + 1, 0.0) >= p.delay(attempt, 1.0),
                "monotonic"
            );
        }
    }
}
