//! The engine stage (dispatcher, shards, completion ticks) under a controlled clock: the
//! engine's clock is a `ManualClock` set by the test, and tokio's time is paused, so the
//! shards' ticks happen when the test lets time pass and every test behaves the same at any
//! hour of the day. Absurd input (sizes that overflow a sum, trades from the future), the
//! cross-check right after a start, completion, revisions, the day rollover and the edge of
//! the revision window.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use spot_canvas::candles::{Backfill, Engine, EngineReport, EngineSettings, EngineStats};
use spot_canvas::model::{
    Candle, CandleUpdate, FeedEvent, Granularity, ManualClock, Side, Trade, TradeBatch, TradeId,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The shards' tick interval (in paused tokio time).
const TICK: Duration = Duration::from_millis(50);

type Key = (String, Granularity, i64);

/// An engine with a manual clock, fed and drained by the test.
struct Harness {
    clock: ManualClock,
    input: mpsc::Sender<FeedEvent>,
    backfills: mpsc::Sender<Backfill>,
    output: mpsc::Receiver<Vec<CandleUpdate>>,
    stats: Arc<EngineStats>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Updates drained so far, not yet taken.
    updates: Vec<CandleUpdate>,
}

impl Harness {
    fn start(now: DateTime<Utc>) -> Harness {
        let clock = ManualClock::new(now);
        let (input, rx) = mpsc::channel(16);
        let (out_tx, output) = mpsc::channel(4096);
        let (backfills, backfill_rx) = mpsc::channel(16);
        let (notices, _notices_rx) = mpsc::unbounded_channel();
        // The notices' receiver is dropped: the engine then stops forwarding, and keeps going.
        let settings = EngineSettings {
            tick_interval: TICK,
            ..EngineSettings::default()
        };
        let engine = Engine::new(settings, Arc::new(clock.clone()), rx, out_tx)
            .with_reconciler(backfill_rx, notices);
        let stats = engine.stats();
        let task = tokio::spawn(engine.run(CancellationToken::new()));
        Harness {
            clock,
            input,
            backfills,
            output,
            stats,
            task,
            updates: Vec::new(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        use spot_canvas::model::Clock;
        self.clock.now()
    }

    /// Lets every shard handle what it was sent and tick at the clock's current time, then
    /// drains the output. Time is the subject here: paused tokio time moves on by a few
    /// tick intervals (instantly, once every task is idle).
    async fn settle(&mut self) {
        tokio::time::sleep(TICK * 3).await;
        while let Ok(batch) = self.output.try_recv() {
            self.updates.extend(batch);
        }
    }

    /// Sets the clock to `time` and settles.
    async fn at(&mut self, time: DateTime<Utc>) {
        self.clock.set(time);
        self.settle().await;
    }

    async fn event(&mut self, event: FeedEvent) {
        self.input.send(event).await.expect("engine runs");
        self.settle().await;
    }

    /// One frame of trades, received now.
    async fn trades(&mut self, trades: Vec<Trade>) {
        let received = self.now();
        self.event(FeedEvent::Trades(TradeBatch {
            connection: 0,
            snapshot: false,
            received,
            trades,
        }))
        .await;
    }

    /// Trades of `all` with times in `(from, until]`, delivered a frame per 10 s of clock
    /// (the clock set to each frame's end).
    async fn trades_until(&mut self, all: &[Trade], from: DateTime<Utc>, until: DateTime<Utc>) {
        let mut t = from;
        while t < until {
            let next = (t + TimeDelta::seconds(10)).min(until);
            let frame: Vec<Trade> = all
                .iter()
                .filter(|x| x.time > t && x.time <= next)
                .map(|x| Trade {
                    received: next,
                    ..x.clone()
                })
                .collect();
            self.clock.set(next);
            if !frame.is_empty() {
                self.trades(frame).await;
            }
            t = next;
        }
        self.settle().await;
    }

    fn take(&mut self) -> Vec<CandleUpdate> {
        std::mem::take(&mut self.updates)
    }

    fn report(&self) -> EngineReport {
        self.stats.report()
    }

    /// Stops the engine (input closed) and checks it ended without error.
    async fn stop(self) {
        drop(self.input);
        self.task
            .await
            .expect("joins")
            .expect("the engine ends cleanly");
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn trade(product: &str, id: u64, time: DateTime<Utc>, price: &str, size: &str) -> Trade {
    Trade {
        product_id: product.parse().expect("an id"),
        trade_id: TradeId(id),
        price: price.parse().expect("price"),
        size: size.parse().expect("size"),
        side: if id.is_multiple_of(3) {
            Side::Sell
        } else {
            Side::Buy
        },
        time,
        received: time,
    }
}

/// A trade every 7 s of `product` from `from` to `to`, prices and sizes wandering.
fn series(product: &str, first_id: u64, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Trade> {
    let mut out = Vec::new();
    let mut time = from;
    let mut i = 0u64;
    while time < to {
        let price = Decimal::new(100_000 + ((i * 7919) % 997) as i64, 2);
        let size = Decimal::new(1 + (i % 13) as i64, 3);
        out.push(Trade {
            product_id: product.parse().expect("an id"),
            trade_id: TradeId(first_id + i),
            price,
            size,
            side: if i.is_multiple_of(3) {
                Side::Sell
            } else {
                Side::Buy
            },
            time,
            received: time,
        });
        i += 1;
        time += TimeDelta::seconds(7);
    }
    out
}

/// The independent aggregation of tests/common over these trades.
fn aggregate(trades: &[Trade]) -> BTreeMap<Key, common::Ohlcv> {
    let logged: Vec<common::LoggedTrade> = trades
        .iter()
        .map(|t| common::LoggedTrade {
            product_id: t.product_id.to_string(),
            trade_id: t.trade_id.0,
            price: t.price,
            size: t.size,
            side: common::MakerSide::parse(t.side.as_str()),
            time: t.time,
        })
        .collect();
    common::aggregate(&logged.iter().collect::<Vec<_>>())
}

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

fn of(updates: &[CandleUpdate], g: Granularity) -> Vec<&CandleUpdate> {
    updates
        .iter()
        .filter(|u| u.candle.granularity == g)
        .collect()
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
