//! Every candle equals a separate aggregation of the same trades (property, recording), and memory
//! stays flat.

use super::*;

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
    let recording = include_str!("../../fixtures/coinbase/production-market-data-2026-09-30.jsonl");
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
