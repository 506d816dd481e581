//! Backfills, restarts seeded from stored minutes, and the check against Coinbase's candles.

use super::*;

/// Every candle equals the aggregation of all trades in OHLCV; candles over backfilled
/// minutes have unknown counts, all others the exact ones.
fn assert_whole(updates: &[CandleUpdate], truth: &[Trade], backfilled: std::ops::Range<i64>) {
    let expected = aggregate(truth);
    let got = latest(updates);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the same candles"
    );
    for (key, e) in &expected {
        let c = &got[key].candle;
        assert_eq!(
            (c.open, c.high, c.low, c.close, c.volume),
            (e.open, e.high, e.low, e.close, e.volume),
            "{key:?}"
        );
        let touches = key.2 < backfilled.end && key.2 + common::width(key.1) > backfilled.start;
        if touches {
            assert_eq!(c.trade_count, None, "{key:?}: count unknown");
            assert_eq!(c.buy_volume, None, "{key:?}: buy volume unknown");
        } else {
            assert_eq!(c.trade_count, Some(e.count), "{key:?}");
            assert_eq!(c.buy_volume, Some(e.buy_volume), "{key:?}");
        }
        assert!(got[key].complete, "{key:?} complete");
    }
}

#[test]
fn a_backfill_makes_every_minute_and_every_granularity_over_a_gap_whole() {
    let truth = trade_series("2026-09-30T12:00:00Z", 180); // 12:00:00 - 12:20:53
    let (gap_from, gap_to) = (at("2026-09-30T12:05:20Z"), at("2026-09-30T12:08:40Z"));
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    let before: Vec<Trade> = truth
        .iter()
        .filter(|t| t.time < gap_from)
        .cloned()
        .collect();
    feed(&mut engine, &before, &mut out);
    // The connection is back at 12:08:40; its trades arrive live.
    let live: Vec<Trade> = truth
        .iter()
        .filter(|t| t.time >= gap_to && t.time < at("2026-09-30T12:10:05Z"))
        .cloned()
        .collect();
    feed(&mut engine, &live, &mut out);
    // REST, once 12:08 is complete: minutes 12:05 - 12:09 replaced whole.
    let (from, to) = (gap_from.timestamp(), gap_to.timestamp());
    let stored_hour_revision = 3;
    let backfill = Backfill {
        product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
        from,
        to,
        minutes: minute_candles(&truth, from - 20, to + 20, false),
        context: Vec::new(),
        stored: vec![(
            Granularity::OneHour,
            at("2026-09-30T12:00:00Z").timestamp(),
            stored_hour_revision,
        )],
    };
    let outcome = engine.backfill(&backfill, at("2026-09-30T12:10:05Z"), &mut out);
    assert_eq!(outcome.replaced, 4, "minutes 12:05, 12:06, 12:07, 12:08");
    assert_eq!(
        outcome.recomputed, 7,
        "one each of 5m, 15m, 30m, 1h, 2h, 6h and 1d"
    );
    // A trade of a replaced minute delivered late (a resubscribe snapshot): REST has it.
    let mut late = truth
        .iter()
        .find(|t| t.time >= at("2026-09-30T12:08:00Z") && t.time < gap_to)
        .expect("a trade in 12:08")
        .clone();
    late.received = at("2026-09-30T12:10:10Z");
    let rest: Vec<Trade> = std::iter::once(late)
        .chain(
            truth
                .iter()
                .filter(|t| t.time >= at("2026-09-30T12:10:05Z"))
                .cloned(),
        )
        .collect();
    let superseded = feed(&mut engine, &rest, &mut out);
    assert_eq!(superseded, 1, "the late trade is not counted twice");
    engine.tick(at("2026-09-30T23:59:59Z"), &mut out);
    engine.tick(at("2026-10-01T00:00:05Z"), &mut out);
    let window = at("2026-09-30T12:05:00Z").timestamp()..at("2026-09-30T12:09:00Z").timestamp();
    assert_whole(&out, &truth, window);
    let hour = latest(&out)[&(
        "BTC-USD".to_owned(),
        Granularity::OneHour,
        at("2026-09-30T12:00:00Z").timestamp(),
    )]
        .clone();
    assert!(
        hour.revision > stored_hour_revision,
        "recomputed above the stored revision: {}",
        hour.revision
    );
}

