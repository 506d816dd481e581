//! Messages on the bus: the golden sample, subjects and the KV, ordering, instances and
//! credentials.

use super::*;

#[test]
fn the_message_matches_the_golden_sample() {
    let message = CandleMessage::from_update(&update("PEPE-USD", 0, 42));
    let golden: serde_json::Value =
        serde_json::from_str(include_str!("../../fixtures/candle-message.json"))
            .expect("golden json");
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
    // The bucket said three ways must agree, and the version must be spelled lower-case:
    // coalescing compares `timestamp` and `version` without reading the rest.
    let mut other_timestamp = golden.clone();
    other_timestamp["timestamp"] = (golden["timestamp"].as_i64().expect("ts") + 60).into();
    assert!(CandleMessage::parse(other_timestamp.to_string().as_bytes()).is_err());
    let mut upper = golden.clone();
    upper["version"] = golden["version"]
        .as_str()
        .expect("version")
        .to_uppercase()
        .into();
    assert!(CandleMessage::parse(upper.to_string().as_bytes()).is_err());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_read_from_nats_keeps_the_newest_of_every_bucket_and_a_bad_message_costs_itself_only()
 {
    // Messages that wait together are coalesced to the newest version of each (series,
    // bucket) before they are read whole. Whatever was coalesced, a client must end with the
    // last version of each bucket (the older bucket's completion included), never see a
    // version older than one it saw, and a bad message that claims the highest version must
    // not hide the real newest one.
    let n = nats().await;
    let live = LiveState::new();
    let live_client = spot_canvas::bus::connect_plain(&n.server.client_url())
        .await
        .expect("connects");
    let cancel = CancellationToken::new();
    let task = tokio::spawn(
        live.clone()
            .run(live_client.clone(), n.kv.clone(), cancel.clone()),
    );
    wait_for("the first reload", Duration::from_secs(20), || async {
        live.report().kv_reloads >= 1
    })
    .await;
    tokio::time::timeout(
        Duration::from_secs(10),
        live_client.request("$JS.API.INFO", bytes::Bytes::new()),
    )
    .await
    .expect("in time")
    .expect("the subscription reached the server");
    let (mut sub, _) = live.subscribe(
        Filter::all(),
        ClientSettings::default(),
        CancellationToken::new(),
    );
    let subject = spot_canvas::bus::subject("BURST-USD", Granularity::OneMinute);
    const N: u64 = 1_500;
    let mut completed = update("BURST-USD", 0, N);
    completed.complete = true;
    let mut sent = Vec::new();
    for count in 1..=N {
        sent.push(update("BURST-USD", 0, count));
    }
    sent.push(completed.clone());
    for count in 1..=N {
        sent.push(update("BURST-USD", 1, count));
    }
    let newest = update("BURST-USD", 1, N);
    for u in &sent {
        n.client
            .publish(
                subject.clone(),
                CandleMessage::from_update(u).to_json().into(),
            )
            .await
            .expect("publish");
    }
    // Bucket 1 with a version above every real one, and a body of another schema.
    let mut bad: serde_json::Value =
        serde_json::from_slice(&CandleMessage::from_update(&newest).to_json()).expect("json");
    bad["schema"] = 2.into();
    bad["version"] = "f".repeat(newest_version_len(&newest)).into();
    n.client
        .publish(subject.clone(), bad.to_string().into())
        .await
        .expect("publish");
    n.client.flush().await.expect("flush");
    let product = spot_canvas::model::ProductId::from_static("BURST-USD");
    let mut seen: Vec<(i64, Version)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.contains(&(START + 60, newest.version())) {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Delivery::Updates(entries)) => seen.extend(
                entries
                    .iter()
                    .map(|e| (e.update.candle.start.timestamp(), e.update.version())),
            ),
            Ok(other) => panic!("no resync or cut-off expected: {other:?}"),
            Err(_) => panic!("the newest update never came; seen {} updates", seen.len()),
        }
    }
    assert!(
        seen.contains(&(START, completed.version())),
        "the older bucket's completion reached the client"
    );
    for bucket in [START, START + 60] {
        let versions: Vec<Version> = seen
            .iter()
            .filter(|(b, _)| *b == bucket)
            .map(|(_, v)| *v)
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "bucket {bucket}: only newer versions, in order"
        );
    }
    assert_eq!(live.current(&product, Granularity::OneMinute), Some(newest));
    wait_for("every message counted", Duration::from_secs(20), || async {
        live.report().messages == sent.len() as u64 + 1
    })
    .await;
    let report = live.report();
    assert_eq!(report.bad, 1, "{report:?}");
    assert!(
        report.applied + report.older_buckets + report.stale + report.coalesced + report.bad
            >= sent.len() as u64,
        "every message applied, refused as stale, coalesced or counted bad: {report:?}"
    );
    cancel.cancel();
    task.await.expect("join").expect("live loop");
}

/// Characters of the hex version a message carries.
fn newest_version_len(u: &CandleUpdate) -> usize {
    CandleMessage::from_update(u).version.len()
}
