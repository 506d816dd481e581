//! Candles from trades: updates per batch, completion on the clock, revisions, duplicates and
//! forgetting.

use super::*;

#[test]
fn a_batch_emits_one_update_per_touched_candle() {
    let mut engine = Aggregator::new(Timing::default());
    let trades: Vec<Trade> = (0..10)
        .map(|i| trade(100 + i, "2026-09-30T12:00:30Z", "100", "1", Side::Buy))
        .collect();
    let mut out = Vec::new();
    let outcome = engine.apply(&trades, at("2026-09-30T12:00:31Z"), &mut out);
    assert_eq!(outcome.applied, 10);
    assert_eq!(out.len(), 8, "one per granularity");
    assert!(out.iter().all(|u| !u.complete && u.revision == 0));
    assert!(out.iter().all(|u| u.candle.trade_count == Some(10)));
}

#[test]
fn candles_complete_on_the_clock_without_further_trades() {
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    engine.apply(
        &[trade(1, "2026-09-30T12:00:30Z", "100", "1", Side::Buy)],
        at("2026-09-30T12:00:31Z"),
        &mut out,
    );
    out.clear();
    engine.tick(at("2026-09-30T12:01:01.999Z"), &mut out);
    assert!(out.is_empty(), "within the 2 s grace");
    engine.tick(at("2026-09-30T12:01:02Z"), &mut out);
    let done = one_minute(&out);
    assert_eq!(done.len(), 1);
    assert!(done[0].complete);
    assert_eq!(done[0].revision, 0);
    assert_eq!(out.len(), 1, "only the minute is over");
    out.clear();
    engine.tick(at("2026-09-30T12:01:30Z"), &mut out);
    assert!(out.is_empty(), "complete is emitted once");
    engine.tick(at("2026-09-30T12:05:02Z"), &mut out);
    assert_eq!(
        out.iter().map(|u| u.candle.granularity).collect::<Vec<_>>(),
        vec![Granularity::FiveMinutes]
    );
}

#[test]
fn a_late_trade_revises_a_complete_candle() {
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    engine.apply(
        &[trade(10, "2026-09-30T12:00:30Z", "100", "1", Side::Buy)],
        at("2026-09-30T12:00:31Z"),
        &mut out,
    );
    engine.tick(at("2026-09-30T12:01:05Z"), &mut out);
    out.clear();
    // A trade earlier in the same minute, arriving two minutes later: new open.
    engine.apply(
        &[trade(9, "2026-09-30T12:00:10Z", "90", "2", Side::Sell)],
        at("2026-09-30T12:03:00Z"),
        &mut out,
    );
    let revised = one_minute(&out);
    assert_eq!(revised.len(), 1);
    let u = revised[0];
    assert!(u.complete);
    assert_eq!(u.revision, 1);
    assert_eq!(u.candle.open, Decimal::from(90));
    assert_eq!(u.candle.close, Decimal::from(100));
    assert_eq!(u.candle.low, Decimal::from(90));
    assert_eq!(u.candle.volume, Decimal::from(3));
    assert_eq!(
        u.candle.buy_volume,
        Some(Decimal::from(2)),
        "maker sold: taker bought"
    );
    assert_eq!(u.last_trade_time, at("2026-09-30T12:00:30Z"));
    out.clear();
    engine.tick(at("2026-09-30T12:03:30Z"), &mut out);
    assert!(
        one_minute(&out).is_empty(),
        "no second emission of revision 1"
    );
    engine.apply(
        &[trade(11, "2026-09-30T12:00:50Z", "101", "1", Side::Buy)],
        at("2026-09-30T12:04:00Z"),
        &mut out,
    );
    assert_eq!(one_minute(&out)[0].revision, 2);
}

#[test]
fn trades_older_than_the_revision_window_are_counted_not_applied() {
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    let outcome = engine.apply(
        &[trade(1, "2026-09-30T12:00:30Z", "100", "1", Side::Buy)],
        at("2026-09-30T12:06:01Z"),
        &mut out,
    );
    assert_eq!((outcome.applied, outcome.too_late), (0, 1));
    assert!(out.is_empty());
    // At exactly the window's edge it still counts.
    let outcome = engine.apply(
        &[trade(2, "2026-09-30T12:00:30Z", "100", "1", Side::Buy)],
        at("2026-09-30T12:06:00Z"),
        &mut out,
    );
    assert_eq!(outcome.applied, 1);
}

#[test]
fn duplicate_trades_change_nothing() {
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    let t = trade(5, "2026-09-30T12:00:30Z", "100", "1", Side::Buy);
    engine.apply(
        std::slice::from_ref(&t),
        at("2026-09-30T12:00:31Z"),
        &mut out,
    );
    out.clear();
    let outcome = engine.apply(&[t.clone(), t], at("2026-09-30T12:00:40Z"), &mut out);
    assert_eq!((outcome.applied, outcome.duplicates), (0, 2));
    assert!(out.is_empty(), "nothing to emit");
}

#[test]
fn trade_ids_order_numerically_within_one_timestamp() {
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    engine.apply(
        &[
            trade(1000, "2026-09-30T12:00:30Z", "2", "1", Side::Buy),
            trade(999, "2026-09-30T12:00:30Z", "1", "1", Side::Buy),
        ],
        at("2026-09-30T12:00:31Z"),
        &mut out,
    );
    let u = one_minute(&out)[0];
    assert_eq!(u.candle.open, Decimal::from(1), "999 comes before 1000");
    assert_eq!(u.candle.close, Decimal::from(2));
}

#[test]
fn an_unsubscribed_product_is_forgotten_once_its_open_candles_are_completed() {
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    let id = spot_canvas::model::ProductId::from_static("BTC-USD");
    engine.apply(
        &[trade(1, "2026-09-30T10:00:05Z", "100", "1", Side::Buy)],
        at("2026-09-30T10:00:06Z"),
        &mut out,
    );
    engine.feed_notice(&id, FeedNotice::Unsubscribed);
    out.clear();
    // Still held while its day is open: the hour's and the day's candles complete as usual.
    engine.tick(at("2026-09-30T12:00:00Z"), &mut out);
    assert_eq!(engine.footprint().products, 1);
    assert!(
        out.iter()
            .any(|u| u.candle.granularity == Granularity::OneHour && u.complete)
    );
    out.clear();
    engine.tick(at("2026-10-01T00:00:10Z"), &mut out);
    let day = out
        .iter()
        .find(|u| u.candle.granularity == Granularity::OneDay)
        .expect("the day's candle is completed before the product is forgotten");
    assert!(day.complete && day.candle.trade_count == Some(1));
    assert_eq!(engine.footprint().products, 0, "then forgotten");
    // Subscribed again before its day ends: kept.
    engine.apply(
        &[trade(2, "2026-10-01T00:01:00Z", "100", "1", Side::Buy)],
        at("2026-10-01T00:01:01Z"),
        &mut out,
    );
    engine.feed_notice(&id, FeedNotice::Unsubscribed);
    engine.feed_notice(
        &id,
        FeedNotice::Subscribed {
            at: at("2026-10-01T00:02:00Z"),
        },
    );
    engine.tick(at("2026-10-02T00:00:10Z"), &mut out);
    assert_eq!(engine.footprint().products, 1);
}
