//! The candle engine's core against an aggregation written separately here (it reuses none of
//! the engine's bucket or aggregation code): completion, revisions, duplicates, the window,
//! memory, a property test, and the production recording replayed.

use crate::common;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use spot_canvas::candles::crosscheck::Verdict;
use spot_canvas::candles::{Aggregator, Backfill, FeedNotice, Timing};
use spot_canvas::coinbase::{FrameBody, parse_frame};
use spot_canvas::model::{Candle, CandleUpdate, Granularity, Side, Trade, TradeId};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    open: Decimal,
    high: Decimal,
    low: Decimal,
    close: Decimal,
    volume: Decimal,
    buy_volume: Decimal,
    count: u64,
}

type Key = (String, Granularity, i64);

/// The straightforward aggregation: unique trades, sorted by (time, numeric id), folded per
/// bucket.
fn aggregate(trades: &[Trade]) -> BTreeMap<Key, Expected> {
    let mut unique: HashMap<(String, u64), &Trade> = HashMap::new();
    for t in trades {
        unique
            .entry((t.product_id.to_string(), t.trade_id.0))
            .or_insert(t);
    }
    let mut sorted: Vec<&Trade> = unique.into_values().collect();
    sorted.sort_by_key(|t| (t.time, t.trade_id.0));
    let mut out: BTreeMap<Key, Expected> = BTreeMap::new();
    for t in sorted {
        let secs = t.time.timestamp();
        for (g, width) in common::WIDTHS {
            let bucket = secs - secs.rem_euclid(width);
            let buy = if t.side == Side::Sell {
                t.size
            } else {
                Decimal::ZERO
            };
            let e = out
                .entry((t.product_id.to_string(), g, bucket))
                .or_insert(Expected {
                    open: t.price,
                    high: t.price,
                    low: t.price,
                    close: t.price,
                    volume: Decimal::ZERO,
                    buy_volume: Decimal::ZERO,
                    count: 0,
                });
            e.high = e.high.max(t.price);
            e.low = e.low.min(t.price);
            e.close = t.price;
            e.volume += t.size;
            e.buy_volume += buy;
            e.count += 1;
        }
    }
    out
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
        match out.get(&key) {
            Some(existing) if existing.version() >= u.version() => {}
            _ => {
                out.insert(key, u.clone());
            }
        }
    }
    out
}

