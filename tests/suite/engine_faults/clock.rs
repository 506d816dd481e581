//! The clock: completion after the grace, the revision window, the UTC day and forgotten trade ids.

use super::*;

// ---- Time: completion, revisions, the day, the window's edge ------------------------------

#[tokio::test(start_paused = true)]
async fn a_candle_completes_when_the_clock_passes_its_end_plus_grace() {
    let mut h = Harness::start(at("2026-09-30T12:00:30Z"));
    h.trades(vec![trade(
        "BTC-USD",
        1,
        at("2026-09-30T12:00:30Z"),
        "100",
        "1",
    )])
    .await;
    let live = h.take();
    assert_eq!(live.len(), 8, "one live update per granularity");
    assert!(live.iter().all(|u| !u.complete && u.revision == 0));
    h.at(at("2026-09-30T12:01:01.999Z")).await;
    assert!(
        h.take().is_empty(),
        "within the 2 s grace: nothing completes"
    );
    h.at(at("2026-09-30T12:01:02Z")).await;
    let done = h.take();
    assert_eq!(done.len(), 1, "only the minute is over: {done:?}");
    assert_eq!(done[0].candle.granularity, Granularity::OneMinute);
    assert!(done[0].complete && done[0].revision == 0);
    assert_eq!(done[0].candle.trade_count, Some(1));
    h.at(at("2026-09-30T12:04:00Z")).await;
    assert!(h.take().is_empty(), "complete is emitted once");
    h.at(at("2026-09-30T12:05:02Z")).await;
    let done = h.take();
    assert_eq!(
        done.iter()
            .map(|u| (u.candle.granularity, u.complete))
            .collect::<Vec<_>>(),
        vec![(Granularity::FiveMinutes, true)]
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_late_trade_inside_the_revision_window_revises_and_one_outside_is_too_late() {
    let mut h = Harness::start(at("2026-09-30T12:00:31Z"));
    h.trades(vec![trade(
        "BTC-USD",
        10,
        at("2026-09-30T12:00:30Z"),
        "100",
        "1",
    )])
    .await;
    h.at(at("2026-09-30T12:05:03Z")).await;
    h.take();
    // The minute ended at 12:01; the window is 5 minutes: 12:06:00 is its last second.
    h.at(at("2026-09-30T12:06:00Z")).await;
    h.trades(vec![trade(
        "BTC-USD",
        9,
        at("2026-09-30T12:00:10Z"),
        "90",
        "2",
    )])
    .await;
    let revised = h.take();
    let one = of(&revised, Granularity::OneMinute);
    assert_eq!(one.len(), 1);
    assert!(one[0].complete);
    assert_eq!(one[0].revision, 1);
    assert_eq!(
        one[0].candle.open,
        Decimal::from(90),
        "the late trade is the first"
    );
    assert_eq!(one[0].candle.volume, Decimal::from(3));
    let five = of(&revised, Granularity::FiveMinutes);
    assert_eq!(
        (five.len(), five[0].complete, five[0].revision),
        (1, true, 1),
        "the completed 5-minute candle is revised too"
    );
    assert!(
        of(&revised, Granularity::OneHour)
            .iter()
            .all(|u| !u.complete && u.revision == 0),
        "the live hour just changes"
    );
    h.at(at("2026-09-30T12:06:01Z")).await;
    h.trades(vec![trade(
        "BTC-USD",
        8,
        at("2026-09-30T12:00:20Z"),
        "80",
        "1",
    )])
    .await;
    assert!(h.take().is_empty(), "past the window: nothing changes");
    let report = h.report();
    assert_eq!((report.trades, report.too_late), (2, 1), "{report:?}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_utc_day_rolls_over_with_its_day_candle() {
    let mut h = Harness::start(at("2026-09-30T08:00:01Z"));
    let day1 = [
        trade("BTC-USD", 1, at("2026-09-30T08:00:00Z"), "95", "1"),
        trade("BTC-USD", 2, at("2026-09-30T23:59:49Z"), "100", "2"),
    ];
    h.trades(vec![day1[0].clone()]).await;
    h.at(at("2026-09-30T23:59:50Z")).await;
    h.trades(vec![day1[1].clone()]).await;
    h.take();
    h.at(at("2026-10-01T00:00:01Z")).await;
    let day2 = trade("BTC-USD", 3, at("2026-10-01T00:00:00.500Z"), "105", "4");
    h.trades(vec![day2.clone()]).await;
    assert!(
        h.take().iter().all(|u| !u.complete),
        "within the grace nothing of the old day is complete yet"
    );
    h.at(at("2026-10-01T00:00:02Z")).await;
    let done = h.take();
    let midnight = at("2026-10-01T00:00:00Z");
    assert_eq!(
        done.len(),
        8,
        "every granularity's last candle of the day: {done:?}"
    );
    for u in &done {
        assert!(u.complete && u.revision == 0, "{u:?}");
        assert_eq!(u.candle.end(), midnight);
    }
    let day = of(&done, Granularity::OneDay)[0];
    assert_eq!(day.candle.start, at("2026-09-30T00:00:00Z"));
    assert_eq!(
        (
            day.candle.open,
            day.candle.high,
            day.candle.low,
            day.candle.close
        ),
        (
            Decimal::from(95),
            Decimal::from(100),
            Decimal::from(95),
            Decimal::from(100)
        )
    );
    assert_eq!(
        (day.candle.volume, day.candle.trade_count),
        (Decimal::from(3), Some(2))
    );
    // The new day's candle is live, with only the new day's trade.
    h.trades(vec![trade(
        "BTC-USD",
        4,
        at("2026-10-01T00:00:01Z"),
        "110",
        "1",
    )])
    .await;
    let live = h.take();
    let new_day = of(&live, Granularity::OneDay)[0];
    assert_eq!(new_day.candle.start, midnight);
    assert!(!new_day.complete);
    assert_eq!(
        (new_day.candle.open, new_day.candle.trade_count),
        (Decimal::from(105), Some(2))
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn seen_trade_ids_are_forgotten_exactly_at_the_edge_of_the_revision_window() {
    let mut h = Harness::start(at("2026-09-30T12:00:31Z"));
    let t = trade("BTC-USD", 7, at("2026-09-30T12:00:30Z"), "100", "1");
    h.trades(vec![t.clone()]).await;
    // Just inside the window (its minute ended at 12:01, the window is 5 minutes; every
    // shard has ticked at this time, forgetting what it may): the id is still known.
    h.at(at("2026-09-30T12:06:00Z")).await;
    h.take();
    h.trades(vec![t.clone()]).await;
    assert!(h.take().is_empty(), "a duplicate changes nothing");
    let report = h.report();
    assert_eq!(
        (report.trades, report.duplicates, report.too_late),
        (1, 1, 0)
    );
    // One second past the edge the id is forgotten, and the trade is too late: the code's
    // promise is that a repeated trade is never applied twice.
    h.at(at("2026-09-30T12:06:01Z")).await;
    h.trades(vec![t]).await;
    assert!(h.take().is_empty(), "nothing changes past the edge either");
    let report = h.report();
    assert_eq!(
        (report.trades, report.duplicates, report.too_late),
        (1, 1, 1)
    );
    h.stop().await;
}
