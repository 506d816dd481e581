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

fn print_machine(open_files: (u64, u64)) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "machine: {cores} cores ({cpu}), Linux {}, open files limit {} (hard {}); the \
         simulator, the clients, the service, PostgreSQL and nats-server share them",
        kernel.trim(),
        open_files.0,
        open_files.1
    );
}

impl Bench {
    async fn start(settings: Settings) -> Bench {
        let base = Instant::now();
        let product_ids = MarketSpec::product_ids(settings.products);
        let index: Arc<ProductIndex> = Arc::new(
            product_ids
                .iter()
                .enumerate()
                .map(|(i, p)| (p.clone(), i as u16))
                .collect(),
        );
        let (tap, tapped) = SendTap::new();
        let log_dir = tempfile::Builder::new()
            .prefix("spot-canvas-e2e-trades-")
            .tempdir()
            .expect("tempdir");
        let trade_log = log_dir.path().join("trades.jsonl");
        let sim = Simulator::start(SimConfig {
            products: settings.products,
            trades_per_second: settings.rate,
            history_minutes: 2,
            send_tap: Some(tap),
            trade_log: Some(trade_log.clone()),
            ..SimConfig::default()
        })
        .await
        .expect("simulator");
        let data_dir = tempfile::Builder::new()
            .prefix("spot-canvas-e2e-")
            .tempdir()
            .expect("tempdir")
            .keep();
        // The embedded PostgreSQL runs as `postgres` when this runs as root.
        std::fs::set_permissions(
            &data_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let nats = spot_canvas::bus::EmbeddedNats::start(None, &data_dir)
            .await
            .expect("nats-server");
        let logs = floor::start(tapped, index.clone(), base, &nats.client_url()).await;
        let per_address_cap = settings.per_address.max(settings.all_clients) + 16;
        let vars = [
            ("PORT", "0".to_owned()),
            ("DATA_DIR", data_dir.display().to_string()),
            ("NATS_URL", nats.client_url()),
            ("COINBASE_WS_URL", sim.ws_url()),
            ("COINBASE_REST_URL", sim.rest_url()),
            ("PRODUCTS", product_ids.join(",")),
            ("BACKFILL_HORIZON_HOURS", "0".to_owned()),
            ("HISTORY_BUCKETS", "0".to_owned()),
            ("CROSSCHECK_INTERVAL_SECS", "0".to_owned()),
            ("CLOCK_CHECK_SECS", "0".to_owned()),
            (
                "STREAM_MAX_CLIENTS",
                (settings.big_clients.max(settings.clients) + settings.all_clients + 100)
                    .to_string(),
            ),
            ("STREAM_MAX_PER_ADDRESS", per_address_cap.to_string()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        let log = data_dir.join("service.log");
        eprintln!("starting the service (log: {})", log.display());
        let service = Service::start(&vars, &log).await;
        // Every product's frames flowing before anything is measured.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut seen: Vec<u16> = logs.frames().iter().map(|f| f.product).collect();
            seen.sort_unstable();
            seen.dedup();
            if seen.len() == settings.products {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {} products traded within 60 s",
                seen.len(),
                settings.products
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Buckets that start from here on are whole in the service (no backfill here).
        let width = settings
            .granularity
            .parse::<spot_canvas::model::Granularity>()
            .expect("E2E_GRANULARITY names a granularity")
            .seconds();
        let now = chrono::Utc::now().timestamp();
        let counted_from = now - now.rem_euclid(width) + width;
        Bench {
            trade_log,
            _log_dir: log_dir,
            width,
            counted_from,
            nats,
            data_dir,
            settings,
            base,
            sim,
            service,
            logs,
            index,
            product_ids,
        }
    }

    fn now_us(&self) -> u32 {
        self.base.elapsed().as_micros() as u32
    }

    /// Connects `named` clients of `per_client` products each and `all_clients` of every
    /// product; returns their tasks once every one is connected or has failed.
    async fn open_clients(
        &self,
        named: usize,
        stop: &CancellationToken,
    ) -> (Vec<JoinHandle<ClientLog>>, Vec<String>) {
        let s = &self.settings;
        let total = named + s.all_clients;
        let service = SocketAddr::from(([127, 0, 0, 1], self.service.port));
        let gate = Arc::new(Semaphore::new(64));
        let done = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut handles = Vec::with_capacity(total);
        for i in 0..total {
            let products: Option<Vec<u16>> = (i < named).then(|| {
                (0..s.per_client)
                    .map(|k| ((i * s.per_client + k) % s.products) as u16)
                    .collect()
            });
            let names: Vec<String> = products
                .iter()
                .flatten()
                .map(|&p| self.product_ids[usize::from(p)].clone())
                .collect();
            let source_host = 1 + (i / s.per_address) as u32;
            assert!(source_host < 255, "too many clients for 127.0.0.1-254");
            let source = IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | source_host));
            let granularity = s.granularity.clone();
            let (gate, done, errors) = (gate.clone(), done.clone(), errors.clone());
            let (index, base, stop) = (self.index.clone(), self.base, stop.clone());
            handles.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.expect("gate");
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let connected = client::connect(service, source, &refs, &granularity).await;
                drop(permit);
                done.fetch_add(1, Ordering::Relaxed);
                match connected {
                    Ok(c) => client::run(c, products, &index, base, stop).await,
                    Err(e) => {
                        errors.lock().expect("errors").push(e.clone());
                        ClientLog {
                            products,
                            events: Vec::new(),
                            error: Some(e),
                        }
                    }
                }
            }));
        }
        let started = Instant::now();
        while done.load(Ordering::Relaxed) < total {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "clients still connecting after 300 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "{total} clients connected in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let errors = std::mem::take(&mut *errors.lock().expect("errors"));
        (handles, errors)
    }