#[test]
fn a_restart_seeded_from_stored_minutes_and_rest_builds_the_whole_day() {
    // Stored until 12:06 (the old process), nothing seen until the new one subscribed at
    // 12:09:30; REST fills 12:06 - 12:09:30 and the stored minutes fill the day before it.
    let truth = trade_series("2026-09-30T12:00:00Z", 180);
    let stored_until = at("2026-09-30T12:06:00Z").timestamp();
    let subscribed = at("2026-09-30T12:09:30Z");
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    // The resubscribe snapshot brings trades from before the subscribe too.
    let live: Vec<Trade> = truth
        .iter()
        .filter(|t| t.time >= subscribed - TimeDelta::seconds(100))
        .filter(|t| t.time < at("2026-09-30T12:10:05Z"))
        .map(|t| Trade {
            received: subscribed.max(t.time),
            ..t.clone()
        })
        .collect();
    feed(&mut engine, &live, &mut out);
    let day = at("2026-09-30T00:00:00Z").timestamp();
    let backfill = Backfill {
        product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
        from: stored_until,
        to: subscribed.timestamp(),
        minutes: minute_candles(&truth, stored_until, subscribed.timestamp() + 60, false),
        context: minute_candles(&truth, day, stored_until, true),
        stored: vec![(Granularity::OneDay, day, 0)],
    };
    engine.backfill(&backfill, at("2026-09-30T12:10:05Z"), &mut out);
    let after: Vec<Trade> = truth
        .iter()
        .filter(|t| t.time >= at("2026-09-30T12:10:05Z"))
        .cloned()
        .collect();
    feed(&mut engine, &after, &mut out);
    engine.tick(at("2026-10-01T00:00:05Z"), &mut out);
    // Every candle ending after 12:06 comes out whole (those before were stored whole).
    let expected = aggregate(&truth);
    let got = latest(&out);
    for (key, e) in expected
        .iter()
        .filter(|(k, _)| k.2 + common::width(k.1) > stored_until)
    {
        let c = &got
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} emitted"))
            .candle;
        assert_eq!(
            (c.open, c.high, c.low, c.close, c.volume),
            (e.open, e.high, e.low, e.close, e.volume),
            "{key:?}"
        );
    }
    let day_candle = &got[&("BTC-USD".to_owned(), Granularity::OneDay, day)];
    assert!(day_candle.revision >= 1, "above the stored day candle");
}

#[test]
fn completed_five_minute_candles_are_checked_against_coinbases() {
    let truth = trade_series("2026-09-30T12:00:00Z", 60); // 12:00:00 - 12:06:53
    let mut engine = Aggregator::new(Timing::default());
    // Subscribed before the first bucket: its minutes are all seen whole.
    engine.feed_notice(
        &spot_canvas::model::ProductId::from_static("BTC-USD"),
        FeedNotice::Subscribed {
            at: at("2026-09-30T11:59:00Z"),
        },
    );
    let mut out = Vec::new();
    let bucket = at("2026-09-30T12:00:00Z").timestamp();
    let mut theirs = aggregate(&truth)
        .into_iter()
        .filter(|((_, g, start), _)| *g == Granularity::FiveMinutes && *start == bucket)
        .map(|((product_id, granularity, start), e)| Candle {
            product_id: product_id.parse().expect("an id"),
            granularity,
            start: DateTime::from_timestamp(start, 0).expect("start"),
            open: e.open,
            high: e.high,
            low: e.low,
            close: e.close,
            volume: e.volume,
            buy_volume: None,
            trade_count: None,
        })
        .collect::<Vec<_>>();
    assert_eq!(theirs.len(), 1);
    let before_end: Vec<Trade> = truth
        .iter()
        .filter(|t| t.time < at("2026-09-30T12:05:00Z"))
        .cloned()
        .collect();
    feed(&mut engine, &before_end, &mut out);
    // The right candle, sent after the bucket ended: a match.
    engine.exchange_candles(&theirs, at("2026-09-30T12:05:00.500Z"));
    engine.tick(at("2026-09-30T12:05:03Z"), &mut out);
    let checks = engine.take_checks();
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].verdict, Verdict::Match);
    // A deliberately wrong candle (close off by one cent) for the next bucket: a mismatch.
    let after: Vec<Trade> = truth
        .iter()
        .filter(|t| t.time >= at("2026-09-30T12:05:00Z"))
        .cloned()
        .collect();
    feed(&mut engine, &after, &mut out);
    let next =
        aggregate(&truth)[&("BTC-USD".to_owned(), Granularity::FiveMinutes, bucket + 300)].clone();
    theirs[0].start = DateTime::from_timestamp(bucket + 300, 0).expect("start");
    theirs[0].open = next.open;
    theirs[0].high = next.high;
    theirs[0].low = next.low;
    theirs[0].volume = next.volume;
    theirs[0].close = next.close + Decimal::new(1, 2);
    engine.exchange_candles(&theirs, at("2026-09-30T12:10:00.200Z"));
    engine.tick(at("2026-09-30T12:10:03Z"), &mut out);
    let checks = engine.take_checks();
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].verdict, Verdict::Mismatch, "{checks:?}");
    assert_eq!(
        checks[0].theirs.close,
        checks[0].ours.close + Decimal::new(1, 2)
    );
}
