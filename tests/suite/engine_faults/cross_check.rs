//! The cross-check against Coinbase around a running backfill and a reconnect window.

use super::*;

// ---- The cross-check right after a start -------------------------------------------------

/// Coinbase's 5-minute candle of `bucket` for `trades` (all of them: Coinbase saw them all).
fn coinbase_5m(trades: &[Trade], product: &str, bucket: DateTime<Utc>) -> Candle {
    let e = aggregate(trades)[&(
        product.to_owned(),
        Granularity::FiveMinutes,
        bucket.timestamp(),
    )]
        .clone();
    Candle {
        product_id: product.parse().expect("an id"),
        granularity: Granularity::FiveMinutes,
        start: bucket,
        open: e.open,
        high: e.high,
        low: e.low,
        close: e.close,
        volume: e.volume,
        buy_volume: None,
        trade_count: None,
    }
}

/// REST's one-minute candles of `trades` in `[from, to)`.
fn rest_minutes(trades: &[Trade], from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Candle> {
    aggregate(trades)
        .into_iter()
        .filter(|((_, g, s), _)| {
            *g == Granularity::OneMinute && (from.timestamp()..to.timestamp()).contains(s)
        })
        .map(|((product_id, granularity, s), e)| Candle {
            product_id: product_id.parse().expect("an id"),
            granularity,
            start: DateTime::from_timestamp(s, 0).expect("start"),
            open: e.open,
            high: e.high,
            low: e.low,
            close: e.close,
            volume: e.volume,
            buy_volume: None,
            trade_count: None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn no_cross_check_mismatch_at_a_start_whose_backfill_is_still_running() {
    // Started at 12:02:30: the trades of 12:00 - 12:02:30 were not seen live. ETH-USD's
    // backfill of them is merged before its bucket completes, BTC-USD's is still queued.
    let bucket = at("2026-09-30T12:00:00Z");
    let subscribed = at("2026-09-30T12:02:30Z");
    let end = at("2026-09-30T12:10:00Z");
    let btc = series("BTC-USD", 1_000, bucket, end);
    let eth = series("ETH-USD", 5_000, bucket, end);
    let both: Vec<Trade> = btc.iter().chain(&eth).cloned().collect();
    let mut h = Harness::start(subscribed);
    h.event(FeedEvent::Subscribed {
        connection: 0,
        products: vec![
            spot_canvas::model::ProductId::from_static("BTC-USD"),
            spot_canvas::model::ProductId::from_static("ETH-USD"),
        ],
        at: subscribed,
    })
    .await;
    // The subscribe's snapshot reaches back a minute.
    let snapshot: Vec<Trade> = both
        .iter()
        .filter(|t| t.time > subscribed - TimeDelta::minutes(1) && t.time <= subscribed)
        .cloned()
        .collect();
    h.trades(snapshot).await;
    h.trades_until(&both, subscribed, at("2026-09-30T12:03:05Z"))
        .await;
    h.backfills
        .send(Backfill {
            product_id: spot_canvas::model::ProductId::from_static("ETH-USD"),
            from: bucket.timestamp(),
            to: subscribed.timestamp(),
            minutes: rest_minutes(&eth, bucket, at("2026-09-30T12:03:00Z")),
            context: Vec::new(),
            stored: Vec::new(),
        })
        .await
        .expect("engine runs");
    h.trades_until(
        &both,
        at("2026-09-30T12:03:05Z"),
        at("2026-09-30T12:05:00.500Z"),
    )
    .await;
    // Coinbase's candles of the first bucket, sent after it ended: they hold every trade.
    h.event(FeedEvent::ExchangeCandles {
        connection: 0,
        received: h.now(),
        candles: vec![
            coinbase_5m(&btc, "BTC-USD", bucket),
            coinbase_5m(&eth, "ETH-USD", bucket),
        ],
    })
    .await;
    h.at(at("2026-09-30T12:05:03Z")).await;
    let check = h.report().crosscheck_ws_5m;
    assert_eq!(
        (check.mismatched, check.not_comparable, check.matched),
        (0, 1, 1),
        "BTC-USD's bucket is not whole: not compared; ETH-USD's is backfilled: {check:?}"
    );
    // The next bucket was seen whole from its start: both are compared, and match.
    let next = at("2026-09-30T12:05:00Z");
    h.trades_until(
        &both,
        at("2026-09-30T12:05:00.500Z"),
        at("2026-09-30T12:10:00.500Z"),
    )
    .await;
    h.event(FeedEvent::ExchangeCandles {
        connection: 0,
        received: h.now(),
        candles: vec![
            coinbase_5m(&btc, "BTC-USD", next),
            coinbase_5m(&eth, "ETH-USD", next),
        ],
    })
    .await;
    h.at(at("2026-09-30T12:10:03Z")).await;
    let check = h.report().crosscheck_ws_5m;
    assert_eq!(
        (check.mismatched, check.not_comparable, check.matched),
        (0, 1, 3),
        "{check:?}"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_window_makes_its_bucket_not_comparable_until_backfilled() {
    let bucket = at("2026-09-30T12:00:00Z");
    let btc = series("BTC-USD", 1_000, bucket, at("2026-09-30T12:05:00Z"));
    let mut h = Harness::start(bucket - TimeDelta::minutes(1));
    h.event(FeedEvent::Subscribed {
        connection: 0,
        products: vec![spot_canvas::model::ProductId::from_static("BTC-USD")],
        at: bucket - TimeDelta::minutes(1),
    })
    .await;
    // Trades of 12:01:10 - 12:01:40 are lost in a reconnect.
    let (down, up) = (at("2026-09-30T12:01:10Z"), at("2026-09-30T12:01:40Z"));
    let seen: Vec<Trade> = btc
        .iter()
        .filter(|t| t.time < down || t.time >= up)
        .cloned()
        .collect();
    h.trades_until(&seen, bucket - TimeDelta::seconds(1), down)
        .await;
    h.clock.set(up);
    h.event(FeedEvent::Reconnected {
        connection: 0,
        products: vec![spot_canvas::model::ProductId::from_static("BTC-USD")],
        disconnected_at: down,
        reconnected_at: up,
    })
    .await;
    h.trades_until(&seen, up, at("2026-09-30T12:05:00.500Z"))
        .await;
    h.event(FeedEvent::ExchangeCandles {
        connection: 0,
        received: h.now(),
        candles: vec![coinbase_5m(&btc, "BTC-USD", bucket)],
    })
    .await;
    h.at(at("2026-09-30T12:05:03Z")).await;
    let check = h.report().crosscheck_ws_5m;
    assert_eq!(
        (check.mismatched, check.not_comparable),
        (0, 1),
        "{check:?}"
    );
    h.stop().await;
}
