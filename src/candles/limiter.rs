//! Log rate limiting per key (a product): after a reconnect hundreds of late trades of one
//! product arrive at once, and one warning each would flood the log.
//!
//! In: one event per rejected item, with the engine clock's time. Out: whether to log it now
//! and how many events of the key were suppressed since the last line (to say so in it).
//! At most one line per key per period; the time is the caller's, so tests control it.

use chrono::{DateTime, TimeDelta, Utc};
use rustc_hash::FxHashMap;

/// How often a line may be logged per key by default.
pub(crate) const LOG_PERIOD: TimeDelta = TimeDelta::minutes(1);

/// One key's state.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When the last line was logged.
    logged: DateTime<Utc>,
    /// Events since then that were not logged.
    suppressed: u64,
}

/// At most one log line per key per period.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    period: TimeDelta,
    entries: FxHashMap<String, Entry>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(LOG_PERIOD)
    }
}

impl LogLimiter {
    pub(crate) fn new(period: TimeDelta) -> Self {
        LogLimiter {
            period,
            entries: FxHashMap::default(),
        }
    }

    /// An event of `key` at `now`: `Some(suppressed)` when a line is due (with the number of
    /// events of `key` not logged since the last line), `None` when it is to be suppressed.
    pub(crate) fn allow(&mut self, key: &str, now: DateTime<Utc>) -> Option<u64> {
        match self.entries.get_mut(key) {
            Some(entry) if now < entry.logged + self.period => {
                entry.suppressed = entry.suppressed.saturating_add(1);
                None
            }
            Some(entry) => {
                let suppressed = std::mem::take(&mut entry.suppressed);
                entry.logged = now;
                Some(suppressed)
            }
            None => {
                self.entries.insert(
                    key.to_owned(),
                    Entry {
                        logged: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// Forgets the keys whose period has passed at `now`, so the map holds only recent ones.
    /// Returns the keys that still had suppressed events, with their counts, for a last line.
    pub(crate) fn expire(&mut self, now: DateTime<Utc>) -> Vec<(String, u64)> {
        let mut last_lines = Vec::new();
        let period = self.period;
        self.entries.retain(|key, entry| {
            if now < entry.logged + period {
                return true;
            }
            if entry.suppressed > 0 {
                last_lines.push((key.clone(), entry.suppressed));
            }
            false
        });
        last_lines
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("time")
    }

    #[test]
    fn one_line_per_key_per_period_with_the_suppressed_count() {
        let mut limiter = LogLimiter::new(TimeDelta::minutes(1));
        assert_eq!(
            limiter.allow("BTC-USD", at(0)),
            Some(0),
            "the first is logged"
        );
        for s in 1..60 {
            assert_eq!(limiter.allow("BTC-USD", at(s)), None, "{s} s: suppressed");
        }
        // Another key is not held back by the first.
        assert_eq!(limiter.allow("ETH-USD", at(30)), Some(0));
        assert_eq!(
            limiter.allow("BTC-USD", at(60)),
            Some(59),
            "a minute later: logged, saying how many were not"
        );
        assert_eq!(limiter.allow("BTC-USD", at(61)), None);
        assert_eq!(limiter.allow("ETH-USD", at(90)), Some(0));
    }

    #[test]
    fn a_thousand_events_in_a_burst_make_one_line() {
        let mut limiter = LogLimiter::default();
        let logged = (0..1000)
            .filter(|i| {
                limiter
                    .allow("BTC-USD", at(0) + TimeDelta::milliseconds(*i))
                    .is_some()
            })
            .count();
        assert_eq!(logged, 1);
    }

    #[test]
    fn expired_keys_are_forgotten_and_report_what_they_suppressed() {
        let mut limiter = LogLimiter::new(TimeDelta::minutes(1));
        limiter.allow("A", at(0));
        limiter.allow("A", at(1));
        limiter.allow("A", at(2));
        limiter.allow("B", at(0));
        limiter.allow("C", at(30));
        assert!(limiter.expire(at(59)).is_empty(), "nothing has expired yet");
        assert_eq!(limiter.len(), 3);
        let mut last = limiter.expire(at(60));
        last.sort();
        assert_eq!(last, vec![("A".to_owned(), 2)], "B suppressed nothing");
        assert_eq!(limiter.len(), 1, "C is still recent");
        assert_eq!(limiter.allow("A", at(61)), Some(0), "A starts afresh");
    }
}
