//! Unit tests of the simulated markets.

use super::*;

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("valid")
}

#[test]
fn the_same_seed_gives_the_same_trades() {
    let ids = MarketSpec::product_ids(3);
    let a = Exchange::new(&ids, 5.0, 7, TimeDelta::minutes(5), at(1_700_000_000), None)
        .expect("exchange");
    let b = Exchange::new(&ids, 5.0, 7, TimeDelta::minutes(5), at(1_700_000_000), None)
        .expect("exchange");
    assert!(a.trades_total() > 100);
    assert_eq!(a.snapshot("BTC-USD"), b.snapshot("BTC-USD"));
}

#[test]
fn snapshots_hold_the_last_100_trades_newest_first() {
    let ids = MarketSpec::product_ids(1);
    let ex = Exchange::new(
        &ids,
        5.0,
        1,
        TimeDelta::minutes(10),
        at(1_700_000_000),
        None,
    )
    .expect("exchange");
    let snap = ex.snapshot("BTC-USD");
    assert_eq!(snap.len(), SNAPSHOT_TRADES);
    assert!(snap.windows(2).all(|w| w[0].order_key() > w[1].order_key()));
}

#[test]
fn meme_coins_trade_near_1e_minus_5_with_daily_volume_above_1e12() {
    let ids = vec!["PEPE-USD".to_owned()];
    let now = at(1_700_006_400);
    let ex = Exchange::new(&ids, 1.0, 3, TimeDelta::hours(2), now, None).expect("exchange");
    let candles = ex
        .candles("PEPE-USD", 7200, now.timestamp() - 7200, now.timestamp())
        .expect("known product");
    let volume: Decimal = candles.iter().map(|c| c.volume).sum();
    // Two hours at one trade a second: scale to a day.
    assert!(
        volume * Decimal::from(12) > Decimal::from(1_000_000_000_000u64),
        "{volume}"
    );
    let close = candles[0].close;
    assert!(
        close > Decimal::new(1, 6) && close < Decimal::new(1, 4),
        "{close}"
    );
}

#[test]
fn bitcoin_trades_near_1e5() {
    let ids = MarketSpec::product_ids(1);
    let ex = Exchange::new(
        &ids,
        1.0,
        3,
        TimeDelta::minutes(30),
        at(1_700_000_000),
        None,
    )
    .expect("exchange");
    let price = ex.snapshot("BTC-USD")[0].price;
    assert!(
        price > Decimal::from(50_000) && price < Decimal::from(200_000),
        "{price}"
    );
}

#[test]
fn late_trades_land_in_an_earlier_minute() {
    let ids = MarketSpec::product_ids(1);
    let now = at(1_700_000_030);
    let ex = Exchange::new(&ids, 0.0, 3, TimeDelta::zero(), now, None).expect("exchange");
    let mut rx = ex.subscribe_ticks();
    ex.inject_late_trades("BTC-USD", 3);
    ex.tick(now, now + TimeDelta::milliseconds(250));
    let tick = rx.try_recv().expect("a tick");
    let trades = &tick.batches[0].1;
    assert_eq!(trades.len(), 3);
    for t in trades {
        assert!(t.time < at(1_700_000_030 - 30 - 60), "{}", t.time);
    }
}

#[test]
fn the_trade_rate_changes_at_run_time_and_refuses_nonsense() {
    let ids = MarketSpec::product_ids(2);
    let now = at(1_700_000_000);
    let ex = Exchange::new(&ids, 0.0, 5, TimeDelta::zero(), now, None).expect("exchange");
    let ten_seconds = |from: DateTime<Utc>| {
        let before = ex.trades_total();
        ex.tick(from, from + TimeDelta::seconds(10));
        ex.trades_total() - before
    };
    assert_eq!(ten_seconds(now), 0, "no trades at rate 0");
    assert!(ex.set_trades_per_second(50.0));
    assert_eq!(ex.trades_per_second(), 50.0);
    // 2 products × 50/s × 10 s: about 1,000 (Poisson; far from the bounds).
    let traded = ten_seconds(now + TimeDelta::seconds(10));
    assert!((800..1200).contains(&traded), "{traded}");
    for nonsense in [-1.0, f64::NAN, f64::INFINITY, MAX_TRADES_PER_SECOND * 2.0] {
        assert!(!ex.set_trades_per_second(nonsense), "{nonsense}");
    }
    assert_eq!(
        ex.trades_per_second(),
        50.0,
        "a refused rate changes nothing"
    );
    for nonsense in [-1.0, f64::NAN, f64::INFINITY, MAX_TRADES_PER_SECOND * 2.0] {
        let refused = Exchange::new(&ids, nonsense, 5, TimeDelta::minutes(1), now, None);
        assert!(refused.is_err(), "{nonsense} at start");
    }
}
