//! NATS in one run, against a local `nats-server` (the embedded default): candle updates per
//! second through publish + KV compare-and-set, the latency from engine output to a client of
//! the live state, and beside them a raw NATS publish → subscribe hop as the floor.
//!
//! `cargo bench --bench bus` (under `cargo test` it only makes a short smoke run).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::DateTime;
use futures_util::StreamExt;
use rust_decimal::Decimal;
use spot_canvas::bus::{EmbeddedNats, Publisher};
use spot_canvas::live::{ClientSettings, Delivery, Filter, LiveState};
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn update(key: usize, round: u64) -> CandleUpdate {
    let start = 1_790_000_040;
    let time = DateTime::from_timestamp(start, 0).expect("time");
    let price = Decimal::new(8_327_725 + (round % 1000) as i64, 2);
    CandleUpdate {
        candle: Candle {
            product_id: format!("P{:04}-USD", key / 8).parse().expect("an id"),
            granularity: Granularity::ALL[key % 8],
            start: time,
            open: price,
            high: price,
            low: price,
            close: price,
            volume: Decimal::new(round as i64, 8),
            buy_volume: Some(Decimal::ZERO),
            trade_count: Some(round),
        },
        complete: false,
        revision: 0,
        counted_trades: round,
        last_trade_id: TradeId(round),
        last_trade_time: time,
        last_received: time,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn raw_floor(url: &str, count: usize) {
    let client = spot_canvas::bus::connect_plain(url).await.expect("connect");
    let mut sub = client.subscribe("floor.>").await.expect("subscribe");
    client.flush().await.expect("flush");
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let sent = Instant::now();
        client
            .publish(format!("floor.{}", i % 100), vec![0u8; 420].into())
            .await
            .expect("publish");
        client.flush().await.expect("flush");
        sub.next().await.expect("message");
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    println!(
        "raw NATS publish → subscribe (420-byte messages, one at a time): p50 {:?}, p99 {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    let started = Instant::now();
    let total = count * 20;
    let receiver = tokio::spawn(async move {
        for _ in 0..total {
            sub.next().await.expect("message");
        }
    });
    for i in 0..total {
        client
            .publish(format!("floor.{}", i % 100), vec![0u8; 420].into())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    receiver.await.expect("receiver");
    println!(
        "raw NATS publish → subscribe throughput: {:.0} messages/s",
        total as f64 / started.elapsed().as_secs_f64()
    );
}

/// Offers updates to the publisher at `rate` per second over `keys` series for `duration`,
/// while a client of the live state (fed by its own subscription) measures the time from the
/// update leaving the engine to reaching it.
async fn publisher_and_latency(url: &str, keys: usize, rate: f64, duration: Duration) {
    let publish_client = spot_canvas::bus::connect_plain(url).await.expect("connect");
    let js = async_nats::jetstream::new(publish_client.clone());
    let kv = spot_canvas::bus::ensure_bucket(&js, 1)
        .await
        .expect("bucket");
    let live = LiveState::new();
    let live_client = spot_canvas::bus::connect_plain(url).await.expect("connect");
    let cancel = CancellationToken::new();
    let live_task = tokio::spawn(live.clone().run(live_client, kv.clone(), cancel.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut client_view, _initial) = live.subscribe(
        Filter::all(),
        ClientSettings {
            capacity: 1 << 20,
            ..ClientSettings::default()
        },
        CancellationToken::new(),
    );
    let sent_at: Arc<Mutex<HashMap<(usize, u64), Instant>>> = Arc::default();
    let (tx, rx) = mpsc::channel(1024);
    let publisher = Publisher::new(publish_client, kv, rx);
    let stats = publisher.stats();
    let publisher_task = tokio::spawn(publisher.run());
    let sent_map = sent_at.clone();
    let done = cancel.clone();
    let measuring = tokio::spawn(async move {
        let mut latencies = Vec::new();
        loop {
            let entries = tokio::select! {
              () = done.cancelled() => break,
              delivery = client_view.next() => match delivery {
                  Delivery::Updates(entries) => entries,
                  _ => break,
              },
            };
            for entry in entries {
                let u = &entry.update;
                let key = Granularity::ALL
                    .iter()
                    .position(|g| *g == u.candle.granularity)
                    .unwrap_or(0)
                    + 8 * u.candle.product_id[1..5].parse::<usize>().unwrap_or(0);
                if let Some(t) = sent_map
                    .lock()
                    .expect("lock")
                    .remove(&(key, u.version().trade_count))
                {
                    latencies.push(t.elapsed());
                }
            }
        }
        latencies
    });
    let started = Instant::now();
    let (mut sent, mut key, mut round) = (0u64, 0usize, 1u64);
    let mut ticks = tokio::time::interval(Duration::from_millis(5));
    while started.elapsed() < duration {
        ticks.tick().await;
        let due = (rate * started.elapsed().as_secs_f64()) as u64;
        while sent < due {
            let batch: Vec<CandleUpdate> = (0..8)
                .map(|_| {
                    key += 1;
                    if key == keys {
                        key = 0;
                        round += 1;
                    }
                    sent_at
                        .lock()
                        .expect("lock")
                        .insert((key, round), Instant::now());
                    update(key, round)
                })
                .collect();
            sent += 8;
            tx.send(batch).await.expect("send");
        }
    }
    drop(tx);
    publisher_task.await.expect("join").expect("publisher");
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    live_task.await.expect("join").expect("live");
    let seen = live.report();
    drop(live);
    let mut latencies = measuring.await.expect("join");
    latencies.sort();
    let report = stats.report();
    let (kv, live_path) = (report.sink, report.live);
    println!(
        "publisher, {keys} series, {:.0} updates/s offered: {:.0} published/s on subjects ({} flushes of {:.0} on average), {:.0} KV-CAS writes/s ({} flushes); engine output → live-state client: p50 {:?}, p99 {:?} over {} updates; the live state read {} messages, {} coalesced unread",
        sent as f64 / elapsed,
        live_path.written_rows as f64 / elapsed,
        live_path.batches,
        live_path.written_rows as f64 / live_path.batches.max(1) as f64,
        kv.written_rows as f64 / elapsed,
        kv.batches,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len(),
        seen.messages,
        seen.coalesced,
    );
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (duration, floor_count) = if benching {
        (Duration::from_secs(10), 5_000)
    } else {
        (Duration::from_millis(300), 50)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let server = EmbeddedNats::start(None, dir.path())
            .await
            .expect("nats-server");
        raw_floor(&server.client_url(), floor_count).await;
        // A live load (500 products' 8 series, 4 frames a second each), then all it takes.
        publisher_and_latency(&server.client_url(), 4_000, 16_000.0, duration).await;
        publisher_and_latency(&server.client_url(), 4_000, 200_000.0, duration).await;
        server.stop().await;
    });
}
