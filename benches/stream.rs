//! The live path end to end, in one process: the simulator's frames → feed → engine →
//! publisher → NATS → live state → an SSE client of `/stream`. For every event the client
//! receives, the latency is the receive time minus the element's `data-received` (when the
//! feed received the frame holding its newest trade; the simulator is on loopback, so this is
//! the frame's arrival within microseconds). Runs the service on its embedded defaults
//! (PostgreSQL and nats-server under a temporary `DATA_DIR`).
//!
//! `cargo bench --bench stream` (under `cargo test` it only says how to run it: it needs a
//! database cluster and half a minute).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use spot_canvas::app::App;
use spot_canvas::config::Config;
use spot_canvas::feed::FeedSettings;
use spot_canvas_sim::{SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!(" {name}=\"");
    let start = line.find(&needle)? + needle.len();
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

async fn run(products: u32, trades_per_second: f64, duration: Duration) {
    let sim = Simulator::start(SimConfig {
        products: products as usize,
        trades_per_second,
        history_minutes: 5,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let data_dir = tempfile::Builder::new()
        .prefix("spot-canvas-bench-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(
        data_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    // Our own NATS server, so that this benchmark can listen on the subjects too.
    let nats = spot_canvas::bus::EmbeddedNats::start(None, data_dir.path())
        .await
        .expect("nats-server");
    let vars = [
        ("NATS_URL", nats.client_url()),
        ("PORT", "0".to_owned()),
        ("DATA_DIR", data_dir.path().display().to_string()),
        ("COINBASE_WS_URL", sim.ws_url()),
        ("COINBASE_REST_URL", sim.rest_url()),
        ("BACKFILL_HORIZON_HOURS", "0".to_owned()),
        ("HISTORY_BUCKETS", "0".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let config = Config::from_lookup(|name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    })
    .expect("config");
    let app = App::build_with(&config, FeedSettings::from_config(&config))
        .await
        .expect("the app builds");
    let port = app.port();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(cancel.clone()));
    let url = format!("http://127.0.0.1:{port}/stream");
    let mut response = loop {
        if let Ok(r) = reqwest::get(&url).await
            && r.status() == 200
        {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Frame → NATS, beside frame → SSE client.
    let listener = spot_canvas::bus::connect_plain(&nats.client_url())
        .await
        .expect("connect");
    let mut messages = listener.subscribe("candles.>").await.expect("subscribe");
    let on_nats = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut latencies = Vec::new();
        let until = Instant::now() + Duration::from_secs(5) + duration;
        while let Ok(Some(message)) = tokio::time::timeout_at(until.into(), messages.next()).await {
            let now = Utc::now();
            if let Ok(m) = spot_canvas::bus::CandleMessage::parse(&message.payload) {
                latencies.push((now - m.last_received).to_std().unwrap_or(Duration::ZERO));
            }
        }
        latencies
    });
    let mut latencies = Vec::new();
    let mut buffer = String::new();
    // The first seconds hold the initial state and the start's snapshots: measure after them.
    let warm_up = Instant::now() + Duration::from_secs(5);
    let end = warm_up + duration;
    while Instant::now() < end {
        let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_secs(5), response.chunk()).await
        else {
            break;
        };
        let now = Utc::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        // Every whole event of the buffer, then one drain (not one per event).
        let mut used = 0;
        while let Some(at) = buffer[used..].find("\n\n") {
            let event = &buffer[used..used + at];
            used += at + 2;
            if Instant::now() < warm_up {
                continue;
            }
            if let Some(received) = event
                .lines()
                .find(|l| l.starts_with("data: elements "))
                .and_then(|l| attr(l, "data-received"))
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            {
                latencies.push((now - received.to_utc()).to_std().unwrap_or(Duration::ZERO));
            }
        }
        buffer.drain(..used);
    }
    latencies.sort();
    let mut nats_latencies = on_nats.await.expect("join");
    nats_latencies.sort();
    println!(
        "frame → NATS subscriber, {products} products × {trades_per_second} trades/s: \
         p50 {:?}, p90 {:?}, p99 {:?} over {} messages",
        percentile(&nats_latencies, 0.5),
        percentile(&nats_latencies, 0.9),
        percentile(&nats_latencies, 0.99),
        nats_latencies.len()
    );
    println!(
        "frame → SSE client, {products} products × {trades_per_second} trades/s, all series: \
         p50 {:?}, p90 {:?}, p99 {:?}, max {:?} over {} events",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        latencies.len()
    );
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(90), task).await;
    nats.stop().await;
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("the stream latency benchmark runs with `cargo bench --bench stream`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        run(30, 4.0, Duration::from_secs(30)).await;
        run(200, 4.0, Duration::from_secs(30)).await;
    });
}
