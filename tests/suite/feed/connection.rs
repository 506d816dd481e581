//! The feed's connections: frames reaching the channel, closes, drops, stalls, oversized frames,
//! backoff and back-pressure.

use super::*;

#[tokio::test]
async fn snapshots_updates_candles_and_heartbeats_reach_the_channel() {
    let sim = sim(2).await;
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD", "ETH-USD"])));
    let mut snapshots = BTreeSet::new();
    let (mut updates, mut heartbeats, mut candles) = (0, 0, 0);
    let mut subscribed = BTreeSet::new();
    feed.until(Duration::from_secs(10), |e| {
        match e {
            FeedEvent::Subscribed { products, .. } => {
                assert!(snapshots.is_empty(), "announced before the first snapshot");
                subscribed.extend(products.iter().cloned());
            }
            FeedEvent::Trades(b) if b.snapshot => {
                assert_eq!(b.trades.len(), 100);
                snapshots.insert(b.trades[0].product_id.clone());
            }
            FeedEvent::Trades(_) => updates += 1,
            FeedEvent::Heartbeat { time, .. } => {
                assert!(time.is_some());
                heartbeats += 1;
            }
            FeedEvent::ExchangeCandles { candles: c, .. } => {
                assert!(!c.is_empty());
                candles += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
        snapshots.len() == 2 && updates >= 4 && heartbeats >= 2 && candles >= 1
    })
    .await;
    assert_eq!(
        subscribed, snapshots,
        "every product's first subscribe is announced"
    );
    let report = feed.health.report();
    assert_eq!(report.connected, 1);
    assert_eq!(report.auth, AuthState::Unauthenticated);
    let c = connection(&report);
    assert!(c.frames > 5 && c.trades >= 200);
    assert_eq!((c.reconnects, c.gaps, c.malformed), (0, 0, 0));
    feed.stop().await;
    assert_eq!(
        sim.state.stats.client_close_frames.get(),
        1,
        "the feed closes its socket politely"
    );
    sim.stop().await;
}

/// Arms `fault` for the feed's first connection and checks that it reconnects, resubscribes
/// (a fresh snapshot) and trades keep flowing; returns the health report.
async fn reconnects_after(
    fault: FaultKind,
    settings_change: impl FnOnce(&mut FeedSettings),
) -> FeedReport {
    let sim = sim(1).await;
    sim.arm(next_fault(8, fault));
    let mut s = settings(&sim, Some(&["BTC-USD"]));
    settings_change(&mut s);
    let mut feed = Running::start(s);
    feed.until(Duration::from_secs(10), is_snapshot).await;
    let events = feed
        .until(Duration::from_secs(15), |e| {
            matches!(e, FeedEvent::Reconnected { .. })
        })
        .await;
    let Some(FeedEvent::Reconnected {
        products,
        disconnected_at,
        reconnected_at,
        ..
    }) = events.last()
    else {
        unreachable!()
    };
    assert_eq!(products, &vec!["BTC-USD".to_owned()]);
    assert!(disconnected_at < reconnected_at);
    feed.until(Duration::from_secs(10), is_snapshot).await;
    feed.until(Duration::from_secs(10), is_update).await;
    let report = feed.health.report();
    assert_eq!(connection(&report).reconnects, 1);
    assert_eq!(report.connected, 1);
    feed.stop().await;
    sim.stop().await;
    report
}

#[tokio::test]
async fn close_1000_leads_to_a_reconnect_and_resubscribe() {
    let report = reconnects_after(FaultKind::Close { code: 1000 }, |_| {}).await;
    let error = connection(&report).last_error.clone().expect("reason");
    assert!(error.contains("1000"), "{error}");
}

#[tokio::test]
async fn close_1001_leads_to_a_reconnect_and_resubscribe() {
    let report = reconnects_after(FaultKind::Close { code: 1001 }, |_| {}).await;
    let error = connection(&report).last_error.clone().expect("reason");
    assert!(error.contains("1001"), "{error}");
}

#[tokio::test]
async fn a_dropped_connection_leads_to_a_reconnect() {
    reconnects_after(FaultKind::Drop, |_| {}).await;
}

#[tokio::test]
async fn a_stalled_connection_is_abandoned_after_the_silence_timeout() {
    let sim = sim(1).await;
    sim.arm(next_fault(8, FaultKind::Stall { secs: None }));
    let s = settings(&sim, Some(&["BTC-USD"]));
    let silence = chrono::TimeDelta::from_std(s.silence_timeout).expect("delta");
    let mut feed = Running::start(s);
    let events = feed
        .until(Duration::from_secs(20), |e| {
            matches!(e, FeedEvent::Reconnected { .. })
        })
        .await;
    let Some(FeedEvent::Reconnected {
        disconnected_at,
        reconnected_at,
        ..
    }) = events.last()
    else {
        unreachable!()
    };
    // `disconnected_at` is the last frame before the stall: the silence is measured from
    // there, so the reconnect cannot come sooner than the timeout after it.
    assert!(
        *reconnected_at - *disconnected_at >= silence,
        "reconnected {} after the stall began",
        *reconnected_at - *disconnected_at
    );
    let report = feed.health.report();
    let error = connection(&report).last_error.clone().expect("reason");
    assert!(error.contains("no frame"), "{error}");
    feed.until(Duration::from_secs(10), is_update).await;
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_leads_to_a_reconnect() {
    let report = reconnects_after(FaultKind::Oversized { bytes: 2 << 20 }, |s| {
        s.max_frame_bytes = 1 << 20;
    })
    .await;
    let error = connection(&report).last_error.clone().expect("reason");
    assert!(error.contains("Message too long"), "{error}");
}

#[tokio::test]
async fn backoff_grows_while_connections_keep_failing() {
    let sim = sim(1).await;
    sim.arm(FaultRequest {
        scope: Scope::Named(ScopeName::All),
        after_frames: 3,
        kind: FaultKind::Close { code: 1001 },
    });
    let mut feed = Running::start(settings(&sim, Some(&["BTC-USD"])));
    let report = feed
        .health_until(Duration::from_secs(30), |r| {
            r.connections
                .first()
                .is_some_and(|c| c.backoffs_ms.len() >= 4)
        })
        .await;
    let backoffs = &connection(&report).backoffs_ms;
    assert!(backoffs.windows(2).all(|w| w[1] >= w[0]), "{backoffs:?}");
    assert!(
        backoffs[3] >= 4 * 100,
        "doubling from a 200 ms base: {backoffs:?}"
    );
    assert!(backoffs[0] <= 200, "{backoffs:?}");
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_full_event_channel_slows_the_reader_and_loses_nothing() {
    let (sim, _dir, log) = logged_sim(SimConfig {
        products: 2,
        trades_per_second: 20.0,
        history_minutes: 2,
        ..SimConfig::default()
    })
    .await;
    let mut s = settings(&sim, Some(&["BTC-USD", "ETH-USD"]));
    s.channel_capacity = 2;
    let mut feed = Running::start(s);
    let mut delivered = Delivered::default();
    feed.until(Duration::from_secs(10), |e| {
        delivered.take(e);
        delivered.snapshot_top.len() == 2
    })
    .await;
    // Time is the subject: a consumer that does not read for longer than the silence timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut updates = 0;
    feed.until(Duration::from_secs(20), |e| {
        no_window(e);
        delivered.take(e);
        if is_update(e) {
            updates += 1;
        }
        updates >= 30
    })
    .await;
    let report = feed.health.report();
    let c = connection(&report);
    assert!(c.backpressure_ms >= 1_000, "the reader waited: {c:?}");
    assert_eq!((c.gaps, c.reconnects, c.sequence_resets), (0, 0, 0));
    let log = common::read_trade_log(&log);
    for product in ["BTC-USD", "ETH-USD"] {
        delivered.assert_whole(&log, product);
    }
    feed.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_stalls_neither_the_connection_nor_the_shutdown() {
    // A WebSocket server that completes the handshake, then never reads nor answers: neither
    // the subscribes nor the close frame get a reply.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    held.push(ws);
                }
            }
        }
    });
    let sim = sim(1).await;
    let mut s = settings(&sim, Some(&["BTC-USD"]));
    s.ws_url = format!("ws://{addr}");
    let mut feed = Running::start(s);
    // The silence timeout abandons the mute peer: the connection goes on with a new one.
    feed.health_until(Duration::from_secs(20), |r| {
        r.connections.first().is_some_and(|c| {
            c.last_error
                .as_deref()
                .is_some_and(|e| e.contains("no frame"))
        })
    })
    .await;
    common::wait_for("a second connect", Duration::from_secs(20), || {
        let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
        async move { n >= 2 }
    })
    .await;
    feed.health_until(Duration::from_secs(10), |r| r.connected == 1)
        .await;
    // Stopping closes politely; the peer never answers, and the close times out instead of
    // hanging (`stop` fails after 10 s).
    feed.stop().await;
    server.abort();
    sim.stop().await;
}
