//! The fan-out alone, in process: candle updates applied to the live state and delivered to
//! 1,000 and 10,000 subscribers (tokio tasks draining their queues, no sockets), in two shapes:
//! every subscriber wants every series (each update goes to all of them), and each subscriber
//! wants one product's one-minute series (each update goes to its few subscribers only).
//! Printed: updates applied per second, events delivered per second, and the cost of one
//! update (the time `apply` takes: rendering once, queueing for each interested subscriber).
//!
//! `cargo bench --bench fanout` (under `cargo test` it only makes a short smoke run).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::DateTime;
use rust_decimal::Decimal;
use spot_canvas::live::{ClientSettings, Delivery, Filter, LiveState};
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId};
use tokio_util::sync::CancellationToken;

/// Products of the run; each has 8 series.
const PRODUCTS: usize = 100;

fn update(product: usize, g: Granularity, count: u64) -> CandleUpdate {
    let time = DateTime::from_timestamp(1_790_000_040, 0).expect("time");
    let price = Decimal::new(8_327_725 + (count % 1000) as i64, 2);
    CandleUpdate {
        candle: Candle {
            product_id: format!("P{product:03}-USD").parse().expect("an id"),
            granularity: g,
            start: g.bucket_start(time),
            open: price,
            high: price,
            low: price,
            close: price,
            volume: Decimal::new(count as i64, 8),
            buy_volume: Some(Decimal::ZERO),
            trade_count: Some(count),
        },
        complete: false,
        revision: 0,
        counted_trades: count,
        last_trade_id: TradeId(count),
        last_trade_time: time,
        last_received: time,
    }
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Every subscriber wants every series.
    Everything,
    /// Subscriber `i` wants product `i % PRODUCTS`'s one-minute series.
    OneSeries,
}

async fn run(subscribers: usize, shape: Shape, updates: u64) {
    let live = LiveState::new();
    let delivered = Arc::new(AtomicU64::new(0));
    let resyncs = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut tasks = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let filter = match shape {
            Shape::Everything => Filter::all(),
            Shape::OneSeries => Filter::of(
                &[format!("P{:03}-USD", i % PRODUCTS).parse().expect("an id")],
                &[Granularity::OneMinute],
            ),
        };
        let (mut subscription, _initial) = live.subscribe(
            filter,
            ClientSettings {
                capacity: 4_096,
                ..ClientSettings::default()
            },
            CancellationToken::new(),
        );
        let (delivered, resyncs, stop) = (delivered.clone(), resyncs.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let entries = tokio::select! {
                    () = stop.cancelled() => return,
                    delivery = subscription.next() => match delivery {
                        Delivery::Updates(entries) => entries,
                        Delivery::Resync(entries) => {
                            resyncs.fetch_add(1, Ordering::Relaxed);
                            entries
                        }
                        Delivery::CutOff => return,
                    },
                };
                // What a stream does with them: hand the shared bytes on.
                let bytes: usize = entries.iter().map(|e| e.event().len()).sum();
                std::hint::black_box(bytes);
                delivered.fetch_add(entries.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    // The updates: one-minute series of every product in turn (and, for the everything
    // shape, every granularity).
    let series: Vec<(usize, Granularity)> = match shape {
        Shape::Everything => (0..PRODUCTS)
            .flat_map(|p| Granularity::ALL.into_iter().map(move |g| (p, g)))
            .collect(),
        Shape::OneSeries => (0..PRODUCTS).map(|p| (p, Granularity::OneMinute)).collect(),
    };
    let per_update = match shape {
        Shape::Everything => subscribers as u64,
        Shape::OneSeries => (subscribers / PRODUCTS) as u64,
    };
    let expected = updates * per_update;
    let started = Instant::now();
    let mut in_apply = Duration::ZERO;
    for n in 0..updates {
        let (p, g) = series[(n as usize) % series.len()];
        let u = update(p, g, 1 + n / series.len() as u64);
        let t = Instant::now();
        live.apply(u);
        in_apply += t.elapsed();
        if n % 16 == 15 {
            // Let the subscribers drain, as the NATS loop does between messages.
            tokio::task::yield_now().await;
        }
    }
    let applied_in = started.elapsed();
    // Until every event is delivered, or (after resyncs, which skip events) nothing moves.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (u64::MAX, Instant::now());
    let mut elapsed = started.elapsed();
    loop {
        let now = delivered.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
            elapsed = started.elapsed();
        }
        if now >= expected
            || Instant::now() >= deadline
            || last.1.elapsed() > Duration::from_millis(200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let got = delivered.load(Ordering::Relaxed);
    println!(
        "fan-out, {subscribers:>6} subscribers, {shape:?}: {updates} updates applied in {applied_in:.2?} \
         ({:.0} updates/s), {got} of {expected} events delivered in {elapsed:.2?} ({:.2} M events/s), \
         {} resyncs; apply: {:.1} µs per update, {:.0} ns per delivery",
        updates as f64 / applied_in.as_secs_f64(),
        got as f64 / elapsed.as_secs_f64() / 1e6,
        resyncs.load(Ordering::Relaxed),
        in_apply.as_secs_f64() * 1e6 / updates as f64,
        in_apply.as_secs_f64() * 1e9 / (updates * per_update.max(1)) as f64,
    );
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let scale = if benching { 1 } else { 100 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for subscribers in [1_000, 10_000] {
            let broadcast = 200_000_000 / subscribers as u64 / scale;
            run(subscribers, Shape::Everything, broadcast.max(100)).await;
            run(subscribers, Shape::OneSeries, (2_000_000 / scale).max(100)).await;
        }
    });
}