    async fn scenario(&self, name: &str, rate: f64, named: usize) -> Row {
        let s = &self.settings;
        let total = named + s.all_clients;
        eprintln!("scenario {name}: {rate} trades/s per product, {total} clients");
        assert!(self.sim.state.exchange.set_trades_per_second(rate));
        self.service.reset_peak_rss();
        let stop = CancellationToken::new();
        let (handles, connect_errors) = self.open_clients(named, &stop).await;
        assert!(
            self.service.running(),
            "the service died:\n{}",
            self.service.log()
        );
        tokio::time::sleep(Duration::from_secs(s.warmup_secs)).await;
        self.logs.clear();
        let start_us = self.now_us();
        let cpu = self.service.cpu_seconds();
        let own_cpu = service::process_cpu_seconds("self");
        let machine = service::machine_cpu_seconds();
        let resyncs = self
            .service
            .metric("spot_canvas_stream_resyncs_total")
            .await;
        let cut_off = self
            .service
            .metric("spot_canvas_stream_dropped_total")
            .await;
        let trades = self.sim.state.exchange.trades_total();
        let engine = self.service.histogram(ENGINE).await;
        let to_client = self.service.histogram(TO_CLIENT).await;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(s.secs)).await;
        let secs = started.elapsed().as_secs_f64();
        let end_us = self.now_us();
        let cpu_seconds = self.service.cpu_seconds() - cpu;
        let own_cpu_seconds = service::process_cpu_seconds("self") - own_cpu;
        let machine_after = service::machine_cpu_seconds();
        let machine_busy =
            (machine_after.0 - machine.0) / (machine_after.1 - machine.1).max(f64::EPSILON);
        let trades = self.sim.state.exchange.trades_total() - trades;
        let peak_rss_mib = self.service.peak_rss_mib();
        let resyncs = self
            .service
            .metric("spot_canvas_stream_resyncs_total")
            .await
            - resyncs;
        let cut_off = self
            .service
            .metric("spot_canvas_stream_dropped_total")
            .await
            - cut_off;
        let engine_after = self.service.histogram(ENGINE).await;
        let to_client_after = self.service.histogram(TO_CLIENT).await;
        let inside = [0.5, 0.99].map(|p| {
            (
                service::bucket_quantile(engine.as_deref(), engine_after.as_deref(), p),
                service::bucket_quantile(to_client.as_deref(), to_client_after.as_deref(), p),
            )
        });
        stop.cancel();
        let mut logs = Vec::with_capacity(handles.len());
        for h in handles {
            logs.push(h.await.expect("client task"));
        }
        let outcome = analyse(
            s.products,
            &self.logs.frames(),
            &logs,
            &self.logs.hops(),
            Window {
                start_us,
                end_us,
                loss_window_us: (s.loss_window_secs * 1_000_000) as u32,
            },
        );
        let counted = analysis::count_check(
            &logs,
            &self.trade_ids(),
            self.counted_from,
            Window {
                start_us,
                end_us,
                loss_window_us: 0,
            },
        );
        drop(logs);
        eprintln!(
            "scenario {name}: p50 {:.2} ms, p99 {:.2} ms, lost {}, duplicated {}, miscounted {} of {}",
            quantile_ms(&outcome.latencies, 0.5),
            quantile_ms(&outcome.latencies, 0.99),
            outcome.lost,
            outcome.duplicates,
            counted.miscounted,
            counted.checked
        );
        // Let the service see the clients go before the next scenario.
        tokio::time::sleep(Duration::from_secs(3)).await;
        Row {
            name: name.to_owned(),
            clients: total,
            rate,
            outcome,
            counted,
            secs,
            trades,
            cpu_seconds,
            own_cpu_seconds,
            machine_busy,
            peak_rss_mib,
            resyncs,
            cut_off,
            connect_errors,
            inside,
        }
    }

    /// The simulator's trades so far, by product and bucket, from its log.
    fn trade_ids(&self) -> analysis::TradeIds {
        #[derive(serde::Deserialize)]
        struct Logged<'a> {
            product_id: &'a str,
            trade_id: &'a str,
            time: &'a str,
        }
        let text = std::fs::read_to_string(&self.trade_log).expect("the trade log");
        let mut ids = analysis::TradeIds::new();
        for line in text.lines() {
            // The last line may be half written.
            let Ok(t) = serde_json::from_str::<Logged>(line) else {
                continue;
            };
            let (Some(&product), Ok(id), Ok(time)) = (
                self.index.get(t.product_id),
                t.trade_id.parse::<u64>(),
                chrono::DateTime::parse_from_rfc3339(t.time),
            ) else {
                continue;
            };
            let secs = time.timestamp();
            ids.entry((product, secs - secs.rem_euclid(self.width)))
                .or_default()
                .push(id);
        }
        for v in ids.values_mut() {
            v.sort_unstable();
        }
        ids
    }

    async fn stop(self) {
        self.service.stop().await;
        self.nats.stop().await;
        self.sim.stop().await;
        // Kept on a failure above (a panic ends the process before): the log is in it.
        let _gone = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn print_tables(s: &Settings, rows: &[Row]) {
    println!(
        "\n{} products, granularity {}, {} s measured per scenario after {} s of warm-up; \
         a frame not delivered within {} s is lost\n",
        s.products, s.granularity, s.secs, s.warmup_secs, s.loss_window_secs
    );
    println!(
        "| scenario | deliveries | p50 | p90 | p99 | p99.9 | max | floor p50 | floor p90 | floor p99 | floor p99.9 | floor max | p50 / floor | p99 / floor |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let l = &r.outcome.latencies;
        let f = &r.outcome.floor;
        let q = |v: &[u32], p: f64| format!("{:.2} ms", quantile_ms(v, p));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1}× | {:.1}× |",
            label(r),
            l.len(),
            q(l, 0.5),
            q(l, 0.9),
            q(l, 0.99),
            q(l, 0.999),
            q(l, 1.0),
            q(f, 0.5),
            q(f, 0.9),
            q(f, 0.99),
            q(f, 0.999),
            q(f, 1.0),
            quantile_ms(l, 0.5) / quantile_ms(f, 0.5),
            quantile_ms(l, 0.99) / quantile_ms(f, 0.99),
        );
    }
    println!(
        "\n| scenario | trades/s | product frames/s | updates delivered/s | judged | lost | duplicated | miscounted (of checked; without a count) | service resyncs | service cut-offs | client errors | service CPU (% of one core) | peak RSS | bench process CPU | machine busy (all cores) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let o = &r.outcome;
        let errors = r.connect_errors.len() + o.client_errors.len();
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} (of {}; {}) | {} | {} | {} | {:.0} % | {:.0} MiB | {:.0} % | {:.0} % |",
            label(r),
            r.trades as f64 / r.secs,
            o.frames_in_window as f64 / r.secs,
            o.events_in_window as f64 / r.secs,
            o.judged,
            o.lost,
            o.duplicates,
            r.counted.miscounted,
            r.counted.checked,
            r.counted.unknown,
            r.resyncs,
            r.cut_off,
            errors,
            100.0 * r.cpu_seconds / r.secs,
            r.peak_rss_mib,
            100.0 * r.own_cpu_seconds / r.secs,
            100.0 * r.machine_busy,
        );
    }
    println!(
        "\nThe service's own histograms over the same windows (frame received by its feed →; \
         bucket upper bounds):\n"
    );
    println!("| scenario | → engine output p50 | p99 | → written to a stream client p50 | p99 |");
    println!("|---|---|---|---|---|");
    for r in rows {
        // NaN: a reading failed or the window had no observations; infinite: past the
        // largest bucket.
        let ms = |s: f64| {
            if s.is_nan() {
                "n/a".to_owned()
            } else if s.is_infinite() {
                "past the largest bucket".to_owned()
            } else {
                format!("≤ {} ms", s * 1000.0)
            }
        };
        let [(e50, c50), (e99, c99)] = r.inside;
        println!(
            "| {} | {} | {} | {} | {} |",
            label(r),
            ms(e50),
            ms(e99),
            ms(c50),
            ms(c99)
        );
    }
    for r in rows {
        let mut errors: Vec<&String> = r
            .connect_errors
            .iter()
            .chain(r.outcome.client_errors.iter())
            .collect();
        if errors.is_empty() {
            continue;
        }
        errors.sort();
        errors.dedup();
        println!("\n{} client errors (distinct):", r.name);
        for e in errors.iter().take(10) {
            println!("  {e}");
        }
    }
}

fn label(r: &Row) -> String {
    format!(
        "{} ({} clients, {} trades/s/product)",
        r.name, r.clients, r.rate
    )
}
