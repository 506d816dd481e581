//! Comparison of our candles with Coinbase's own: the 5-minute candles of the WebSocket
//! `candles` channel (checked by the engine when a bucket completes) and REST one-minute
//! candles (checked by the reconciler).
//!
//! In: our candle and theirs for the same bucket. Out: a [`Verdict`]. OHLCV must be equal to
//! the last decimal. Coinbase re-sends the open 5-minute bucket every second, so the last
//! candle it sent for a bucket may predate the bucket's last trades: a candle sent before the
//! bucket ended that is a consistent earlier state of ours (same open, range inside ours, less
//! volume) cannot be judged and counts as `behind`, not as a mismatch. A candle of ours
//! with a minute not held whole (before the subscribe and not yet backfilled, or in a
//! reconnect or gap window) is `not_comparable`: it is counted, never judged.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::model::Candle;

/// The outcome of one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Open, high, low, close and volume are equal.
    Match,
    /// They differ, and theirs is not an earlier state of ours.
    Mismatch,
    /// Theirs was sent before the bucket ended and is an earlier state of ours.
    Behind,
    /// Ours is not built from whole minutes (some of its trades may be missing): not
    /// compared. Never returned by [`compare`].
    NotComparable,
}

/// Compares `ours` with `theirs` (the same bucket). `theirs_final`: theirs was sent after the
/// bucket ended (or comes from REST), so it holds every trade.
pub fn compare(ours: &Candle, theirs: &Candle, theirs_final: bool) -> Verdict {
    if ours.open == theirs.open
        && ours.high == theirs.high
        && ours.low == theirs.low
        && ours.close == theirs.close
        && ours.volume == theirs.volume
    {
        return Verdict::Match;
    }
    let earlier_state = theirs.open == ours.open
        && theirs.high <= ours.high
        && theirs.low >= ours.low
        && theirs.volume < ours.volume;
    if !theirs_final && earlier_state {
        Verdict::Behind
    } else {
        Verdict::Mismatch
    }
}

/// One comparison, with both candles for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossCheck {
    pub ours: Candle,
    pub theirs: Candle,
    pub verdict: Verdict,
}

/// Counts of one kind of comparison.
#[derive(Debug, Default)]
pub struct CheckCounts {
    matched: AtomicU64,
    mismatched: AtomicU64,
    behind: AtomicU64,
    not_comparable: AtomicU64,
}

/// What `/health` shows of one kind of comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CheckReport {
    pub matched: u64,
    pub mismatched: u64,
    /// Comparisons that could not be judged (theirs predates the bucket's last trades).
    pub behind: u64,
    /// Candles of ours not built from whole minutes: not compared.
    pub not_comparable: u64,
    /// `matched / (matched + mismatched)`; `None` before the first judged comparison.
    pub match_rate: Option<f64>,
}

impl CheckCounts {
    /// Counts `check` and logs a mismatch with both candles. `source` names the comparison.
    pub fn record(&self, source: &'static str, check: &CrossCheck) {
        let counter = match check.verdict {
            Verdict::Match => &self.matched,
            Verdict::Behind => &self.behind,
            Verdict::NotComparable => &self.not_comparable,
            Verdict::Mismatch => {
                tracing::warn!(
                    source,
                    product = %check.ours.product_id,
                    granularity = %check.ours.granularity,
                    start = %check.ours.start,
                    ours = %ohlcv(&check.ours),
                    theirs = %ohlcv(&check.theirs),
                    "cross-check mismatch"
                );
                &self.mismatched
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let verdict = verdict_name(check.verdict);
        metrics::counter!("spot_canvas_crosscheck_total", "source" => source, "verdict" => verdict)
            .increment(1);
    }

    pub fn report(&self) -> CheckReport {
        let matched = self.matched.load(Ordering::Relaxed);
        let mismatched = self.mismatched.load(Ordering::Relaxed);
        let judged = matched + mismatched;
        CheckReport {
            matched,
            mismatched,
            behind: self.behind.load(Ordering::Relaxed),
            not_comparable: self.not_comparable.load(Ordering::Relaxed),
            match_rate: (judged > 0).then(|| matched as f64 / judged as f64),
        }
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Match => "match",
        Verdict::Mismatch => "mismatch",
        Verdict::Behind => "behind",
        Verdict::NotComparable => "not_comparable",
    }
}

/// `o=… h=… l=… c=… v=…`, for logs.
pub fn ohlcv(c: &Candle) -> String {
    format!(
        "o={} h={} l={} c={} v={}",
        c.open, c.high, c.low, c.close, c.volume
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Granularity;
    use rust_decimal::Decimal;

    fn candle(o: i64, h: i64, l: i64, c: i64, v: i64) -> Candle {
        Candle {
            product_id: crate::model::ProductId::from_static("BTC-USD"),
            granularity: Granularity::FiveMinutes,
            start: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
            open: Decimal::from(o),
            high: Decimal::from(h),
            low: Decimal::from(l),
            close: Decimal::from(c),
            volume: Decimal::from(v),
            buy_volume: None,
            trade_count: None,
        }
    }

    #[test]
    fn equal_candles_match_whatever_the_trade_counts() {
        let mut ours = candle(10, 12, 9, 11, 5);
        ours.trade_count = Some(3);
        assert_eq!(
            compare(&ours, &candle(10, 12, 9, 11, 5), true),
            Verdict::Match
        );
    }

    #[test]
    fn an_earlier_state_sent_before_the_end_is_behind_but_final_ones_mismatch() {
        let ours = candle(10, 12, 9, 11, 5);
        let earlier = candle(10, 11, 9, 11, 4);
        assert_eq!(compare(&ours, &earlier, false), Verdict::Behind);
        assert_eq!(compare(&ours, &earlier, true), Verdict::Mismatch);
    }

    #[test]
    fn inconsistent_candles_mismatch_even_when_sent_early() {
        let ours = candle(10, 12, 9, 11, 5);
        // A higher high than ours, another open, more volume: none is an earlier state.
        for theirs in [
            candle(10, 13, 9, 11, 4),
            candle(11, 12, 9, 11, 4),
            candle(10, 12, 9, 11, 6),
        ] {
            assert_eq!(compare(&ours, &theirs, false), Verdict::Mismatch);
        }
    }

    #[test]
    fn the_report_gives_the_match_rate_of_judged_comparisons() {
        let counts = CheckCounts::default();
        assert_eq!(counts.report().match_rate, None);
        let ours = candle(10, 12, 9, 11, 5);
        for (theirs, fin) in [
            (candle(10, 12, 9, 11, 5), true),
            (candle(10, 12, 9, 11, 5), true),
            (candle(10, 12, 9, 11, 5), true),
            (candle(10, 12, 9, 12, 5), true),
            (candle(10, 11, 9, 11, 4), false),
        ] {
            let verdict = compare(&ours, &theirs, fin);
            counts.record(
                "test",
                &CrossCheck {
                    ours: ours.clone(),
                    theirs,
                    verdict,
                },
            );
        }
        let report = counts.report();
        assert_eq!(
            (report.matched, report.mismatched, report.behind),
            (3, 1, 1)
        );
        assert_eq!(report.match_rate, Some(0.75));
    }
}
