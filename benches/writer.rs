//! The batch writer against a real PostgreSQL (a throwaway local cluster with PostgreSQL's
//! default durability): sustained candle upserts per second and the batch sizes it formed,
//! with the shipped settings (50 rows / 100 ms) and with large batches (the ceiling).
//!
//! `cargo bench --bench writer` (under `cargo test` it only makes a short smoke run).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use chrono::DateTime;
use rust_decimal::Decimal;
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId};
use spot_canvas::store::{BatchWriter, EmbeddedPostgres, Repository, WriterSettings};
use tokio::sync::mpsc;

const PRODUCTS: usize = 1_000;
const BUCKETS: i64 = 12;

fn update(key: usize, round: u64) -> CandleUpdate {
    let product = key % PRODUCTS;
    let g = Granularity::ALL[(key / PRODUCTS) % 8];
    let bucket = (key / (PRODUCTS * 8)) as i64 % BUCKETS;
    let start = 1_790_000_000 / 86_400 * 86_400 + bucket * g.seconds();
    let price = Decimal::new(8_327_725 + (round % 1000) as i64, 2);
    CandleUpdate {
        candle: Candle {
            product_id: format!("P{product:04}-USD").parse().expect("an id"),
            granularity: g,
            start: DateTime::from_timestamp(start, 0).expect("time"),
            open: price,
            high: price,
            low: price,
            close: price,
            volume: Decimal::new(round as i64 * 1_000_001, 8),
            buy_volume: Some(Decimal::new(round as i64, 8)),
            trade_count: Some(round),
        },
        complete: false,
        revision: 0,
        counted_trades: round,
        last_trade_id: TradeId(round),
        last_trade_time: DateTime::from_timestamp(start, 0).expect("time"),
        last_received: DateTime::from_timestamp(start, 0).expect("time"),
    }
}

/// Offers `rate` updates a second (8 a batch, one frame's worth) over `keys` candles in
/// rotation for `duration`, then closes the writer and waits for its final flush.
async fn run(
    repo: Repository,
    settings: WriterSettings,
    keys: usize,
    rate: f64,
    duration: Duration,
) {
    let (tx, rx) = mpsc::channel(1024);
    let writer = BatchWriter::new(repo, settings, rx);
    let stats = writer.stats();
    let task = tokio::spawn(writer.run());
    let started = Instant::now();
    let mut key = 0usize;
    let mut round = 1u64;
    let mut sent = 0u64;
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
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
                    update(key, round)
                })
                .collect();
            sent += batch.len() as u64;
            if tx.send(batch).await.is_err() {
                return;
            }
        }
    }
    drop(tx);
    task.await.expect("join").expect("writer");
    let elapsed = started.elapsed().as_secs_f64();
    let report = stats.report();
    println!(
        "writer max_rows={:<4} flush={} ms, {keys} keys, {:>7.0} updates/s offered: {:>7.0} upserts/s, {} batches of {:.0} rows on average, sizes {:?}",
        settings.max_rows,
        settings.flush_interval.as_millis(),
        sent as f64 / elapsed,
        report.written_rows as f64 / elapsed,
        report.batches,
        report.written_rows as f64 / report.batches.max(1) as f64,
        report.batch_sizes,
    );
}

/// The statement's ceiling: pre-built batches of distinct candles upserted back to back by
/// `writers` concurrent connections.
async fn ceiling(
    repo: Repository,
    rows: usize,
    writers: usize,
    base_round: u64,
    duration: Duration,
) {
    let keys = PRODUCTS * 8 * BUCKETS as usize;
    // Each connection its own slice of the keys.
    let slice = keys / writers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0u64;
            let mut round = base_round;
            let mut offset = 0;
            while started.elapsed() < duration {
                let batch: Vec<CandleUpdate> = (0..rows)
                    .map(|i| update(w * slice + (offset + i) % slice, round))
                    .collect();
                written += repo.upsert_candles(&batch).await.expect("upsert");
                offset = (offset + rows) % slice;
                round += 1;
            }
            written
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await.expect("join");
    }
    println!(
        "upsert statements of {rows} rows, {writers} connection(s): {:>7.0} rows/s",
        written as f64 / started.elapsed().as_secs_f64()
    );
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let duration = if benching {
        Duration::from_secs(15)
    } else {
        Duration::from_millis(300)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let pg = EmbeddedPostgres::start(dir.path())
            .await
            .expect("PostgreSQL");
        let pool = spot_canvas::store::connect(&pg.url())
            .await
            .expect("connect");
        spot_canvas::store::migrate_up(&pool)
            .await
            .expect("migrate");
        let repo = Repository::new(pool.clone());
        let keys = PRODUCTS * 8 * BUCKETS as usize;
        // The shipped settings under a live load: 500 products' 8 live candles (4,000 keys),
        // each product sending 4 frames a second (16,000 updates/s), then 10x that.
        for rate in [16_000.0, 160_000.0] {
            run(
                repo.clone(),
                WriterSettings::default(),
                4_000,
                rate,
                duration,
            )
            .await;
        }
        // The writer's own ceiling: large flushes over many keys, offered more than it takes.
        run(
            repo.clone(),
            WriterSettings::default(),
            keys,
            400_000.0,
            duration,
        )
        .await;
        // The ceiling: one statement per batch of distinct candles, back to back.
        for (i, (rows, writers)) in [(50, 1), (1_000, 1), (5_000, 1), (5_000, 2)]
            .into_iter()
            .enumerate()
        {
            let base_round = 1_000_000_000 * (i as u64 + 1);
            ceiling(repo.clone(), rows, writers, base_round, duration).await;
        }
        pool.close().await;
        pg.stop().await.expect("stop");
    });
}
