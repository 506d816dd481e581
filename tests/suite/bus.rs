//! NATS with a real `nats-server`: the message format (golden sample), publish/subscribe, the
//! KV keeping the newest version whatever the order, a killed server restarted with the live
//! state and KV whole again, and the live state's initial-then-updates contract.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common;
use common::wait_for;

use chrono::DateTime;
use futures_util::StreamExt;
use rust_decimal::Decimal;
use spot_canvas::bus::{CandleMessage, EmbeddedNats, Publisher, PublisherStats, kv_key};
use spot_canvas::live::{ClientSettings, Delivery, Filter, LiveState};
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId, Version};
use spot_canvas::sink::SinkSettings;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const START: i64 = 1_790_000_040;

fn update(product: &str, bucket: i64, count: u64) -> CandleUpdate {
    let start = START + 60 * bucket;
    let time = DateTime::from_timestamp(start, 0).expect("time");
    CandleUpdate {
        candle: Candle {
            product_id: product.parse().expect("an id"),
            granularity: Granularity::OneMinute,
            start: time,
            open: "0.0000123456789".parse().expect("d"),
            high: "0.0000123456790".parse().expect("d"),
            low: "0.0000123456788".parse().expect("d"),
            close: Decimal::new(count as i64, 10),
            volume: "1234567890123.123456789".parse().expect("d"),
            buy_volume: Some("617283945061.5".parse().expect("d")),
            trade_count: Some(count),
        },
        complete: false,
        revision: 0,
        counted_trades: count,
        last_trade_id: TradeId(1_000 + count),
        last_trade_time: time + chrono::TimeDelta::milliseconds(1500),
        last_received: time + chrono::TimeDelta::milliseconds(1600),
    }
}

/// Waits until the publisher has written `rows` rows (each flush confirmed).
async fn flushed(stats: &PublisherStats, rows: u64) {
    wait_for("the publisher's flush", Duration::from_secs(20), || async {
        stats.report().sink.written_rows >= rows
    })
    .await;
}

struct Nats {
    server: EmbeddedNats,
    client: async_nats::Client,
    kv: async_nats::jetstream::kv::Store,
    _dir: tempfile::TempDir,
}

async fn nats() -> Nats {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let server = EmbeddedNats::start(None, dir.path())
        .await
        .expect("nats-server starts");
    let client = spot_canvas::bus::connect(&server.client_url(), "test", |_| async {})
        .await
        .expect("connects");
    let js = async_nats::jetstream::new(client.clone());
    let kv = spot_canvas::bus::ensure_bucket(&js, 1)
        .await
        .expect("bucket");
    Nats {
        server,
        client,
        kv,
        _dir: dir,
    }
}

async fn kv_version(kv: &async_nats::jetstream::kv::Store, key: &str) -> Option<Version> {
    let bytes = kv.get(key).await.expect("kv get")?;
    Some(
        CandleMessage::parse(&bytes)
            .expect("a candle message")
            .parsed_version()
            .expect("version"),
    )
}

#[test]
fn the_message_matches_the_golden_sample() {
    let message = CandleMessage::from_update(&update("PEPE-USD", 0, 42));
    let golden: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/candle-message.json")).expect("golden json");
    let actual: serde_json::Value = serde_json::from_slice(&message.to_json()).expect("json");
    assert_eq!(actual, golden);
    let back = CandleMessage::parse(&message.to_json()).expect("parses");
    assert_eq!(back.to_update().expect("update"), update("PEPE-USD", 0, 42));
    let mut other_schema = golden.clone();
    other_schema["schema"] = 2.into();
    assert!(CandleMessage::parse(other_schema.to_string().as_bytes()).is_err());
    // Outside text is checked: the exchange, the id, the subject naming the series.
    let mut other_exchange = golden.clone();
    other_exchange["exchange"] = "elsewhere\r".into();
    let error = CandleMessage::parse(other_exchange.to_string().as_bytes()).expect_err("exchange");
    assert!(error.to_string().contains("\\r"), "escaped: {error}");
    let mut odd_id = golden.clone();
    odd_id["product_id"] = "PEPE-USD\rretry: 0".into();
    assert!(CandleMessage::parse(odd_id.to_string().as_bytes()).is_err());
    assert!(
        back.check_subject(&spot_canvas::bus::subject(
            "PEPE-USD",
            Granularity::OneMinute
        ))
        .is_ok()
    );
    for other in [
        spot_canvas::bus::subject("BTC-USD", Granularity::OneMinute),
        spot_canvas::bus::subject("PEPE-USD", Granularity::OneDay),
        "candles.coinbase.PEPE-USD.ONE_MINUTE.x".to_owned(),
    ] {
        assert!(back.check_subject(&other).is_err(), "{other}");
    }
}