fn assert_matches(updates: &[CandleUpdate], trades: &[Trade]) {
    let expected = aggregate(trades);
    let got = latest(updates);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the same candles"
    );
    for (key, e) in &expected {
        let u = &got[key];
        let c = &u.candle;
        let actual = Expected {
            open: c.open,
            high: c.high,
            low: c.low,
            close: c.close,
            volume: c.volume,
            buy_volume: c.buy_volume.expect("buy volume"),
            count: c.trade_count.expect("count"),
        };
        assert_eq!(&actual, e, "{key:?}");
        assert!(u.complete, "{key:?} ends complete");
    }
    // Exactly one complete update per revision of every candle.
    let mut completes: HashMap<(Key, u32), usize> = HashMap::new();
    for u in updates.iter().filter(|u| u.complete) {
        let key = (
            u.candle.product_id.to_string(),
            u.candle.granularity,
            u.candle.start.timestamp(),
        );
        *completes.entry((key, u.revision)).or_default() += 1;
    }
    for (key, n) in completes {
        assert_eq!(n, 1, "complete updates of {key:?}");
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn trade(id: u64, time: &str, price: &str, size: &str, side: Side) -> Trade {
    Trade {
        product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
        trade_id: TradeId(id),
        price: price.parse().expect("price"),
        size: size.parse().expect("size"),
        side,
        time: at(time),
        received: at(time),
    }
}

fn one_minute(updates: &[CandleUpdate]) -> Vec<&CandleUpdate> {
    updates
        .iter()
        .filter(|u| u.candle.granularity == Granularity::OneMinute)
        .collect()
}

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
fn memory_stays_flat_for_500_products_running_for_days() {
    let mut engine = Aggregator::new(Timing::default());
    let products: Vec<spot_canvas::model::ProductId> = (0..500)
        .map(|i| format!("P{i}-USD").parse().expect("an id"))
        .collect();
    let start = at("2026-09-01T00:00:00Z");
    for p in &products {
        engine.feed_notice(p, FeedNotice::Subscribed { at: start });
    }
    let mut out = Vec::new();
    let mut footprints = Vec::new();
    let mut id = 0u64;
    // Three days, one trade per product every 5 minutes, ticking every 5 minutes; every
    // structure the engine keeps gets input: Coinbase's 5-minute candles every step, a
    // reconnect window every hour, and a trade too late to apply (which is logged) every
    // hour.
    for step in 0..(3 * 288) {
        let now = start + TimeDelta::minutes(5 * step);
        let hourly = step % 12 == 0;
        let mut trades: Vec<Trade> = Vec::new();
        let mut theirs: Vec<Candle> = Vec::new();
        for p in &products {
            id += 1;
            let t = Trade {
                product_id: p.clone(),
                trade_id: TradeId(id),
                price: Decimal::ONE,
                size: Decimal::ONE,
                side: Side::Buy,
                time: now,
                received: now,
            };
            theirs.push(Candle {
                product_id: p.clone(),
                granularity: Granularity::FiveMinutes,
                start: now,
                open: t.price,
                high: t.price,
                low: t.price,
                close: t.price,
                volume: t.size,
                buy_volume: None,
                trade_count: None,
            });
            if hourly {
                id += 1;
                trades.push(Trade {
                    trade_id: TradeId(id),
                    time: now - TimeDelta::minutes(30),
                    ..t.clone()
                });
                engine.feed_notice(
                    p,
                    FeedNotice::Missing {
                        from: now - TimeDelta::seconds(20),
                        to: now - TimeDelta::seconds(10),
                    },
                );
            }
            trades.push(t);
        }
        engine.exchange_candles(&theirs, now);
        let outcome = engine.apply(&trades, now, &mut out);
        assert_eq!(outcome.too_late, if hourly { 500 } else { 0 });
        engine.tick(now + TimeDelta::seconds(1), &mut out);
        out.clear();
        if step % 288 == 287 {
            footprints.push(engine.footprint());
        }
    }
    let f = footprints[2];
    assert_eq!(f.products, 500);
    // The current day's minutes (one trade every 5 minutes: 288), held so a backfill can
    // recompute the day's larger candles, and a few candles of each other granularity.
    assert!(f.candles <= 500 * (288 + 16), "{f:?}");
    assert!(f.trade_ids <= 500 * 3, "{f:?}");
    assert_eq!(
        f.ids_filed, f.trade_ids,
        "each id filed once by minute: {f:?}"
    );
    assert!(f.id_minutes <= 500 * 3, "{f:?}");
    assert!(f.exchange_candles <= 500 * 4, "{f:?}");
    assert!(f.windows <= 500 * 2, "{f:?}");
    assert!(f.log_keys <= 500 * 3, "{f:?}");
    assert_eq!(footprints[1], footprints[2], "flat from day to day");
    assert_eq!(footprints[0], footprints[1], "flat from day to day");
}

fn arb_trades() -> impl Strategy<Value = (Vec<Trade>, Vec<(u64, bool)>)> {
    let trade = (
        0u64..20_000_000,  // microseconds after the previous trade
        1u32..1_000_000,   // price mantissa
        0u32..8,           // price scale
        1u32..100_000,     // size mantissa
        0u32..8,           // size scale
        any::<bool>(),     // maker side
        1u64..3,           // id step
        0u64..200_000_000, // arrival delay in microseconds
        proptest::option::weighted(0.2, 0u64..200_000_000), // a duplicate's delay
    );
    (
        proptest::collection::vec(trade, 1..120),
        0i64..(3 * 365 * 86_400),
        1u64..u64::MAX / 2,
    )
        .prop_map(|(raw, offset, first_id)| {
            let mut time = at("2025-01-01T00:00:00Z") + TimeDelta::seconds(offset);
            let mut id = first_id;
            let mut trades = Vec::new();
            let mut arrivals = Vec::new();
            for (gap, pm, ps, sm, ss, buy, step, delay, dup) in raw {
                time += TimeDelta::microseconds(gap as i64);
                id += step;
                trades.push(Trade {
                    product_id: spot_canvas::model::ProductId::from_static(if id % 3 == 0 {
                        "ETH-USD"
                    } else {
                        "BTC-USD"
                    }),
                    trade_id: TradeId(id),
                    price: Decimal::new(i64::from(pm), ps),
                    size: Decimal::new(i64::from(sm), ss),
                    side: if buy { Side::Buy } else { Side::Sell },
                    time,
                    received: time,
                });
                arrivals.push((delay, false));
                if let Some(d) = dup {
                    arrivals.push((d, true));
                }
            }
            (trades, arrivals)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_candle_equals_a_separate_aggregation_of_the_same_trades(
        (trades, delays) in arb_trades(),
        batch_sizes in proptest::collection::vec(1usize..12, 1..50),
    ) {
        // Arrivals: every trade once, some twice, each after its own delay (≤ 200 s).
        let mut arrivals: Vec<(DateTime<Utc>, Trade)> = Vec::new();
        let mut d = delays.iter();
        for t in &trades {
            let (delay, _) = d.next().copied().unwrap_or((0, false));
            arrivals.push((t.time + TimeDelta::microseconds(delay as i64), t.clone()));
            if let Some(&(dup_delay, true)) = d.clone().next() {
                d.next();
                arrivals.push((t.time + TimeDelta::microseconds(dup_delay as i64), t.clone()));
            }
        }
        arrivals.sort_by_key(|(arrival, t)| (*arrival, t.trade_id));
        let mut engine = Aggregator::new(Timing::default());
        let mut updates = Vec::new();
        let mut sizes = batch_sizes.iter().cycle();
        let mut i = 0;
        while i < arrivals.len() {
            // A frame: consecutive arrivals within 60 s, delivered at the last one's time.
            let mut j = (i + sizes.next().copied().unwrap_or(1)).min(arrivals.len());
            while j > i + 1 && arrivals[j - 1].0 - arrivals[i].0 > TimeDelta::seconds(60) {
                j -= 1;
            }
            let now = arrivals[j - 1].0;
            engine.tick(now, &mut updates);
            let batch: Vec<Trade> = arrivals[i..j].iter().map(|(_, t)| t.clone()).collect();
            let outcome = engine.apply(&batch, now, &mut updates);
            prop_assert_eq!(outcome.too_late, 0);
            i = j;
        }
        let end = arrivals.last().map(|a| a.0).unwrap_or_default() + TimeDelta::days(2);
        engine.tick(end, &mut updates);
        assert_matches(&updates, &trades);
    }
}

#[test]
fn the_production_recording_replays_to_the_separate_aggregation() {
    let recording = include_str!("../fixtures/coinbase/production-market-data-2026-09-30.jsonl");
    let mut engine = Aggregator::new(Timing::default());
    let mut updates = Vec::new();
    let mut all = Vec::new();
    let mut last = None;
    for line in recording.lines() {
        let frame = line.split_once('\t').map_or(line, |(_, f)| f);
        let parsed = parse_frame(frame.as_bytes(), Utc::now()).expect("parses");
        let now = parsed.timestamp.expect("timestamp");
        engine.tick(now, &mut updates);
        if let FrameBody::MarketTrades { trades, .. } = parsed.body {
            let outcome = engine.apply(&trades, now, &mut updates);
            assert_eq!(outcome.too_late, 0);
            assert_eq!(outcome.duplicates, 0);
            all.extend(trades);
        }
        last = Some(now);
    }
    assert_eq!(all.len(), 307);
    engine.tick(last.expect("frames") + TimeDelta::days(1), &mut updates);
    assert_matches(&updates, &all);
    // BTC-USD trades all fall in 02:39; ETH-USD's snapshot reaches back into 02:38.
    let minutes: Vec<(String, i64)> = latest(&updates)
        .keys()
        .filter(|(_, g, _)| *g == Granularity::OneMinute)
        .map(|(p, _, start)| (p.clone(), *start))
        .collect();
    let m38 = at("2026-09-30T02:38:00Z").timestamp();
    let m39 = at("2026-09-30T02:39:00Z").timestamp();
    assert_eq!(
        minutes,
        vec![
            ("BTC-USD".into(), m39),
            ("ETH-USD".into(), m38),
            ("ETH-USD".into(), m39)
        ]
    );
}

/// Trades of BTC-USD from `from`, one every 7 seconds for `count` trades, prices wandering.
fn trade_series(from: &str, count: u64) -> Vec<Trade> {
    let start = at(from);
    (0..count)
        .map(|i| {
            let time = start + TimeDelta::seconds(7 * i as i64);
            let price = Decimal::new(100_000 + ((i * 7919) % 997) as i64, 2);
            let side = if i % 3 == 0 { Side::Sell } else { Side::Buy };
            Trade {
                product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
                trade_id: TradeId(1_000 + i),
                price,
                size: Decimal::new(1 + (i % 13) as i64, 3),
                side,
                time,
                received: time,
            }
        })
        .collect()
}

/// The expected one-minute candles of `trades` in `[from, to)` as Coinbase's REST gives them
/// (no trade count, no buy volume), or as stored (with them).
fn minute_candles(trades: &[Trade], from: i64, to: i64, with_counts: bool) -> Vec<Candle> {
    aggregate(trades)
        .into_iter()
        .filter(|((_, g, start), _)| *g == Granularity::OneMinute && (from..to).contains(start))
        .map(|((product_id, granularity, start), e)| Candle {
            product_id: product_id.parse().expect("an id"),
            granularity,
            start: DateTime::from_timestamp(start, 0).expect("start"),
            open: e.open,
            high: e.high,
            low: e.low,
            close: e.close,
            volume: e.volume,
            buy_volume: with_counts.then_some(e.buy_volume),
            trade_count: with_counts.then_some(e.count),
        })
        .collect()
}

/// Feeds `trades` to the engine one per batch at their own time (plus 100 ms), ticking in
/// between.
fn feed(engine: &mut Aggregator, trades: &[Trade], out: &mut Vec<CandleUpdate>) -> u64 {
    let mut superseded = 0;
    for t in trades {
        let now = t.received + TimeDelta::milliseconds(100);
        engine.tick(now, out);
        superseded += engine.apply(std::slice::from_ref(t), now, out).superseded;
    }
    superseded
}

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
