//! The fan-out under load, against the `spot-canvas` binary: 1,000 concurrent SSE clients are
//! served while one client with a tiny receive buffer never reads. That client falls behind,
//! is resynced (its backlog dropped for the latest state) and then disconnected; the others
//! get every update promptly, and the service's memory does not grow.
//!
//! Updates are published straight onto the service's NATS subjects (the test runs the NATS
//! server), in the bucket after the current one with trade counts from a million, so they
//! outrank the simulator-fed candles, and with the publishing time as their last trade time,
//! so each client measures its own latency.

use crate::common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{AppEnv, Service, SseReader};
use rust_decimal::Decimal;
use spot_canvas::bus::{CandleMessage, EmbeddedNats, subject};
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId};
use spot_canvas_sim::{SimConfig, Simulator};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

const CLIENTS: usize = 1_000;
/// Rounds of updates, one every `ROUND` for every product's one-minute series.
const ROUNDS: u64 = 100;
const ROUND: Duration = Duration::from_millis(100);
/// Updates per round on series only the slow client wants: they fill its socket.
const NOISE_PER_ROUND: u64 = 400;

fn update(product: &str, g: Granularity, count: u64, now: DateTime<Utc>) -> CandleUpdate {
    // The next bucket: newer than anything the simulator-fed engine makes (and not so far
    // ahead that the live state refuses it).
    let start = DateTime::from_timestamp(g.bucket_start_secs(now.timestamp()) + g.seconds(), 0)
        .expect("time");
    CandleUpdate {
        candle: Candle {
            product_id: product.parse().expect("an id"),
            granularity: g,
            start,
            open: Decimal::new(100, 0),
            high: Decimal::new(101, 0),
            low: Decimal::new(99, 0),
            close: Decimal::new(count as i64, 2),
            volume: Decimal::new(count as i64, 3),
            buy_volume: Some(Decimal::ZERO),
            trade_count: Some(count),
        },
        complete: false,
        revision: 0,
        counted_trades: count,
        last_trade_id: TradeId(count),
        // When it was published: the clients measure their latency from it.
        last_trade_time: now,
        last_received: now,
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// What one client saw: latencies and the last trade count of its series.
#[derive(Debug, Default)]
struct Seen {
    latencies: Vec<Duration>,
    last_count: u64,
    ended: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_are_served_while_one_that_never_reads_is_resynced_then_dropped() {
    // Every client is a socket: lift this process's soft limit of open files.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .expect("raise the open files limit");

    let sim = Simulator::start(SimConfig {
        products: 10,
        trades_per_second: 1.0,
        history_minutes: 5,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let nats_dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(nats_dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let nats = EmbeddedNats::start(None, nats_dir.path())
        .await
        .expect("nats-server");
    let data_dir = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let env = AppEnv::for_sim(&sim, data_dir.path())
        .set("NATS_URL", nats.client_url())
        .set("BACKFILL_HORIZON_HOURS", "0")
        .set("HISTORY_BUCKETS", "0")
        .set("STREAM_QUEUE", "256")
        .set("STREAM_STALL_SECS", "2")
        .set("STREAM_MAX_PER_ADDRESS", "5000");
    let service = Service::start(&env, &logs.path().join("serve.log")).await;
    let port = service.port;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let products: Vec<String> =
        common::eventually("the products list", Duration::from_secs(60), || async {
            let body: serde_json::Value = http
                .get(format!("http://127.0.0.1:{port}/api/v1/products"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let ids: Vec<String> = body["products"]
                .as_array()?
                .iter()
                .filter(|p| p["status"] == "online")
                .filter_map(|p| p["id"].as_str().map(str::to_owned))
                .collect();
            (ids.len() >= 8).then_some(ids)
        })
        .await;
    let products: Vec<String> = products.into_iter().take(8).collect();

    // The client that never reads: a 4 KiB receive buffer, a request, then silence.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut slow = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connects");
    tokio::io::AsyncWriteExt::write_all(
        &mut slow,
        b"GET /stream HTTP/1.1\r\nhost: spot-canvas\r\n\r\n",
    )
    .await
    .expect("request");

    // The thousand: each on one product's one-minute series.
    let seen: Arc<Vec<Mutex<Seen>>> = Arc::new((0..CLIENTS).map(|_| Mutex::default()).collect());
    let mut readers = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let product = products[i % products.len()].clone();
        let url = format!("http://127.0.0.1:{port}/stream?product={product}&granularity=1m");
        let response = http.get(&url).send().await.expect("a stream");
        assert_eq!(response.status(), 200, "client {i}");
        let seen = seen.clone();
        readers.push(tokio::spawn(async move {
            let mut stream = SseReader::new(response);
            loop {
                let Some(event) = stream.next(Duration::from_secs(120)).await else {
                    seen[i].lock().await.ended = true;
                    return;
                };
                let received = Utc::now();
                let Some(count) = event
                    .attr("data-trades")
                    .and_then(|c| c.parse::<u64>().ok())
                else {
                    continue;
                };
                let sent = event
                    .attr("data-last-trade-time")
                    .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                    .expect("a time")
                    .to_utc();
                let mut s = seen[i].lock().await;
                // Only the injected candles count.
                if sent.timestamp() > 0 && count >= 1_000_000 {
                    s.latencies
                        .push((received - sent).to_std().unwrap_or(Duration::ZERO));
                    s.last_count = s.last_count.max(count);
                }
            }
        }));
    }
    common::wait_for(
        "every client subscribed",
        Duration::from_secs(60),
        || async {
            service.health().await.is_some_and(|(_, h)| {
                h["bus"]["live"]["clients"].as_u64() >= Some(CLIENTS as u64 + 1)
            })
        },
    )
    .await;

    // Updates: every round, each product's one-minute candle once (for the thousand), and a
    // burst on the five-minute series that only the slow client (every series) wants.
    let publisher = spot_canvas::bus::connect_plain(&nats.client_url())
        .await
        .expect("connect");
    let mut rss_after_warmup = 0;
    let mut noise = 1_000_000u64;
    for round in 1..=ROUNDS {
        let count = 1_000_000 + round;
        let now = Utc::now();
        for product in &products {
            let message =
                CandleMessage::from_update(&update(product, Granularity::OneMinute, count, now));
            publisher
                .publish(
                    subject(product, Granularity::OneMinute),
                    message.to_json().into(),
                )
                .await
                .expect("publish");
        }
        for _ in 0..NOISE_PER_ROUND {
            noise += 1;
            let product = &products[(noise % products.len() as u64) as usize];
            let message =
                CandleMessage::from_update(&update(product, Granularity::FiveMinutes, noise, now));
            publisher
                .publish(
                    subject(product, Granularity::FiveMinutes),
                    message.to_json().into(),
                )
                .await
                .expect("publish");
        }
        publisher.flush().await.expect("flush");
        if round == ROUNDS / 4 {
            rss_after_warmup = rss_kib(service.pid());
        }
        // Time is the subject: updates come at a steady pace.
        tokio::time::sleep(ROUND).await;
    }
    let rss_at_end = rss_kib(service.pid());

    // The slow client was resynced, then cut off: the service closed its connection.
    let health = service
        .wait_for_health(
            "the slow client cut off",
            Duration::from_secs(30),
            |_, h| h["bus"]["live"]["clients_cut_off"].as_u64() >= Some(1),
        )
        .await;
    let live = &health["bus"]["live"];
    assert!(live["resyncs"].as_u64() >= Some(1), "{live}");
    assert_eq!(live["clients_cut_off"], 1, "only the slow client: {live}");
    let mut drained = 0usize;
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            match slow.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the slow client's connection is closed ({drained} bytes were on the way)"
    );

    // Every other client got its series' last update, promptly, and is still connected.
    let last = 1_000_000 + ROUNDS;
    common::wait_for(
        "every client to get the last round",
        Duration::from_secs(60),
        || async {
            for s in seen.iter() {
                if s.lock().await.last_count < last {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let mut latencies = Vec::new();
    let mut per_client_counts = HashMap::new();
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().await;
        assert!(!s.ended, "client {i} was disconnected");
        per_client_counts.insert(i, s.latencies.len());
        latencies.extend(s.latencies.iter().copied());
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = latencies[latencies.len() - 1];
    eprintln!(
        "{} updates to {CLIENTS} clients: p50 {p50:?}, p99 {p99:?}, max {max:?}; rss {} KiB after warm-up, {} KiB at the end",
        latencies.len(),
        rss_after_warmup,
        rss_at_end
    );
    // Bounds for a loaded two-core CI running the service, NATS, the simulator and the
    // thousand readers at once: a delayed client would show seconds.
    assert!(p99 < Duration::from_secs(2), "p99 {p99:?}");
    assert!(max < Duration::from_secs(5), "max {max:?}");
    // A client saw (nearly) every round: resyncs and coalescing may merge a few, no more.
    let fewest = per_client_counts.values().min().copied().unwrap_or(0);
    assert!(
        fewest as u64 >= ROUNDS * 9 / 10,
        "a client saw only {fewest} of {ROUNDS} rounds"
    );
    // Memory: the same series and clients at the end as after the warm-up.
    assert!(
        rss_at_end < rss_after_warmup + 64 * 1024,
        "the service grew from {rss_after_warmup} KiB to {rss_at_end} KiB"
    );
    for reader in readers {
        reader.abort();
    }
    drop(service);
    nats.stop().await;
}
