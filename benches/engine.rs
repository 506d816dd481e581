//! From raw frame bytes to candles: JSON, decimal and timestamp parsing, deduplication and
//! aggregation into all 8 granularities, on one core. Prints trades per second. And the cost
//! of merging a REST backfill into a product holding a whole day of minutes.
//!
//! `cargo bench --bench engine`

use std::hint::black_box;

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rust_decimal::Decimal;
use spot_canvas::candles::{Aggregator, Backfill, Timing};
use spot_canvas::coinbase::{FrameBody, parse_frame};
use spot_canvas::model::{Candle, Granularity, Side, Trade, TradeId};
use spot_canvas_sim::format;

const PRODUCTS: usize = 100;
const TRADES: usize = 20_000;

/// Frames as Coinbase sends them: one product per frame, newest trade first, 250 ms apart
/// per product, realistic decimals (BTC-like prices, 8-decimal sizes).
fn frames(per_frame: usize) -> (Vec<Vec<u8>>, Vec<DateTime<Utc>>) {
    let frame_count = TRADES / per_frame;
    let start = DateTime::parse_from_rfc3339("2026-09-30T00:00:00Z")
        .expect("time")
        .with_timezone(&Utc);
    let mut frames = Vec::with_capacity(frame_count);
    let mut times = Vec::with_capacity(frame_count);
    let mut id = 1_100_253_388u64;
    for f in 0..frame_count {
        let product = f % PRODUCTS;
        let now = start + TimeDelta::milliseconds(250 * (f / PRODUCTS) as i64);
        let mut trades: Vec<Trade> = (0..per_frame)
            .map(|i| {
                id += 1;
                Trade {
                    product_id: format!("P{product:03}-USD").parse().expect("an id"),
                    trade_id: TradeId(id),
                    price: Decimal::new(8_327_725 + (id % 1000) as i64, 2),
                    size: Decimal::new(84_275_842 + (id % 77) as i64, 8),
                    side: if id.is_multiple_of(2) {
                        Side::Buy
                    } else {
                        Side::Sell
                    },
                    time: now + TimeDelta::microseconds(i as i64 * 997),
                    received: now,
                }
            })
            .collect();
        trades.reverse();
        frames.push(format::market_trades(now, f as u64, false, &trades).into_bytes());
        times.push(now + TimeDelta::milliseconds(50));
    }
    (frames, times)
}

fn frames_to_candles(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(TRADES as u64));
    // Coinbase batches 250 ms of a product's trades per frame: busy markets send many trades a
    // frame, quiet ones one (the production recording averages 4 per update frame).
    for per_frame in [10, 4, 1] {
        let (frames, times) = frames(per_frame);
        let bytes: usize = frames.iter().map(Vec::len).sum();
        println!(
            "workload: {} frames of {per_frame} trades, {PRODUCTS} products, {:.0} bytes per trade",
            frames.len(),
            bytes as f64 / TRADES as f64
        );
        group.bench_function(format!("frames_to_candles/{per_frame}_per_frame"), |b| {
            b.iter(|| {
                let mut engine = Aggregator::new(Timing::default());
                let mut updates = Vec::with_capacity(16);
                let mut emitted = 0usize;
                for (frame, now) in frames.iter().zip(&times) {
                    let parsed = parse_frame(frame, *now).expect("frame parses");
                    if let FrameBody::MarketTrades { trades, .. } = parsed.body {
                        engine.apply(&trades, *now, &mut updates);
                    }
                    emitted += updates.len();
                    updates.clear();
                }
                engine.tick(times[times.len() - 1] + TimeDelta::hours(25), &mut updates);
                black_box((emitted, updates.len()))
            });
        });
        group.bench_function(format!("parse_only/{per_frame}_per_frame"), |b| {
            b.iter(|| {
                let mut n = 0;
                for (frame, now) in frames.iter().zip(&times) {
                    if let FrameBody::MarketTrades { trades, .. } =
                        parse_frame(frame, *now).expect("parses").body
                    {
                        n += trades.len();
                    }
                }
                black_box(n)
            });
        });
    }
    group.finish();
}

/// An engine holding one product that traded every second minute of a day, up to 23:58.
fn day_of_minutes(start: DateTime<Utc>) -> Aggregator {
    let mut engine = Aggregator::new(Timing::default());
    let mut out = Vec::new();
    for m in (0..1440).step_by(2) {
        let time = start + TimeDelta::minutes(m) + TimeDelta::seconds(7);
        let trade = Trade {
            product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
            trade_id: TradeId(m as u64 + 1),
            price: Decimal::new(8_327_725 + m, 2),
            size: Decimal::new(84_275_842, 8),
            side: Side::Buy,
            time,
            received: time,
        };
        engine.apply(&[trade], time, &mut out);
        engine.tick(time + TimeDelta::seconds(60), &mut out);
        out.clear();
    }
    engine
}

fn backfill(c: &mut Criterion) {
    let mut group = c.benchmark_group("backfill");
    let start = DateTime::parse_from_rfc3339("2026-09-30T00:00:00Z")
        .expect("time")
        .with_timezone(&Utc);
    let now = start + TimeDelta::minutes(1439) + TimeDelta::seconds(30);
    for window in [5i64, 60] {
        let from = (start + TimeDelta::minutes(1438 - window)).timestamp();
        let to = from + window * 60;
        let minutes: Vec<Candle> = (0..window)
            .map(|m| Candle {
                product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
                granularity: Granularity::OneMinute,
                start: DateTime::from_timestamp(from + m * 60, 0).expect("start"),
                open: Decimal::new(8_327_700, 2),
                high: Decimal::new(8_337_700, 2),
                low: Decimal::new(8_317_700, 2),
                close: Decimal::new(8_327_800, 2),
                volume: Decimal::new(123_456_789, 8),
                buy_volume: None,
                trade_count: None,
            })
            .collect();
        let request = Backfill {
            product_id: spot_canvas::model::ProductId::from_static("BTC-USD"),
            from,
            to,
            minutes,
            context: Vec::new(),
            stored: Vec::new(),
        };
        group.bench_function(format!("merge_{window}_minutes_into_a_day"), |b| {
            b.iter_batched(
                || day_of_minutes(start),
                |mut engine| {
                    let mut out = Vec::new();
                    let outcome = engine.backfill(&request, now, &mut out);
                    black_box((outcome, out.len()))
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, frames_to_candles, backfill);
criterion_main!(benches);
