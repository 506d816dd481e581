//! The trade latency: how long after its exchange frame arrived an update is out of a stage.
//!
//! In: a candle update and the time it left a stage. Out: the seconds since the frame of the
//! trade that caused it arrived, for the `*_seconds` histograms, and the histograms' buckets.

use chrono::{DateTime, Utc};

use crate::model::CandleUpdate;

/// Buckets of the latency histograms, in seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Latencies longer than this are not a trade's path through the service (a stalled clock or
/// an update held by a paused process): not recorded.
const LATENCY_HORIZON_MICROS: i64 = 60_000_000;

/// Seconds from the exchange frame of `update`'s newest trade being received to `now`, when
/// a trade just caused the update: a live candle built from trades. Completions by the timer,
/// revisions and REST candles carry an older (or a made-up) receive time and are no latency.
/// `None` too for a negative span (the receiving instance's clock is behind this one's).
pub fn trade_latency(update: &CandleUpdate, now: DateTime<Utc>) -> Option<f64> {
    if update.complete || update.revision > 0 || update.last_trade_id.0 == 0 {
        return None;
    }
    let elapsed = (now - update.last_received).num_microseconds()?;
    (0..LATENCY_HORIZON_MICROS)
        .contains(&elapsed)
        .then(|| elapsed as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Candle, Granularity, TradeId};

    fn update(
        complete: bool,
        revision: u32,
        last_trade_id: u64,
        received_ms_ago: i64,
    ) -> CandleUpdate {
        let now = now();
        let start = DateTime::from_timestamp(1_800_000_000 - 60, 0).expect("a time");
        CandleUpdate {
            candle: Candle {
                product_id: crate::model::ProductId::from_static("BTC-USD"),
                granularity: Granularity::OneMinute,
                start,
                open: 1.into(),
                high: 1.into(),
                low: 1.into(),
                close: 1.into(),
                volume: 1.into(),
                buy_volume: None,
                trade_count: Some(1),
            },
            complete,
            revision,
            counted_trades: 1,
            last_trade_id: TradeId(last_trade_id),
            last_trade_time: start,
            last_received: now - chrono::Duration::milliseconds(received_ms_ago),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a time")
    }

    #[test]
    fn only_updates_a_trade_just_caused_are_a_latency() {
        assert_eq!(trade_latency(&update(false, 0, 7, 3), now()), Some(0.003));
        // Completed by the timer, a minute after its last trade.
        assert_eq!(trade_latency(&update(true, 0, 7, 3), now()), None);
        // A late trade's revision, and a REST candle.
        assert_eq!(trade_latency(&update(false, 1, 7, 3), now()), None);
        assert_eq!(trade_latency(&update(false, 0, 0, 3), now()), None);
        // Clocks that disagree, and updates held for minutes.
        assert_eq!(trade_latency(&update(false, 0, 7, -5), now()), None);
        assert_eq!(trade_latency(&update(false, 0, 7, 61_000), now()), None);
    }
}