#[tokio::test]
async fn published_updates_arrive_on_their_subject_and_in_the_kv() {
    let n = nats().await;
    let mut sub = n.client.subscribe("candles.>").await.expect("subscribe");
    n.client.flush().await.expect("flush");
    let (tx, rx) = mpsc::channel(8);
    let publisher = Publisher::new(n.client.clone(), n.kv.clone(), rx);
    let task = tokio::spawn(publisher.run());
    let sent = update("BTC-USD", 0, 7);
    tx.send(vec![sent.clone()]).await.expect("send");
    let message = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("in time")
        .expect("a message");
    assert_eq!(
        message.subject.as_str(),
        "candles.coinbase.BTC-USD.ONE_MINUTE"
    );
    let got = CandleMessage::parse(&message.payload).expect("parses");
    assert_eq!(got.to_update().expect("update"), sent);
    drop(tx);
    task.await.expect("join").expect("publisher");
    assert_eq!(
        kv_version(&n.kv, &kv_key("BTC-USD", Granularity::OneMinute)).await,
        Some(sent.version())
    );
    let config = n._dir.path().join("nats").join("nats-server.conf");
    assert!(config.exists(), "the token's file while the server runs");
    n.server.stop().await;
    assert!(!config.exists(), "the token's file goes with the server");
}

