//! The end-to-end benchmark (issue 17, `task bench`): the simulator's frames → the service as
//! a separate process (`target/release/spot-canvas serve`, its embedded PostgreSQL, a real
//! `nats-server`) → SSE clients of `/stream`, all on this machine.
//!
//! In this process: the exchange simulator (500 products, with a send tap that records when
//! each `market_trades` frame leaves), the bench's own `nats-server` (the service uses it via
//! `NATS_URL`, the floor too), and the clients: raw TCP readers of `/stream?granularity=
//! ONE_MINUTE` that log, per `<spot-candle>`, its product, `data-last-trade-id` and
//! `data-version` with the arrival instant. Latency is per (frame, subscribed client): from
//! the simulator sending the frame to the client receiving the first element of that product
//! whose last trade id is at least the frame's newest (see `analysis.rs` for lost and
//! duplicated updates). The floor is the same facts going simulator → NATS → subscriber
//! (`floor.rs`). The service's CPU (utime + stime from `/proc/PID/stat`, children such
//! as PostgreSQL not included) and peak RSS (`VmHWM`, reset at each scenario's start) are
//! read from outside.
//!
//! Scenarios: `base` (every product at `E2E_RATE` trades/s; `E2E_CLIENTS` clients of
//! `E2E_PRODUCTS_PER_CLIENT` products each, spread evenly, plus `E2E_ALL_CLIENTS` clients of
//! every product), `burst` (the same at `E2E_BURST` times the rate), `big` (the base rate with
//! `E2E_BIG_CLIENTS` clients of `E2E_PRODUCTS_PER_CLIENT` products plus the every-product
//! ones). Each connects its clients, warms up, measures, disconnects.
//!
//! ```sh
//! cargo bench --locked --bench e2e        # or: task bench
//! ```
//!
//! Environment (defaults in brackets): `E2E_SCENARIOS` [base,burst,big], `E2E_SECS` measured
//! seconds per scenario [30], `E2E_WARMUP_SECS` [5], `E2E_PRODUCTS` [500], `E2E_RATE` trades
//! per second per product [2], `E2E_BURST` [10], `E2E_CLIENTS` [1000], `E2E_ALL_CLIENTS` [10],
//! `E2E_BIG_CLIENTS` [10000], `E2E_PRODUCTS_PER_CLIENT` [10], `E2E_LOSS_WINDOW_SECS` [5],
//! `E2E_CLIENTS_PER_ADDRESS` [1000] (clients per loopback source address: 127.0.0.1, .2, …),
//! `E2E_GRANULARITY` [ONE_MINUTE]. Under `cargo test` it only says how to run it.

mod analysis;
mod client;
mod floor;
mod report;
mod scenario;
mod service;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use spot_canvas_sim::market::MarketSpec;
use spot_canvas_sim::tap::SendTap;
use spot_canvas_sim::{SimConfig, Simulator};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::analysis::{Outcome, Window, analyse, quantile_ms};
use self::client::{ClientLog, ProductIndex};
use self::floor::Logs;
use self::report::{print_machine, print_tables};
use self::service::Service;

#[derive(Debug, Clone)]
struct Settings {
    scenarios: Vec<String>,
    secs: u64,
    warmup_secs: u64,
    products: usize,
    rate: f64,
    burst: f64,
    clients: usize,
    all_clients: usize,
    big_clients: usize,
    per_client: usize,
    loss_window_secs: u64,
    per_address: usize,
    granularity: String,
}

fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not valid")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let s = Settings {
            scenarios: var("E2E_SCENARIOS", "base,burst,big".to_owned())
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            secs: var("E2E_SECS", 30),
            warmup_secs: var("E2E_WARMUP_SECS", 5),
            products: var("E2E_PRODUCTS", 500),
            rate: var("E2E_RATE", 2.0),
            burst: var("E2E_BURST", 10.0),
            clients: var("E2E_CLIENTS", 1000),
            all_clients: var("E2E_ALL_CLIENTS", 10),
            big_clients: var("E2E_BIG_CLIENTS", 10_000),
            per_client: var("E2E_PRODUCTS_PER_CLIENT", 10),
            loss_window_secs: var("E2E_LOSS_WINDOW_SECS", 5),
            per_address: var("E2E_CLIENTS_PER_ADDRESS", 1000),
            granularity: var("E2E_GRANULARITY", "ONE_MINUTE".to_owned()),
        };
        assert!(
            (1..=u16::MAX as usize).contains(&s.products),
            "E2E_PRODUCTS must be 1-65535"
        );
        assert!(s.per_client >= 1 && s.per_client <= s.products);
        assert!(s.per_address >= 1 && s.secs > s.loss_window_secs);
        for name in &s.scenarios {
            assert!(
                ["base", "burst", "big"].contains(&name.as_str()),
                "unknown scenario {name:?} in E2E_SCENARIOS: base, burst or big"
            );
        }
        for rate in [s.rate, s.rate * s.burst] {
            assert!(
                spot_canvas_sim::market::valid_rate(rate),
                "E2E_RATE × E2E_BURST must stay within 0-{} trades/s per product, not {rate}",
                spot_canvas_sim::market::MAX_TRADES_PER_SECOND
            );
        }
        // Instants are kept as µs in a u32 since the start: 71 minutes at most.
        let per_scenario = s.warmup_secs + s.secs + 300;
        assert!(
            per_scenario.saturating_mul(s.scenarios.len() as u64) < 3_600,
            "E2E_SECS too long: a run must stay under an hour"
        );
        s
    }
}

