//! Trades the engine refuses: absurd sizes and trades from the future.

use super::*;

/// The newest update of every candle, by version.
fn latest(updates: &[CandleUpdate]) -> BTreeMap<Key, CandleUpdate> {
    let mut out: BTreeMap<Key, CandleUpdate> = BTreeMap::new();
    for u in updates {
        let key = (
            u.candle.product_id.to_string(),
            u.candle.granularity,
            u.candle.start.timestamp(),
        );
        if out.get(&key).is_none_or(|e| e.version() < u.version()) {
            out.insert(key, u.clone());
        }
    }
    out
}

/// Every candle's newest update equals the aggregation of `trades`, exactly, and is complete.
fn assert_exact(updates: &[CandleUpdate], trades: &[Trade]) {
    let expected = aggregate(trades);
    let got = latest(updates);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the candles of the normal trades, no other"
    );
    for (key, e) in &expected {
        let u = &got[key];
        let c = &u.candle;
        let actual = common::Ohlcv {
            open: c.open,
            high: c.high,
            low: c.low,
            close: c.close,
            volume: c.volume,
            count: c.trade_count.expect("count"),
        };
        assert_eq!(&actual, e, "{key:?}");
        assert!(u.complete, "{key:?} complete");
    }
}

// ---- Absurd input ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn absurd_trade_sizes_are_rejected_and_the_normal_trades_of_the_frame_count_exactly() {
    let start = at("2026-09-30T12:00:00Z");
    let mut h = Harness::start(start);
    let normal = series("BTC-USD", 1_000, start, at("2026-09-30T12:03:00Z"));
    // Near Decimal::MAX: any sum with it overflows.
    let absurd = "79228162514264337593543950335";
    let mut rejected = 0;
    let mut t = start;
    let mut id = 1_000_000;
    while t < at("2026-09-30T12:03:00Z") {
        let next = t + TimeDelta::seconds(30);
        // An absurd trade first, in the middle and last of every frame, beside normal ones.
        let mut frame: Vec<Trade> = Vec::new();
        let normals: Vec<Trade> = normal
            .iter()
            .filter(|x| x.time >= t && x.time < next)
            .cloned()
            .collect();
        for (i, n) in normals.iter().enumerate() {
            if i == 0 || i == normals.len() / 2 {
                id += 1;
                frame.push(trade("BTC-USD", id, n.time, "100", absurd));
                rejected += 1;
            }
            frame.push(n.clone());
        }
        id += 1;
        frame.push(trade("BTC-USD", id, t, absurd, absurd));
        rejected += 1;
        h.clock.set(next);
        h.trades(frame).await;
        t = next;
    }
    // Time runs on past the day's end: every candle completes, the engine still runs.
    h.at(at("2026-10-01T00:00:03Z")).await;
    let report = h.report();
    assert_eq!(report.rejected_overflow, rejected, "{report:?}");
    assert_eq!(report.trades, normal.len() as u64);
    let updates = h.take();
    assert_exact(&updates, &normal);
    assert!(
        updates
            .iter()
            .all(|u| u.candle.volume < Decimal::from(1_000)),
        "no candle holds an absurd size, even for a moment"
    );
    // And it still takes trades.
    h.trades(vec![trade("BTC-USD", 5, h.now(), "1", "1")]).await;
    assert_eq!(h.report().trades, normal.len() as u64 + 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_trade_from_the_future_makes_no_candle_beyond_the_current_bucket() {
    let now = at("2026-09-30T12:00:30Z");
    let mut h = Harness::start(now);
    h.trades(vec![
        trade("BTC-USD", 1, at("2026-09-30T12:00:10Z"), "100", "1"),
        trade("BTC-USD", 2, at("2100-01-01T00:00:00Z"), "100", "1"),
        // Within the 5 s tolerance (a clock a little behind Coinbase's): applied.
        trade("BTC-USD", 3, now + TimeDelta::seconds(5), "101", "1"),
        // Past it.
        trade(
            "BTC-USD",
            4,
            now + TimeDelta::milliseconds(5_001),
            "102",
            "1",
        ),
        trade("BTC-USD", 5, at("2026-09-30T12:00:20Z"), "99", "1"),
    ])
    .await;
    let mut all = h.take();
    let report = h.report();
    assert_eq!(
        (report.trades, report.rejected_future),
        (3, 2),
        "{report:?}"
    );
    // The clock moves on a few minutes; a day later the 2100 trade is still ahead.
    for clock in [
        "2026-09-30T12:01:05Z",
        "2026-09-30T12:05:05Z",
        "2026-10-01T00:00:05Z",
    ] {
        h.at(at(clock)).await;
        h.trades(vec![trade(
            "BTC-USD",
            2,
            at("2100-01-01T00:00:00Z"),
            "1",
            "1",
        )])
        .await;
        all.extend(h.take());
    }
    assert_eq!(h.report().rejected_future, 5);
    for u in &all {
        let g = u.candle.granularity;
        let current = g.bucket_start_secs(now.timestamp());
        assert!(
            u.candle.start.timestamp() <= current,
            "{g} candle at {} is beyond the current bucket",
            u.candle.start
        );
    }
    let minute = &latest(&all)[&(
        "BTC-USD".to_owned(),
        Granularity::OneMinute,
        at("2026-09-30T12:00:00Z").timestamp(),
    )];
    assert_eq!(minute.candle.trade_count, Some(3));
    assert_eq!(minute.candle.close, Decimal::from(101));
    h.stop().await;
}
