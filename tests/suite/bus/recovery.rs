//! Faults of NATS: a killed server, a failed KV reload, an unreadable KV value, a server that stops
//! reading.

use super::*;

#[tokio::test]
async fn a_killed_nats_server_is_restarted_and_state_and_kv_become_whole_again() {
    let n = nats().await;
    let cancel = CancellationToken::new();
    let supervisor = tokio::spawn({
        let (server, cancel) = (n.server.clone(), cancel.clone());
        async move { server.supervise(cancel).await }
    });
    let live = LiveState::new();
    let resync = live.resync_trigger();
    // A second client for the live state, as the service has one, hearing reconnects.
    let live_client = spot_canvas::bus::connect(&n.server.client_url(), "live", move |event| {
        let resync = resync.clone();
        async move {
            if matches!(event, async_nats::Event::Connected) {
                resync.notify_one();
            }
        }
    })
    .await
    .expect("connects");
    let live_task = tokio::spawn(live.clone().run(live_client, n.kv.clone(), cancel.clone()));
    let (tx, rx) = mpsc::channel(64);
    let publisher = Publisher::new(n.client.clone(), n.kv.clone(), rx);
    let stats = publisher.stats();
    let publisher = tokio::spawn(publisher.run());
    let products: Vec<String> = (0..20).map(|i| format!("P{i:02}-USD")).collect();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let pid = n.server.pid().await.expect("running");
    let mut sent_rows = 0;
    for round in 1..=120u64 {
        let batch: Vec<CandleUpdate> = products.iter().map(|p| update(p, 0, round)).collect();
        for p in &products {
            last.insert(p.clone(), round);
        }
        tx.send(batch).await.expect("send");
        sent_rows += products.len() as u64;
        match round {
            // Rounds published one flush at a time while the server is up.
            1..=29 => flushed(&stats, sent_rows).await,
            30 => {
                let killed = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .expect("kill");
                assert!(killed.success());
            }
            // Rounds 31-59 come while the server is down; then it is back.
            60 => {
                common::wait_for("a new nats-server", Duration::from_secs(30), || async {
                    n.server.pid().await.is_some_and(|p| p != pid)
                })
                .await;
            }
            _ => {}
        }
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("the publisher catches up once NATS is back")
        .expect("join")
        .expect("publisher");
    let restarted = n.server.pid().await.expect("running again");
    assert_ne!(restarted, pid, "a new nats-server process");
    for (product, round) in &last {
        let key = kv_key(product, Granularity::OneMinute);
        assert_eq!(
            kv_version(&n.kv, &key).await.map(|v| v.trade_count),
            Some(*round),
            "KV {key}"
        );
    }
    // The live state converges (through live messages, or the KV after the reconnect).
    wait_for(
        "the live state whole again",
        Duration::from_secs(20),
        || async {
            last.iter().all(|(p, round)| {
                live.current(&p.parse().expect("an id"), Granularity::OneMinute)
                    .is_some_and(|u| u.version().trade_count == *round)
            })
        },
    )
    .await;
    cancel.cancel();
    live_task.await.expect("join").expect("live state");
    supervisor.await.expect("supervisor");
    n.server.stop().await;
}

#[tokio::test]
async fn a_failed_kv_reload_is_tried_again_without_a_reconnect() {
    let n = nats().await;
    let js = async_nats::jetstream::new(n.client.clone());
    let candle = update("RETRY-USD", 0, 7);
    for _attempt in 0..5 {
        // JetStream without the bucket: the start's reload fails.
        js.delete_key_value(spot_canvas::bus::KV_BUCKET)
            .await
            .expect("bucket deleted");
        let live = LiveState::new();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(
            live.clone()
                .run(n.client.clone(), n.kv.clone(), cancel.clone()),
        );
        wait_for("a failed reload", Duration::from_secs(20), || async {
            live.report().kv_reload_failures >= 1
        })
        .await;
        // The bucket back with a candle only the KV holds (no message on its subject, no
        // reconnect): only a retried reload brings it.
        let kv = spot_canvas::bus::ensure_bucket(&js, 1)
            .await
            .expect("bucket");
        kv.put(
            kv_key("RETRY-USD", Granularity::OneMinute),
            CandleMessage::from_update(&candle).to_json().into(),
        )
        .await
        .expect("kv put");
        // A retry that ran between the bucket's return and the put read it empty and ended
        // the retries: that attempt proves nothing, and starts over.
        let report = live.report();
        let raced = report.kv_reloads != report.kv_reload_failures;
        if !raced {
            wait_for(
                "the KV's candle in the live state",
                Duration::from_secs(30),
                || async {
                    live.current(
                        &spot_canvas::model::ProductId::from_static("RETRY-USD"),
                        Granularity::OneMinute,
                    )
                    .is_some_and(|u| u.version() == candle.version())
                },
            )
            .await;
            let report = live.report();
            assert!(
                report.kv_reloads > report.kv_reload_failures,
                "a later reload succeeded: {report:?}"
            );
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the live state stops")
            .expect("join")
            .expect("live state");
        if !raced {
            n.server.stop().await;
            return;
        }
    }
    panic!("every attempt raced a retry against the put");
}

#[tokio::test]
async fn an_unreadable_kv_value_is_overwritten_and_counted_and_blocks_no_other_key() {
    let n = nats().await;
    // Left by another schema version (a rolling deploy) and by something else altogether.
    let garbage = kv_key("BTC-USD", Granularity::OneMinute);
    n.kv.put(&garbage, "not a candle".into())
        .await
        .expect("put");
    let other_schema = kv_key("ETH-USD", Granularity::OneMinute);
    let mut future: serde_json::Value =
        serde_json::from_slice(&CandleMessage::from_update(&update("ETH-USD", 0, 999)).to_json())
            .expect("json");
    future["schema"] = 2.into();
    n.kv.put(&other_schema, future.to_string().into())
        .await
        .expect("put");
    let (tx, rx) = mpsc::channel(8);
    let publisher = Publisher::new(n.client.clone(), n.kv.clone(), rx);
    let stats = publisher.stats();
    let task = tokio::spawn(publisher.run());
    let products = ["BTC-USD", "ETH-USD", "SOL-USD"];
    tx.send(products.iter().map(|p| update(p, 0, 5)).collect())
        .await
        .expect("send");
    flushed(&stats, 3).await;
    // Later updates land on top, through the cached revisions.
    tx.send(products.iter().map(|p| update(p, 0, 6)).collect())
        .await
        .expect("send");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the publisher finishes: no key is stuck")
        .expect("join")
        .expect("publisher");
    for p in products {
        let key = kv_key(p, Granularity::OneMinute);
        assert_eq!(
            kv_version(&n.kv, &key).await.map(|v| v.trade_count),
            Some(6),
            "{key}"
        );
    }
    let report = stats.report();
    assert_eq!(report.kv_unreadable_overwritten, 2, "{report:?}");
    assert_eq!(report.sink.failures, 0, "{report:?}");
    assert_eq!(report.sink.written_rows, 6, "{report:?}");
    n.server.stop().await;
}

/// A stopped (SIGSTOP) nats-server, continued on drop.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        signal("-STOP", pid);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(which: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {which} {pid}");
}

#[tokio::test]
async fn a_nats_server_that_stops_reading_stalls_neither_the_publisher_nor_its_stop() {
    let n = nats().await;
    let (tx, rx) = mpsc::channel(4);
    let publisher =
        Publisher::new(n.client.clone(), n.kv.clone(), rx).with_settings(SinkSettings {
            flush_timeout: Duration::from_secs(2),
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_millis(500),
            ..SinkSettings::default()
        });
    let stats = publisher.stats();
    let task = tokio::spawn(publisher.run());
    tx.send(vec![update("BTC-USD", 0, 1)]).await.expect("send");
    flushed(&stats, 1).await;
    let stopped = Stopped::stop(n.server.pid().await.expect("running"));
    // Fill the connection (socket buffers and the client's queue): from now on a publish on
    // this client waits for a server that does not read.
    let stuffing = tokio::spawn({
        let client = n.client.clone();
        async move {
            for _ in 0..128 {
                client
                    .publish("stuffing", vec![0u8; 512 * 1024].into())
                    .await
                    .expect("publish");
            }
        }
    });
    let products: Vec<String> = (0..10).map(|i| format!("P{i}-USD")).collect();
    let sending = async {
        for round in 2..=50u64 {
            let batch = products.iter().map(|p| update(p, 0, round)).collect();
            tx.send(batch).await.expect("send");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), sending)
        .await
        .expect("the publisher never blocks its sender");
    wait_for(
        "stalled flushes given up",
        Duration::from_secs(30),
        || async { stats.report().sink.failures >= 2 },
    )
    .await;
    // The stop: the input closes while the server still does not read; the publisher keeps
    // retrying, each attempt bounded, holding every update.
    drop(tx);
    let before = stats.report().sink.failures;
    wait_for(
        "retries after the input closed",
        Duration::from_secs(30),
        || async { stats.report().sink.failures > before },
    )
    .await;
    assert!(!task.is_finished());
    drop(stopped);
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the publisher finishes once the server reads again")
        .expect("join")
        .expect("publisher");
    tokio::time::timeout(Duration::from_secs(60), stuffing)
        .await
        .expect("the stuffing drains")
        .expect("join");
    for p in &products {
        let key = kv_key(p, Granularity::OneMinute);
        assert_eq!(
            kv_version(&n.kv, &key).await.map(|v| v.trade_count),
            Some(50),
            "{key}"
        );
    }
    n.server.stop().await;
}