/// What the scenarios share.
struct Bench {
    settings: Settings,
    /// The simulator's trade log, for the trade counts of the elements.
    trade_log: std::path::PathBuf,
    _log_dir: tempfile::TempDir,
    /// The granularity's bucket width, s.
    width: i64,
    /// The first bucket the service saw whole (Unix seconds).
    counted_from: i64,
    base: Instant,
    sim: Simulator,
    service: Service,
    nats: spot_canvas::bus::EmbeddedNats,
    data_dir: std::path::PathBuf,
    logs: Arc<Logs>,
    index: Arc<ProductIndex>,
    product_ids: Vec<String>,
}

/// One scenario's figures.
struct Row {
    name: String,
    clients: usize,
    rate: f64,
    outcome: Outcome,
    counted: analysis::Counted,
    secs: f64,
    trades: u64,
    cpu_seconds: f64,
    /// This process: simulator, clients, floor.
    own_cpu_seconds: f64,
    /// Share of all cores busy (any process).
    machine_busy: f64,
    peak_rss_mib: f64,
    resyncs: f64,
    cut_off: f64,
    connect_errors: Vec<String>,
    /// The service's own histograms at p50 and p99 (bucket upper bounds, s): frame received →
    /// update out of the engine, frame received → event written to a stream client.
    inside: [(f64, f64); 2],
}

/// The service's histograms read for [`Row::inside`].
const ENGINE: &str = "spot_canvas_engine_processing_seconds";
const TO_CLIENT: &str = "spot_canvas_end_to_end_seconds";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "the end-to-end benchmark runs with `cargo bench --locked --bench e2e` (task bench)"
        );
        return;
    }
    let settings = Settings::from_env();
    let open_files = service::raise_open_files(65_536);
    let needed = (settings.big_clients.max(settings.clients) + settings.all_clients) as u64 + 1000;
    assert!(
        open_files.0 >= needed,
        "the open-files limit {open_files:?} is below the {needed} the clients need"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A panic unwinds through the bench (its service, nats-server and their servers stop on
    // drop); SIGINT or SIGTERM drops the run the same way before the process exits.
    let mut interrupted = None;
    runtime.block_on(async {
        tokio::select! {
            () = run(settings, open_files) => {}
            (name, number) = stop_signal() => {
                eprintln!("{name}: stopping the service and its servers");
                // The run is dropped here (the service stops on drop) before the exit below.
                interrupted = Some(number);
            }
        }
    });
    // Blocking work (a client's log write) gets a moment, not forever.
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Some(number) = interrupted {
        // The shell's convention: 128 + the signal's number.
        std::process::exit(128 + number);
    }
}

/// The first SIGINT, SIGTERM or SIGHUP: its name and number.
async fn stop_signal() -> (&'static str, i32) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate), Ok(mut hangup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => ("SIGINT", 2),
        _ = terminate.recv() => ("SIGTERM", 15),
        _ = hangup.recv() => ("SIGHUP", 1),
    }
}

async fn run(settings: Settings, open_files: (u64, u64)) {
    {
        print_machine(open_files);
        let bench = Bench::start(settings).await;
        let mut rows = Vec::new();
        for name in bench.settings.scenarios.clone() {
            let (rate, clients) = match name.as_str() {
                "base" => (bench.settings.rate, bench.settings.clients),
                "burst" => (
                    bench.settings.rate * bench.settings.burst,
                    bench.settings.clients,
                ),
                _ => (bench.settings.rate, bench.settings.big_clients),
            };
            rows.push(bench.scenario(&name, rate, clients).await);
        }
        print_tables(&bench.settings, &rows);
        let floor_failures = bench
            .logs
            .floor_failures
            .load(std::sync::atomic::Ordering::Relaxed);
        if floor_failures > 0 {
            println!("\nfloor: {floor_failures} hops could not be published to NATS");
        }
        let warnings = bench.service.warnings();
        println!(
            "\nservice log: {} WARN/ERROR lines{}",
            warnings.len(),
            if warnings.is_empty() {
                ""
            } else {
                "; the first ones:"
            }
        );
        for w in warnings.iter().take(10) {
            println!("  {}", w.chars().take(300).collect::<String>());
        }
        bench.stop().await;
    }
}
