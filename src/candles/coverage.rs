//! Which minutes of a product the engine holds whole: seen live from their start since the
//! product was subscribed, with no reconnect or gap window over them, or replaced by a REST
//! backfill. Only 5-minute candles made of whole minutes are cross-checked with Coinbase's:
//! right after a start, the minutes before the subscribe are only whole once their backfill
//! is merged, and a comparison before that would report mismatches that are not.
//!
//! In: the feed's subscribes, reconnects and gaps ([`FeedNotice`]) and the windows backfills
//! replaced. Out: whether a minute is whole.

use chrono::{DateTime, Utc};

/// What the feed said about the trades of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedNotice {
    /// Subscribed at `at`: trades before it were not seen.
    Subscribed { at: DateTime<Utc> },
    /// Trades between `from` and `to` may be missing (a reconnect or a sequence gap).
    Missing {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// No longer ingested (delisted, disabled): the engine forgets the product.
    Unsubscribed,
}

/// The windows of one product.
#[derive(Debug, Clone, Default)]
pub(crate) struct Coverage {
    /// Trades are seen from this instant (Unix milliseconds); `None`: not subscribed.
    live_from: Option<i64>,
    /// Windows of possibly missing trades, Unix milliseconds `[from, to)`.
    holes: Vec<(i64, i64)>,
    /// Windows of minutes replaced by a backfill, Unix seconds `[from, to)`.
    filled: Vec<(i64, i64)>,
}

impl Coverage {
    pub(crate) fn note(&mut self, notice: FeedNotice) {
        match notice {
            FeedNotice::Subscribed { at } => {
                // Subscribed again (delisted and back): what came before was not all seen.
                let at = at.timestamp_millis();
                self.live_from = Some(self.live_from.map_or(at, |from| from.max(at)));
            }
            FeedNotice::Missing { from, to } => {
                let (from, to) = (from.timestamp_millis(), to.timestamp_millis());
                if from < to {
                    self.holes.push((from, to));
                }
            }
            // The aggregator drops the whole product instead.
            FeedNotice::Unsubscribed => self.live_from = None,
        }
    }

    /// The minutes of `[from, to)` (Unix seconds) were replaced by a backfill.
    pub(crate) fn fill(&mut self, from: i64, to: i64) {
        if from < to {
            self.filled.push((from, to));
        }
    }

    /// Whether every trade of the minute starting at `minute` (Unix seconds) is held.
    pub(crate) fn minute_whole(&self, minute: i64) -> bool {
        let end = minute.saturating_add(60);
        if self.filled.iter().any(|&(a, b)| a <= minute && end <= b) {
            return true;
        }
        let (start_ms, end_ms) = (minute.saturating_mul(1000), end.saturating_mul(1000));
        self.live_from.is_some_and(|from| from <= start_ms)
            && !self.holes.iter().any(|&(a, b)| a < end_ms && b > start_ms)
    }

    /// Forgets the windows that ended before `secs` (Unix seconds).
    pub(crate) fn forget_before(&mut self, secs: i64) {
        let ms = secs.saturating_mul(1000);
        self.holes.retain(|&(_, to)| to >= ms);
        self.filled.retain(|&(_, to)| to >= secs);
    }

    /// Windows held (for memory checks).
    pub(crate) fn windows(&self) -> usize {
        self.holes.len() + self.filled.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minute start (1.8e9 is a multiple of 60).
    const M: i64 = 1_800_000_000;

    fn at_ms(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("time")
    }

    #[test]
    fn nothing_is_whole_before_the_subscribe() {
        let mut c = Coverage::default();
        assert!(!c.minute_whole(M), "not subscribed");
        c.note(FeedNotice::Subscribed {
            at: at_ms(M * 1000 + 1),
        });
        assert!(!c.minute_whole(M), "subscribed 1 ms into the minute");
        assert!(c.minute_whole(M + 60));
        c.fill(M - 60, M + 60);
        assert!(c.minute_whole(M), "backfilled");
        assert!(c.minute_whole(M - 60));
        assert!(!c.minute_whole(M - 120));
    }

    #[test]
    fn a_missing_window_breaks_the_minutes_it_touches_until_filled() {
        let mut c = Coverage::default();
        c.note(FeedNotice::Subscribed { at: at_ms(0) });
        c.note(FeedNotice::Missing {
            from: at_ms((M + 70) * 1000),
            to: at_ms((M + 120) * 1000 + 1),
        });
        assert!(c.minute_whole(M));
        assert!(!c.minute_whole(M + 60));
        assert!(!c.minute_whole(M + 120), "1 ms into the next minute");
        assert!(c.minute_whole(M + 180));
        c.fill(M + 60, M + 180);
        assert!(c.minute_whole(M + 60) && c.minute_whole(M + 120));
        c.forget_before(M + 181);
        assert_eq!(c.windows(), 0);
    }
}
