//! Sequence numbers and malformed frames: gaps, a sequence going backwards, frames and trades the
//! parser refuses.

use super::*;

#[tokio::test]
async fn a_sequence_gap_is_reported_and_answered_with_a_fresh_snapshot() {
    let sim = sim(1).await;
    sim.arm(next_fault(8, FaultKind::SkipSequence { count: 5 }));
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD"])));
    feed.until(Duration::from_secs(10), is_snapshot).await;
    let events = feed
        .until(Duration::from_secs(10), |e| {
            matches!(e, FeedEvent::Gap { .. })
        })
        .await;
    let Some(FeedEvent::Gap {
        expected,
        got,
        products,
        since,
        at,
        ..
    }) = events.last()
    else {
        unreachable!()
    };
    assert_eq!(*got, *expected + 5);
    assert!(since <= at, "the window of lost frames: {since} .. {at}");
    assert_eq!(products, &vec!["BTC-USD".to_owned()]);
    feed.until(Duration::from_secs(10), is_snapshot).await;
    feed.until(Duration::from_secs(10), is_update).await;
    let report = feed.health.report();
    assert_eq!(connection(&report).gaps, 1);
    assert_eq!(
        connection(&report).reconnects,
        0,
        "a gap needs no reconnect"
    );
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_malformed_frame_is_skipped_and_counted() {
    let sim = sim(1).await;
    sim.arm(next_fault(8, FaultKind::Malformed));
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD"])));
    feed.health_until(Duration::from_secs(10), |r| {
        r.connections.first().is_some_and(|c| c.malformed == 1)
    })
    .await;
    feed.until(Duration::from_secs(10), is_update).await;
    feed.until(Duration::from_secs(10), is_update).await;
    let report = feed.health.report();
    assert_eq!(connection(&report).reconnects, 0);
    assert_eq!(
        connection(&report).gaps,
        0,
        "the malformed frame took no sequence number"
    );
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_malformed_frame_that_took_a_sequence_number_is_no_gap() {
    // Well-formed JSON with a bad body (a heartbeat counter that is not a number) and a
    // `sequence_num`: the frame is skipped, but its number is counted, so the next frame is
    // not a gap and nothing is resubscribed.
    let sim = sim(1).await;
    sim.arm(next_fault(8, FaultKind::BadHeartbeat));
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD"])));
    let mut seen = feed.until(Duration::from_secs(10), is_snapshot).await;
    let report = feed
        .health_until(Duration::from_secs(10), |r| {
            r.connections.first().is_some_and(|c| c.malformed == 1)
        })
        .await;
    let trades_then = connection(&report).trades;
    // Trades of frames after the bad one count (the frame right after it was checked for a
    // gap before any of them).
    let report = feed
        .health_until(Duration::from_secs(10), |r| {
            r.connections
                .first()
                .is_some_and(|c| c.trades > trades_then)
        })
        .await;
    seen.extend(feed.until(Duration::from_secs(10), is_update).await);
    let c = connection(&report);
    assert_eq!(c.malformed, 1);
    assert_eq!(c.gaps, 0, "the bad frame's number was counted");
    assert_eq!(c.sequence_resets, 0);
    assert_eq!(c.reconnects, 0);
    assert!(
        !seen.iter().any(|e| matches!(e, FeedEvent::Gap { .. })),
        "no gap reported"
    );
    assert_eq!(
        seen.iter().filter(|e| is_snapshot(e)).count(),
        1,
        "no resubscribe (which would bring a fresh snapshot)"
    );
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn one_malformed_trade_costs_that_trade_alone_and_no_resubscribe() {
    let (sim, _dir, log) = logged_sim(SimConfig {
        products: 1,
        trades_per_second: 20.0,
        history_minutes: 2,
        ..SimConfig::default()
    })
    .await;
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD"])));
    let mut delivered = Delivered::default();
    for event in feed.until(Duration::from_secs(10), is_snapshot).await {
        delivered.take(&event);
    }
    sim.arm(next_fault(
        0,
        FaultKind::BadTrade {
            defect: TradeDefect::NonNumericId,
        },
    ));
    // Until the frame with the bad trade was read, and a few updates after it.
    let mut after = 0;
    let health = feed.health.clone();
    feed.until(Duration::from_secs(15), |e| {
        no_window(e);
        assert!(!is_snapshot(e), "no resubscribe, so no fresh snapshot");
        delivered.take(e);
        if is_update(e) && health.report().rejected_trades == 1 {
            after += 1;
        }
        after >= 4
    })
    .await;
    let report = feed.health.report();
    assert_eq!(report.rejected_trades, 1);
    let c = connection(&report);
    assert_eq!(
        (c.gaps, c.sequence_resets, c.reconnects, c.malformed),
        (0, 0, 0, 0)
    );
    assert_eq!(sim.state.injected.all().len(), 1);
    // The bad trade's neighbours in its frame, and every other trade, arrived.
    let log = common::read_trade_log(&log);
    let whole = delivered.assert_whole(&log, "BTC-USD");
    assert!(whole > 10, "{whole}");
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_sequence_going_backwards_starts_a_new_sequence_with_a_gap_window() {
    let sim = sim(1).await;
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD"])));
    feed.until(Duration::from_secs(10), is_snapshot).await;
    // Far back: the old code dropped every later frame as out of order.
    sim.arm(next_fault(
        0,
        FaultKind::RewindSequence { count: 1_000_000 },
    ));
    let events = feed
        .until(Duration::from_secs(10), |e| {
            matches!(e, FeedEvent::Gap { .. })
        })
        .await;
    let Some(FeedEvent::Gap {
        expected,
        got,
        since,
        at,
        products,
        ..
    }) = events.last()
    else {
        unreachable!()
    };
    assert!(got < expected, "backwards: expected {expected}, got {got}");
    assert!(since <= at);
    assert_eq!(products, &vec!["BTC-USD".to_owned()]);
    // Frames of the new sequence count: a fresh snapshot, then updates.
    feed.until(Duration::from_secs(10), is_snapshot).await;
    feed.until(Duration::from_secs(10), is_update).await;
    let report = feed.health.report();
    let c = connection(&report);
    assert_eq!((c.sequence_resets, c.reconnects), (1, 0));
    feed.stop().await;
    sim.stop().await;
}
