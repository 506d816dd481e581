//! Trades and backfills the engine refuses: overflowing candles and trades from too far ahead.

use super::*;

#[test]
fn a_trade_overflowing_a_larger_candle_is_rejected_in_every_granularity() {
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    // 4e19 each: two fill minute 12:00 to 8e19; a third in 12:01 fits its minute but would
    // take the 5-minute (and every larger) candle past the sum limit.
    let big = "40000000000000000000";
    let outcome = engine.apply(
        &[
            trade(1, "2026-09-30T12:00:10Z", "100", big, Side::Buy),
            trade(2, "2026-09-30T12:00:20Z", "100", big, Side::Buy),
        ],
        at("2026-09-30T12:00:21Z"),
        &mut out,
    );
    assert_eq!(outcome.applied, 2);
    out.clear();
    let normal = trade(4, "2026-09-30T12:01:30Z", "101", "1", Side::Sell);
    let outcome = engine.apply(
        &[
            trade(3, "2026-09-30T12:01:10Z", "100", big, Side::Buy),
            normal.clone(),
            trade(
                5,
                "2026-09-30T12:01:40Z",
                "1",
                "79228162514264337593543950335",
                Side::Buy,
            ),
        ],
        at("2026-09-30T12:01:41Z"),
        &mut out,
    );
    assert_eq!((outcome.applied, outcome.rejected_overflow), (1, 2));
    // Only the normal trade went anywhere: a 12:01 minute of it alone, and every larger
    // candle holds 8e19 + 1.
    let minute = one_minute(&out);
    assert_eq!(minute.len(), 1);
    assert_eq!(minute[0].candle.volume, Decimal::ONE);
    assert_eq!(minute[0].candle.trade_count, Some(1));
    let sum = big.parse::<Decimal>().expect("d") * Decimal::from(2) + Decimal::ONE;
    for u in out
        .iter()
        .filter(|u| u.candle.granularity != Granularity::OneMinute)
    {
        assert_eq!(u.candle.volume, sum, "{u:?}");
        assert_eq!(u.candle.trade_count, Some(3), "{u:?}");
    }
    assert_eq!(out.len(), 8);
    // The rejected trade is not remembered: were it to come back, it is rejected again.
    let again = engine.apply(
        &[trade(3, "2026-09-30T12:01:10Z", "100", big, Side::Buy)],
        at("2026-09-30T12:01:42Z"),
        &mut out,
    );
    assert_eq!((again.rejected_overflow, again.duplicates), (1, 0));
}

#[test]
fn a_frame_whose_tally_would_overflow_a_larger_candle_costs_only_its_offending_trade() {
    // The engine tallies a frame's trades of one minute first; when that tally cannot join
    // the 5-minute candle, the trades go one by one: the offender is rejected, the rest (and
    // the repeat of one of them, a duplicate) count as they would alone.
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    let big = "60000000000000000000";
    let first = engine.apply(
        &[trade(1, "2026-09-30T12:00:10Z", "100", big, Side::Buy)],
        at("2026-09-30T12:00:11Z"),
        &mut out,
    );
    assert_eq!(first.applied, 1);
    out.clear();
    let small = trade(3, "2026-09-30T12:01:20Z", "99", "2", Side::Sell);
    let outcome = engine.apply(
        &[
            small.clone(),
            trade(2, "2026-09-30T12:01:10Z", "101", big, Side::Buy),
            small.clone(),
            trade(4, "2026-09-30T12:01:30Z", "98", "3", Side::Buy),
        ],
        at("2026-09-30T12:01:31Z"),
        &mut out,
    );
    assert_eq!(
        (
            outcome.applied,
            outcome.rejected_overflow,
            outcome.duplicates
        ),
        (2, 1, 1)
    );
    let minute = one_minute(&out);
    assert_eq!(minute.len(), 1);
    let c = &minute[0].candle;
    assert_eq!(
        (c.open, c.high, c.low, c.close, c.volume, c.trade_count),
        (
            Decimal::from(99),
            Decimal::from(99),
            Decimal::from(98),
            Decimal::from(98),
            Decimal::from(5),
            Some(2)
        )
    );
    let five = out
        .iter()
        .find(|u| u.candle.granularity == Granularity::FiveMinutes)
        .expect("the 5-minute candle changed");
    assert_eq!(
        five.candle.volume,
        big.parse::<Decimal>().expect("d") + Decimal::from(5)
    );
    assert_eq!(five.candle.trade_count, Some(3));
    // The rejected trade was not remembered; the applied ones were.
    let again = engine.apply(
        &[
            trade(2, "2026-09-30T12:01:10Z", "101", big, Side::Buy),
            small,
        ],
        at("2026-09-30T12:01:32Z"),
        &mut out,
    );
    assert_eq!((again.rejected_overflow, again.duplicates), (1, 1));
}

#[test]
fn a_backfill_whose_candles_would_overflow_changes_nothing() {
    let truth = trade_series("2026-09-30T12:00:00Z", 30);
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    feed(&mut engine, &truth, &mut out);
    engine.tick(at("2026-09-30T12:04:00Z"), &mut out);
    let before = latest(&out);
    out.clear();
    let mut minutes = minute_candles(&truth, 0, i64::MAX, false);
    minutes[1].volume = "79228162514264337593543950335".parse().expect("d");
    let outcome = engine.backfill(
        &Backfill {
            product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
            from: at("2026-09-30T12:00:00Z").timestamp(),
            to: at("2026-09-30T12:03:00Z").timestamp(),
            minutes,
            context: Vec::new(),
            stored: Vec::new(),
        },
        at("2026-09-30T12:04:00Z"),
        &mut out,
    );
    assert!(outcome.rejected_overflow);
    assert_eq!((outcome.replaced, outcome.recomputed), (0, 0));
    assert!(out.is_empty(), "nothing emitted");
    // Later trades still land on the candles as they were.
    let late = trade(99, "2026-09-30T12:00:05Z", "1", "1", Side::Buy);
    engine.apply(
        std::slice::from_ref(&late),
        at("2026-09-30T12:04:01Z"),
        &mut out,
    );
    let mut all: Vec<Trade> = truth.clone();
    all.push(late);
    let expected = aggregate(&all);
    for (key, u) in latest(&out) {
        assert_eq!(u.candle.volume, expected[&key].volume, "{key:?}");
        assert!(before.contains_key(&key));
    }
}

#[test]
fn trades_more_than_five_seconds_ahead_of_the_clock_are_rejected() {
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    let now = at("2026-09-30T12:00:30Z");
    let outcome = engine.apply(
        &[
            trade(1, "2026-09-30T12:00:35Z", "100", "1", Side::Buy),
            trade(2, "2026-09-30T12:00:35.001Z", "100", "1", Side::Buy),
            trade(3, "2100-01-01T00:00:00Z", "100", "1", Side::Buy),
        ],
        now,
        &mut out,
    );
    assert_eq!((outcome.applied, outcome.rejected_future), (1, 2));
    assert!(out.iter().all(|u| u.candle.start <= now), "{out:?}");
}