#[tokio::test]
async fn the_kv_keeps_the_newest_version_whatever_the_order_and_the_producers() {
    let n = nats().await;
    // One producer, updates out of order across flushes (each waits for the one before).
    let (tx, rx) = mpsc::channel(8);
    let publisher = Publisher::new(n.client.clone(), n.kv.clone(), rx);
    let stats = publisher.stats();
    let task = tokio::spawn(publisher.run());
    let mut sent = 0;
    for count in [3u64, 1, 2] {
        tx.send(vec![update("ETH-USD", 0, count)])
            .await
            .expect("send");
        sent += 1;
        flushed(&stats, sent).await;
    }
    // An older bucket's late revision does not replace the newer bucket either.
    tx.send(vec![update("ETH-USD", 5, 1)]).await.expect("send");
    flushed(&stats, sent + 1).await;
    let mut late = update("ETH-USD", 4, 99);
    late.revision = 1;
    tx.send(vec![late]).await.expect("send");
    drop(tx);
    task.await.expect("join").expect("publisher");
    let key = kv_key("ETH-USD", Granularity::OneMinute);
    assert_eq!(
        kv_version(&n.kv, &key).await,
        Some(update("ETH-USD", 5, 1).version())
    );

    // Two producers (a rolling deploy) racing over the same series in shuffled order.
    let mut tasks = Vec::new();
    let mut senders = Vec::new();
    let mut all_stats = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = mpsc::channel(64);
        let publisher = Publisher::new(n.client.clone(), n.kv.clone(), rx);
        all_stats.push(publisher.stats());
        tasks.push(tokio::spawn(publisher.run()));
        senders.push(tx);
    }
    for round in 0..40u64 {
        for (i, tx) in senders.iter().enumerate() {
            let count = if (round + i as u64).is_multiple_of(2) {
                200 - round
            } else {
                100 + round
            };
            let batch: Vec<CandleUpdate> = (0..10)
                .map(|p| update(&format!("P{p}-USD"), 0, count))
                .collect();
            tx.send(batch).await.expect("send");
        }
        // Both take each round before the next comes, so their flushes interleave.
        wait_for(
            "both producers took the round",
            Duration::from_secs(20),
            || async {
                all_stats
                    .iter()
                    .all(|s| s.report().sink.received >= (round + 1) * 10)
            },
        )
        .await;
    }
    drop(senders);
    for t in tasks {
        t.await.expect("join").expect("publisher");
    }
    for p in 0..10 {
        let key = kv_key(&format!("P{p}-USD"), Granularity::OneMinute);
        assert_eq!(
            kv_version(&n.kv, &key).await.map(|v| v.trade_count),
            Some(200),
            "{key}"
        );
    }
    n.server.stop().await;
}

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
async fn an_instance_skips_its_own_messages_and_applies_every_other_instances() {
    let n = nats().await;
    let origin = spot_canvas::bus::new_origin();
    assert_ne!(origin, spot_canvas::bus::new_origin(), "each start its own");
    let cancel = CancellationToken::new();
    // The publishing instance's live state, another ingesting instance's, and a web-only one.
    let own = LiveState::with_origin(origin.clone());
    let other = LiveState::with_origin(spot_canvas::bus::new_origin());
    let web = LiveState::new();
    // Each has subscribed once its start's reload (which follows the subscription) brought
    // the KV's one candle.
    let ready = update("READY-USD", 0, 1);
    n.kv.put(
        kv_key("READY-USD", Granularity::OneMinute),
        CandleMessage::from_update(&ready).to_json().into(),
    )
    .await
    .expect("kv put");
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for live in [&own, &other, &web] {
        let client = spot_canvas::bus::connect(&n.server.client_url(), "live", |_| async {})
            .await
            .expect("connects");
        clients.push(client.clone());
        tasks.push(tokio::spawn(live.clone().run(
            client,
            n.kv.clone(),
            cancel.clone(),
        )));
    }
    wait_for(
        "the live states running",
        Duration::from_secs(20),
        || async {
            [&own, &other, &web].iter().all(|l| {
                l.current(
                    &spot_canvas::model::ProductId::from_static("READY-USD"),
                    Granularity::OneMinute,
                )
                .is_some()
            })
        },
    )
    .await;
    // Their subscriptions went out before the reload, but the reload ran on the test's own
    // connection, and a client's flush only writes its socket. A request answered on each
    // connection is a round trip: the server reads a connection in order, so it holds the
    // subscription written before it.
    for client in &clients {
        tokio::time::timeout(
            Duration::from_secs(10),
            client.request("$JS.API.INFO", bytes::Bytes::new()),
        )
        .await
        .expect("in time")
        .expect("answered");
    }
    let (tx, rx) = mpsc::channel(8);
    let publisher = Publisher::new(n.client.clone(), n.kv.clone(), rx).with_origin(origin);
    let task = tokio::spawn(publisher.run());
    let sent = update("ECHO-USD", 0, 3);
    tx.send(vec![sent.clone()]).await.expect("send");
    for live in [&other, &web] {
        wait_for("the update applied", Duration::from_secs(20), || async {
            live.current(
                &spot_canvas::model::ProductId::from_static("ECHO-USD"),
                Granularity::OneMinute,
            )
            .as_ref()
                == Some(&sent)
        })
        .await;
    }
    wait_for(
        "the own message skipped",
        Duration::from_secs(20),
        || async { own.report().own_skipped == 1 },
    )
    .await;
    // The one message came and was skipped unread: nothing applied but the KV's candle.
    let report = own.report();
    assert_eq!(
        (report.messages, report.applied, report.bad),
        (1, 1, 0),
        "{report:?}"
    );
    assert_eq!(
        own.current(
            &spot_canvas::model::ProductId::from_static("ECHO-USD"),
            Granularity::OneMinute
        ),
        None
    );
    assert_eq!(other.report().own_skipped, 0);
    assert_eq!(web.report().own_skipped, 0);
    drop(tx);
    task.await.expect("join").expect("publisher");
    cancel.cancel();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stops")
            .expect("join")
            .expect("live state");
    }
    n.server.stop().await;
}

