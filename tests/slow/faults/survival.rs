//! The one-process scenario: every fault in turn, and the candles stored exactly as the exchange's.

use super::*;

#[tokio::test]
async fn one_process_survives_every_fault_and_stores_exactly_the_exchanges_candles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Simulator::start(SimConfig {
        products: PRODUCTS,
        trades_per_second: 8.0,
        history_minutes: 5,
        trade_log: Some(dir.path().join("trades.jsonl")),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let products = MarketSpec::product_ids(PRODUCTS);
    let db = TestDb::migrated().await;
    let nats_dir = tempfile::tempdir().expect("tempdir");
    let nats = EmbeddedNats::start(None, nats_dir.path())
        .await
        .expect("nats-server starts");
    let data = common::data_dir();
    let env = AppEnv::for_sim(&sim, data.path())
        .database(&db)
        .set("NATS_URL", nats.client_url())
        .set("PRODUCTS", products.join(","))
        .set("REST_REQUESTS_PER_SECOND", "50")
        .set("CROSSCHECK_INTERVAL_SECS", "0")
        .set("CLOCK_CHECK_SECS", "0");
    let service = Service::start(&env, &dir.path().join("serve.log")).await;
    let stream = StreamClient::open(service.port, &products).await;
    // The start windows done (the start's own minute, due when it completes, may wait).
    let start = service
        .wait_for_health("ready with the start backfilled", WITHIN, |s, h| {
            s == 200
                && h["reconcile"]["windows_done"].as_u64() >= Some(1)
                && h["reconcile"]["windows_running"].as_u64() == Some(0)
                && written(h) > 0
                && trades_of(h) > 50
        })
        .await;
    // The feed subscribed before this: the start's windows (its own minute from REST) cover
    // no minute after this one.
    let started_minute = minute_of(Utc::now());
    // Warm: the allocator has grown to its working size before the baseline is taken.
    service
        .wait_for_health("warm", WITHIN, |_, h| {
            trades_of(h) > trades_of(&start) + 100
        })
        .await;
    // No REST connection open at the baseline, or it would hide as many leaked tasks: every
    // start window done (the start's own minute comes due when it ends), then the pool's idle
    // connections closed. Time is the subject of the sleep: hyper closes a connection idle
    // for POOL_IDLE at its next sweep, which runs every POOL_IDLE, so within twice that.
    let idle_closed = 2 * POOL_IDLE + Duration::from_secs(1);
    let mut quiet = false;
    for _ in 0..3 {
        let before = service
            .wait_for_health("the start windows done", 2 * WITHIN, |_, h| {
                reconcile_idle(h)
            })
            .await;
        tokio::time::sleep(idle_closed).await;
        let (_, after) = service.health().await.expect("/health answers");
        if reconcile_idle(&after) && windows_done(&after) == windows_done(&before) {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "REST windows kept running: no quiet baseline");
    let baseline = footprint(&service).await.expect("a footprint");
    eprintln!("baseline: pid {}, {baseline}", service.pid());
    let mut subject = Subject {
        service,
        baseline,
        stream,
    };

    // The exchange goes away with 1001; the TCP connection drops without a close frame; a
    // stall with the socket open, which the feed's 10 s silence timeout ends.
    subject
        .feed_fault(
            &sim,
            "close 1001",
            FaultKind::Close { code: 1001 },
            reconnected,
        )
        .await;
    subject
        .feed_fault(&sim, "a TCP drop", FaultKind::Drop, reconnected)
        .await;
    subject
        .feed_fault(
            &sim,
            "a stall",
            FaultKind::Stall { secs: None },
            reconnected,
        )
        .await;
    // A short stall loses frames (a sequence gap); skipped sequence numbers are another.
    subject
        .feed_fault(
            &sim,
            "a short stall",
            FaultKind::Stall { secs: Some(2) },
            gap,
        )
        .await;
    subject
        .feed_fault(
            &sim,
            "skipped sequence numbers",
            FaultKind::SkipSequence { count: 7 },
            gap,
        )
        .await;
    // A malformed frame costs that frame; an oversized one (past the 16 MiB cap) the
    // connection, which comes back.
    subject
        .feed_fault(&sim, "a malformed frame", FaultKind::Malformed, |b, h| {
            feed_sum(h, "malformed") > feed_sum(b, "malformed")
        })
        .await;
    subject
        .feed_fault(
            &sim,
            "an oversized frame",
            FaultKind::Oversized { bytes: 17 << 20 },
            reconnected,
        )
        .await;

    // PostgreSQL stops while trades flow; the writer keeps the updates until it is back.
    db.pg.stop_with("fast").await.expect("PostgreSQL stops");
    let down = subject
        .service
        .wait_for_health("the database alarm", WITHIN, |_, h| raised(h, "database"))
        .await;
    subject
        .service
        .wait_for_health("trades flow meanwhile", WITHIN, |_, h| {
            trades_of(h) > trades_of(&down) + 50
        })
        .await;
    db.pg.restart().await.expect("PostgreSQL starts again");
    let back = subject
        .service
        .wait_for_health("the database alarm clears", WITHIN, |s, h| {
            s == 200 && !raised(h, "database")
        })
        .await;
    subject
        .recovered("PostgreSQL stopped and restarted", &back)
        .await;
    subject
        .service
        .wait_for_health("rows written after the restart", WITHIN, |_, h| {
            written(h) > written(&back)
        })
        .await;

    // NATS stops (no one restarts it for a while), then comes back on the same port and store.
    let nats_pid = nats.pid().await.expect("nats-server runs");
    common::signal(nats_pid, "TERM");
    subject
        .service
        .wait_for_health("the NATS alarm", WITHIN, |s, h| {
            s == 503 && raised(h, "nats")
        })
        .await;
    let supervision = CancellationToken::new();
    let supervisor = tokio::spawn({
        let (nats, token) = (nats.clone(), supervision.clone());
        async move { nats.supervise(token).await }
    });
    let back = subject
        .service
        .wait_for_health("the NATS alarm clears", WITHIN, |s, h| {
            s == 200 && !raised(h, "nats")
        })
        .await;
    subject.recovered("NATS stopped and restarted", &back).await;
    subject
        .service
        .wait_for_health("updates published after the restart", WITHIN, |_, h| {
            published(h) > published(&back)
        })
        .await;

    // Every window the faults opened is backfilled from REST before the stop: each is queued
    // when its fault is seen, and waits for its last minute to complete.
    let health = subject
        .service
        .wait_for_health(
            "every window backfilled",
            Duration::from_secs(180),
            |_, h| {
                h["reconcile"]["windows_pending"].as_u64() == Some(0)
                    && h["reconcile"]["windows_running"].as_u64() == Some(0)
            },
        )
        .await;
    assert_eq!(
        health["reconcile"]["windows_failed"].as_u64(),
        Some(0),
        "{:#}",
        health["reconcile"]
    );
    // Each of the four reconnects and two gaps queued a window for each of the 4 products
    // (those still waiting merge into one, which then covers them all).
    let queued = |h: &Value| h["reconcile"]["windows_queued"].as_u64().unwrap_or(0);
    assert!(
        queued(&health) >= queued(&start) + 6 * PRODUCTS as u64,
        "the faults queued their windows: {:#}",
        health["reconcile"]
    );

    // SIGTERM under load: trades flow, the stream is open, updates wait in the writer.
    let mut service = subject.service;
    service.terminate();
    let exit = service.wait_exit(Duration::from_secs(30)).await;
    assert!(exit.success(), "{exit}\n{}", service.log());
    let lines = service.log_lines();
    let at = |message: &str| -> DateTime<Utc> {
        lines
            .iter()
            .find(|v| v["message"] == message)
            .and_then(|v| v["time"].as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| panic!("the log says {message:?}"))
    };
    let stop_took = at("stopped") - at("SIGTERM received, shutting down");
    assert!(
        stop_took <= chrono::TimeDelta::seconds(10),
        "stopped {stop_took} after SIGTERM: over Cloud Run's 10 s"
    );
    let streamed = tokio::time::timeout(Duration::from_secs(10), subject.stream.reader)
        .await
        .expect("the stream ends with the service")
        .expect("the reader does not panic");
    assert_eq!(streamed, Ok(()), "the stream reads cleanly to its end");
    let streamed = subject.stream.newest.lock().expect("newest").clone();
    supervision.cancel();
    supervisor.await.expect("supervision ends");
    nats.stop().await;
    sim.state.exchange.set_paused(true);
    let log_text = service.log();
    assert!(!log_text.contains("stage failed"), "{log_text}");
    let flushed = lines
        .iter()
        .find(|v| v["message"] == "writer flushed")
        .expect("the writer reports its final flush");
    assert_eq!(flushed["pending"], 0, "nothing left unwritten");

    // The newest trade stored per product: at least the newest the stream showed (an update
    // lost at the signal would leave it behind).
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let versions: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT product_id, version FROM live_candles WHERE granularity = 'ONE_MINUTE'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("versions");
    for (product, version) in versions {
        let v = Version::from_bytes(&version).expect("version");
        let slot = last.entry(product).or_insert(0);
        *slot = (*slot).max(v.last_trade_id.0);
    }
    assert_eq!(last.len(), PRODUCTS, "{last:?}");
    for (product, shown) in &streamed {
        assert!(
            last.get(product) >= Some(shown),
            "{product}: the stream showed trade {shown}, the table ends at {:?}",
            last.get(product)
        );
    }

    // The table equals the exchange's trades up to the newest stored, per product: every
    // candle of every granularity.
    let rows = stored_rows(&db.pool).await;
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let seen: Vec<&LoggedTrade> = log
        .iter()
        .filter(|t| last.get(&t.product_id).is_some_and(|l| t.trade_id <= *l))
        .collect();
    let expected = aggregate(&seen);
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the same candles: none missing after the faults, none extra"
    );
    let mut wrong = Vec::new();
    for (key, e) in &expected {
        let row = &rows[key];
        let got = &row.ohlcv;
        let same = (got.open, got.high, got.low, got.close, got.volume)
            == (e.open, e.high, e.low, e.close, e.volume);
        let count_ok = match row.trade_count {
            Some(count) => count == e.count,
            None => row.backfilled,
        };
        if !same || !count_ok {
            wrong.push(format!(
                "{key:?}: stored {got:?} count {:?} backfilled {}; the exchange {e:?}",
                row.trade_count, row.backfilled
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} candles differ:\n{}\n{}",
        wrong.len(),
        expected.len(),
        wrong.join("\n"),
        log_text
    );
    // Minutes the faults lost came from REST: after the minute in which the feed had
    // subscribed (the start's windows reach no further), the faults' minutes are the only ones
    // REST could fill (the cross-check, which could repair others, is off).
    assert!(
        rows.iter()
            .any(|((_, g, start), row)| *g == Granularity::OneMinute
                && *start > started_minute
                && row.backfilled
                && row.trade_count.is_none()),
        "a minute of the faults (after {started_minute}) filled from REST"
    );
    assert!(rows.keys().any(|k| k.1 == Granularity::OneDay));
    sim.stop().await;
}
