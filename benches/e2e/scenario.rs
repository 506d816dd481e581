//! The scenarios: the bench's start (simulator, NATS, the service), each scenario's clients,
//! warm-up, measurement and figures, and the stop.

use super::*;

impl Bench {
    pub(crate) async fn start(settings: Settings) -> Bench {
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

    pub(crate) async fn scenario(&self, name: &str, rate: f64, named: usize) -> Row {
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

    pub(crate) async fn stop(self) {
        self.service.stop().await;
        self.nats.stop().await;
        self.sim.stop().await;
        // Kept on a failure above (a panic ends the process before): the log is in it.
        let _gone = std::fs::remove_dir_all(&self.data_dir);
    }
}