fn settings(capacity: usize) -> ClientSettings {
    ClientSettings {
        capacity,
        ..ClientSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_the_current_candle_then_every_newer_update_without_gap_or_duplicate() {
    let live = LiveState::new();
    const N: u64 = 20_000;
    let producer = {
        let live = live.clone();
        tokio::spawn(async move {
            for count in 1..=N {
                // Out of order now and then: older versions must never reach anyone.
                if count % 97 == 0 {
                    live.apply(update("BTC-USD", 0, count - 5));
                }
                live.apply(update("BTC-USD", 0, count));
                if count % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut clients = Vec::new();
    for i in 0..8u64 {
        let live = live.clone();
        clients.push(tokio::spawn(async move {
            // Time is the subject: clients join at staggered moments while updates flow.
            tokio::time::sleep(Duration::from_micros(300 * i)).await;
            let (mut sub, initial) = live.subscribe(
                Filter::of(
                    &[spot_canvas::model::ProductId::from_static("BTC-USD")],
                    &[Granularity::OneMinute],
                ),
                settings(N as usize),
                CancellationToken::new(),
            );
            let mut seen: Vec<u64> = initial
                .iter()
                .map(|e| e.update.version().trade_count)
                .collect();
            // One overall deadline, generous for a loaded CI: the stream must reach N.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while seen.last() != Some(&N) {
                match tokio::time::timeout_at(deadline, sub.next()).await {
                    Ok(Delivery::Updates(entries)) => {
                        seen.extend(entries.iter().map(|e| e.update.version().trade_count));
                    }
                    Ok(other) => panic!("no resync or cut-off expected: {other:?}"),
                    Err(_) => break,
                }
            }
            seen
        }));
    }
    producer.await.expect("producer");
    for client in clients {
        let seen = client.await.expect("client");
        assert_eq!(seen.last(), Some(&N), "reaches the end");
        let first = seen[0];
        let expected: Vec<u64> = (first..=N).collect();
        assert_eq!(
            seen, expected,
            "contiguous from the initial state, no duplicate"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_overflows_is_resynced_then_cut_off_when_it_stays_behind() {
    let live = LiveState::new();
    let slow_cut = CancellationToken::new();
    let (mut slow, _) = live.subscribe(
        Filter::all(),
        ClientSettings {
            capacity: 4,
            stall: Duration::from_millis(200),
            ..ClientSettings::default()
        },
        slow_cut.clone(),
    );
    let (mut fast, _) = live.subscribe(Filter::all(), settings(1_000), CancellationToken::new());
    // Another series' client costs nothing and gets nothing.
    let (mut other, _) = live.subscribe(
        Filter::of(
            &[spot_canvas::model::ProductId::from_static("ETH-USD")],
            &[Granularity::OneMinute],
        ),
        settings(1_000),
        CancellationToken::new(),
    );
    for count in 1..=100 {
        live.apply(update("SOL-USD", 0, count));
    }
    live.apply(update("ETH-USD", 0, 1));
    // The slow one overflowed: its next read is the latest state, not the 96 it missed.
    match slow.next().await {
        Delivery::Resync(entries) => {
            let mut versions: Vec<(String, u64)> = entries
                .iter()
                .map(|e| {
                    (
                        e.update.candle.product_id.to_string(),
                        e.update.version().trade_count,
                    )
                })
                .collect();
            versions.sort();
            assert_eq!(
                versions,
                [("ETH-USD".to_owned(), 1), ("SOL-USD".to_owned(), 100)]
            );
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    assert_eq!(live.report().resyncs, 1);
    assert_eq!(live.report().resync_snapshots, 1);
    assert!(!slow_cut.is_cancelled());
    // It overflows again and stops reading past its stall limit: the next update cuts it off.
    for count in 101..=110 {
        live.apply(update("SOL-USD", 0, count));
    }
    tokio::time::advance(Duration::from_millis(300)).await;
    live.apply(update("SOL-USD", 0, 111));
    assert!(slow_cut.is_cancelled(), "its connection is told to close");
    assert!(matches!(slow.next().await, Delivery::CutOff));
    assert_eq!(live.report().clients_cut_off, 1);
    assert_eq!(live.report().clients, 2);
    // The fast one got every update, in order.
    let mut fast_seen = Vec::new();
    while fast_seen.len() < 112 {
        match tokio::time::timeout(Duration::from_secs(10), fast.next()).await {
            Ok(Delivery::Updates(entries)) => fast_seen.extend(entries.iter().map(|e| {
                (
                    e.update.candle.product_id.clone(),
                    e.update.version().trade_count,
                )
            })),
            other => panic!("fast client: {other:?}"),
        }
    }
    let sol: Vec<u64> = fast_seen
        .iter()
        .filter(|(p, _)| p == "SOL-USD")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(sol, (1..=111).collect::<Vec<u64>>());
    match other.next().await {
        Delivery::Updates(entries) => {
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].update.candle.product_id, "ETH-USD");
        }
        got => panic!("other: {got:?}"),
    }
}

fn one_client(
    live: &LiveState,
    settings: ClientSettings,
) -> (spot_canvas::live::Subscription, CancellationToken) {
    let cut = CancellationToken::new();
    let (sub, _) = live.subscribe(Filter::all(), settings, cut.clone());
    (sub, cut)
}

/// The element id and trade count of every event of one delivery.
async fn delivered(sub: &mut spot_canvas::live::Subscription) -> Vec<(String, u64)> {
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Delivery::Updates(entries)) => entries
            .iter()
            .map(|e| {
                let text = String::from_utf8_lossy(e.event()).into_owned();
                let id = text
                    .split("<spot-candle id=\"")
                    .nth(1)
                    .and_then(|t| t.split('"').next())
                    .expect("an element id")
                    .to_owned();
                (id, e.update.version().trade_count)
            })
            .collect(),
        other => panic!("expected updates, got {other:?}"),
    }
}

#[tokio::test]
async fn an_older_buckets_completion_and_revisions_reach_clients_as_that_buckets_element() {
    let live = LiveState::new();
    let (mut sub, _) = one_client(&live, settings(100));
    live.apply(update("BTC-USD", 0, 5));
    // The next bucket starts before the first one's completion comes.
    live.apply(update("BTC-USD", 1, 1));
    let mut complete = update("BTC-USD", 0, 5);
    complete.complete = true;
    assert!(live.apply(complete.clone()), "the completion is news");
    // The same completion again (a second producer) and an older one are not.
    assert!(!live.apply(complete));
    assert!(!live.apply(update("BTC-USD", 0, 4)));
    let mut revised = update("BTC-USD", 0, 6);
    revised.revision = 1;
    assert!(live.apply(revised), "a late trade's revision is news");
    let ids = delivered(&mut sub).await;
    let bucket0 = format!("BTC-USD-ONE_MINUTE-{START}");
    assert_eq!(
        ids,
        [
            ("BTC-USD-ONE_MINUTE".to_owned(), 5),
            ("BTC-USD-ONE_MINUTE".to_owned(), 1),
            (bucket0.clone(), 5),
            (bucket0, 6),
        ]
    );
    // The series still holds its newest bucket.
    let current = live
        .current(
            &spot_canvas::model::ProductId::from_static("BTC-USD"),
            Granularity::OneMinute,
        )
        .expect("current");
    assert_eq!(current.candle.start.timestamp(), START + 60);
    assert_eq!(live.report().older_buckets, 2);
}

#[tokio::test]
async fn a_bucket_after_the_next_one_is_refused_and_freezes_nothing() {
    let live = LiveState::new();
    let now = chrono::Utc::now().timestamp();
    let bucket_now = (now - START).div_euclid(60);
    assert!(live.apply(update("BTC-USD", bucket_now, 1)));
    // A clock-skewed producer, a year ahead.
    assert!(!live.apply(update("BTC-USD", bucket_now + 525_600, 9)));
    assert_eq!(live.report().future, 1);
    assert!(
        live.apply(update("BTC-USD", bucket_now, 2)),
        "the series goes on"
    );
    // The next bucket is fine (a producer's clock a little ahead).
    assert!(live.apply(update("BTC-USD", bucket_now + 1, 1)));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_client_of_a_quiet_series_is_swept_and_one_resyncing_too_often_is_cut_off() {
    let live = LiveState::new();
    let stall = ClientSettings {
        capacity: 2,
        stall: Duration::from_secs(10),
        ..ClientSettings::default()
    };
    let (mut stalled, stalled_cut) = one_client(&live, stall);
    for count in 1..=5 {
        live.apply(update("SOL-USD", 0, count));
    }
    // The series goes quiet: no update will reach the stalled client again.
    live.sweep();
    assert!(!stalled_cut.is_cancelled(), "not yet past its stall limit");
    tokio::time::advance(Duration::from_secs(11)).await;
    live.sweep();
    assert!(stalled_cut.is_cancelled());
    assert!(matches!(stalled.next().await, Delivery::CutOff));
    // A client that overflows again and again is cut off at its sixth resync in a minute.
    let (mut flapping, flapping_cut) = one_client(
        &live,
        ClientSettings {
            capacity: 2,
            max_resyncs: 5,
            resync_window: Duration::from_secs(60),
            ..ClientSettings::default()
        },
    );
    let mut count = 100;
    for round in 1..=6 {
        for _ in 0..5 {
            count += 1;
            live.apply(update("SOL-USD", 0, count));
        }
        match flapping.next().await {
            Delivery::Resync(_) if round <= 5 => {}
            Delivery::CutOff if round == 6 => {}
            other => panic!("round {round}: {other:?}"),
        }
    }
    assert!(flapping_cut.is_cancelled());
    assert_eq!(live.report().clients_cut_off, 2);
    assert_eq!(live.report().clients, 0);
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

#[tokio::test]
async fn credentials_in_the_nats_url_authenticate_the_client() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut server = tokio::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["--user", "spot", "--pass", "s3cr@t"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server runs");
    // A list of servers (here the same one twice); the credentials of one serve for all.
    let url = format!("nats://spot:s3cr%40t@127.0.0.1:{port}, nats://127.0.0.1:{port}");
    let client = spot_canvas::bus::connect(&url, "auth-test", |_| async {})
        .await
        .expect("connects");
    // Connected means the server let the client in (a refused client stays disconnected).
    wait_for(
        "an authenticated connection",
        Duration::from_secs(30),
        || async { client.connection_state() == async_nats::connection::State::Connected },
    )
    .await;
    let mut sub = client.subscribe("auth.check").await.expect("subscribe");
    client.flush().await.expect("flush");
    client
        .publish("auth.check", "ok".into())
        .await
        .expect("publish");
    let message = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("in time")
        .expect("a message");
    assert_eq!(&message.payload[..], b"ok");
    server.kill().await.expect("stop");
}

#[test]
fn series_quiet_for_two_days_are_forgotten_and_the_others_kept() {
    let live = LiveState::new();
    let t0 = chrono::Utc::now();
    let later = t0 + spot_canvas::live::FORGET_QUIET_AFTER;
    live.apply_at(update("OLD-USD", 0, 1), t0);
    live.apply_at(update("NEW-USD", 0, 1), t0);
    // Applied later by this instance, whatever times the producer wrote.
    live.apply_at(update("NEW-USD", 1, 2), later);
    assert_eq!(live.report().products, 2);
    let now = later + chrono::TimeDelta::seconds(1);
    assert_eq!(live.forget_quiet(now), 1, "the old product's one series");
    assert_eq!(live.report().products, 1);
    assert!(
        live.current(
            &spot_canvas::model::ProductId::from_static("NEW-USD"),
            Granularity::OneMinute
        )
        .is_some()
    );
}
