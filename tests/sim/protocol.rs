//! The protocol: frames shaped like the production recording, subscriptions, Coinbase's limits,
//! errors, the stop and multi-product frames.

use super::*;

/// Recursive key/type shape of a JSON value. Arrays take the shape of their elements (all
/// must agree); the `subscriptions` map is keyed by channel names, so only its value shape
/// counts.
fn shape(value: &Value) -> Value {
    match value {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(n) if n.is_u64() || n.is_i64() => json!("integer"),
        Value::Number(_) => json!("float"),
        Value::String(_) => json!("string"),
        Value::Array(items) => {
            let shapes: BTreeSet<String> = items.iter().map(|i| shape(i).to_string()).collect();
            assert!(shapes.len() <= 1, "mixed array element shapes: {shapes:?}");
            json!([items.first().map(shape).unwrap_or(Value::Null)])
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let s = if k == "subscriptions" {
                        let inner: BTreeSet<String> = v
                            .as_object()
                            .expect("map")
                            .values()
                            .map(|x| shape(x).to_string())
                            .collect();
                        json!({ "<channel>": inner.into_iter().collect::<Vec<_>>() })
                    } else {
                        shape(v)
                    };
                    (k.clone(), s)
                })
                .collect(),
        ),
    }
}

#[tokio::test]
async fn frames_have_the_shape_of_the_production_recording() {
    // Production shapes, per channel and event type.
    let recording = include_str!("../fixtures/coinbase/production-market-data-2026-09-30.jsonl");
    let mut production: BTreeMap<String, Value> = BTreeMap::new();
    for line in recording.lines() {
        let frame: Value =
            serde_json::from_str(line.split_once('\t').map_or(line, |(_, f)| f)).expect("json");
        let kind = frame_kind(&frame);
        let s = shape(&frame);
        if let Some(previous) = production.insert(kind.clone(), s.clone()) {
            assert_eq!(previous, s, "production itself is consistent for {kind}");
        }
    }
    // Coinbase's documented candles frame, without the `client_id` production omits.
    let mut candles: Value =
        serde_json::from_str(include_str!("../fixtures/coinbase/example-ws-candles.json"))
            .expect("json");
    candles.as_object_mut().expect("object").remove("client_id");
    production.insert("candles/update".into(), shape(&candles));
    production.insert("candles/snapshot".into(), shape(&candles));

    let sim = start(quick(2)).await;
    let mut ws = connect(&sim).await;
    subscribe(&mut ws, "market_trades", &["BTC-USD", "ETH-USD"]).await;
    subscribe(&mut ws, "heartbeats", &[]).await;
    subscribe(&mut ws, "candles", &["BTC-USD"]).await;

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut snapshots = Vec::new();
    let mut last_seq = None;
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let frame = next_json(&mut ws).await;
        let kind = frame_kind(&frame);
        let expected = production
            .get(&kind)
            .unwrap_or_else(|| panic!("the simulator sent {kind}, production has no such frame"));
        assert_eq!(&shape(&frame), expected, "shape of {kind}: {frame}");
        assert!(
            frame.get("client_id").is_none(),
            "production sends no client_id"
        );
        let seq = frame["sequence_num"].as_u64().expect("sequence");
        if let Some(last) = last_seq {
            assert_eq!(seq, last + 1, "one counter across all channels");
        }
        last_seq = Some(seq);
        if kind == "market_trades/snapshot" {
            snapshots.push(frame.clone());
        }
        // Every frame parses with the service's own parser.
        parse_frame(frame.to_string().as_bytes(), Utc::now()).expect("the service parses it");
        *seen.entry(kind).or_default() += 1;
    }
    for kind in [
        "market_trades/snapshot",
        "market_trades/update",
        "heartbeats/-",
        "subscriptions/-",
        "candles/snapshot",
        "candles/update",
    ] {
        assert!(seen.contains_key(kind), "no {kind} frame in {seen:?}");
    }
    assert!(
        seen["heartbeats/-"] >= 3,
        "a heartbeat every second: {seen:?}"
    );
    // One snapshot frame per product, 100 trades each, newest first.
    assert_eq!(snapshots.len(), 2);
    for snap in &snapshots {
        let trades = snap["events"][0]["trades"].as_array().expect("trades");
        assert_eq!(trades.len(), 100);
        let products: BTreeSet<String> =
            trades.iter().map(|t| t["product_id"].to_string()).collect();
        assert_eq!(products.len(), 1, "one product per snapshot frame");
        let ids: Vec<u64> = trades
            .iter()
            .map(|t| {
                t["trade_id"]
                    .as_str()
                    .expect("id")
                    .parse()
                    .expect("numeric")
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    }
    sim.stop().await;
}

#[tokio::test]
async fn subscriptions_ack_lists_cumulative_subscriptions() {
    let sim = start(quick(2)).await;
    let mut ws = connect(&sim).await;
    subscribe(&mut ws, "heartbeats", &[]).await;
    let ack = next_json(&mut ws).await;
    assert_eq!(
        ack["events"][0]["subscriptions"],
        json!({"heartbeats": ["heartbeats"]})
    );
    subscribe(&mut ws, "market_trades", &["ETH-USD"]).await;
    loop {
        let frame = next_json(&mut ws).await;
        if frame["channel"] == "subscriptions" {
            assert_eq!(
                frame["events"][0]["subscriptions"],
                json!({"heartbeats": ["heartbeats"], "market_trades": ["ETH-USD"]})
            );
            break;
        }
    }
    sim.stop().await;
}

#[tokio::test]
async fn a_connection_without_a_subscribe_is_closed_after_5_seconds() {
    let sim = start(quick(1)).await;
    let mut ws = connect(&sim).await;
    let opened = Instant::now();
    let (_, code, closed) = until_close(&mut ws, Duration::from_secs(8)).await;
    assert!(closed, "closed with a close frame");
    assert_eq!(code, Some(1008));
    let waited = opened.elapsed();
    // The deadline starts on the server before the client sees the handshake's answer: a
    // loaded client measures from later, so only a clearly early close would be a fault.
    assert!(waited >= Duration::from_secs(4), "{waited:?}");
    assert_eq!(sim.state.stats.subscribe_timeouts.get(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn more_than_8_connects_a_second_get_an_error_and_a_close() {
    let sim = start(quick(1)).await;
    // Rounds of nine connects at once, until one round fits in a second (on a loaded machine
    // the first may not): the limit is what the simulator controls, not the machine's speed.
    let mut refused_in_round = 0;
    for _round in 0..5 {
        let sockets =
            futures_util::future::join_all((0..9).map(|_| async { connect(&sim).await })).await;
        // Each socket's first message, if any: a refused one gets an error at once, an accepted
        // one nothing until its 5 s subscribe deadline.
        let answers =
            futures_util::future::join_all(sockets.into_iter().map(|mut ws| async move {
                match next(&mut ws, Duration::from_secs(3)).await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).expect("json");
                        let (_, code, _) = until_close(&mut ws, Duration::from_secs(5)).await;
                        Some((v, code))
                    }
                    _ => None,
                }
            }))
            .await;
        let refused: Vec<_> = answers.into_iter().flatten().collect();
        for (v, code) in &refused {
            assert_eq!(v["type"], "error");
            assert!(
                v["message"]
                    .as_str()
                    .expect("message")
                    .contains("rate limit")
            );
            assert_eq!(*code, Some(1008));
        }
        refused_in_round = refused.len();
        if refused_in_round > 0 {
            break;
        }
        // Time is the subject: the one-second window must slide past this round.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    assert_eq!(
        refused_in_round, 1,
        "exactly the ninth connect of a second is refused"
    );
    assert_eq!(sim.state.stats.connect_limit_hits.get(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn more_than_8_messages_a_second_get_an_error_and_a_close() {
    let sim = start(quick(1)).await;
    let mut ws = connect(&sim).await;
    for _ in 0..9 {
        subscribe(&mut ws, "heartbeats", &[]).await;
    }
    let (frames, code, _) = until_close(&mut ws, Duration::from_secs(3)).await;
    let errors: Vec<_> = frames.iter().filter(|f| f["type"] == "error").collect();
    assert_eq!(errors.len(), 1, "{frames:?}");
    assert!(
        errors[0]["message"]
            .as_str()
            .expect("msg")
            .contains("rate limit")
    );
    assert_eq!(code, Some(1008));
    assert_eq!(sim.state.stats.message_limit_hits.get(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn unknown_products_and_channels_get_coinbase_error_frames() {
    let sim = start(quick(1)).await;
    let mut ws = connect(&sim).await;
    subscribe(&mut ws, "market_trades", &["NOPE-USD"]).await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert!(err["message"].as_str().expect("m").contains("NOPE-USD"));
    assert!(err.get("sequence_num").is_none(), "errors have no envelope");
    // The misspelled channel Coinbase answers with `authentication failure`.
    subscribe(&mut ws, "heartbeat", &[]).await;
    let err = next_json(&mut ws).await;
    assert_eq!(
        err,
        json!({"type": "error", "message": "authentication failure"})
    );
    let parsed = parse_frame(err.to_string().as_bytes(), Utc::now()).expect("parses");
    assert!(matches!(parsed.body, FrameBody::Error { .. }));
    sim.stop().await;
}

#[tokio::test]
async fn shutdown_closes_connections_with_1001() {
    let sim = start(quick(1)).await;
    let mut ws = subscribed(&sim).await;
    let _ = next_json(&mut ws).await;
    let stopping = tokio::spawn(sim.stop());
    let (_, code, closed) = until_close(&mut ws, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(code, Some(1001));
    stopping.await.expect("stops");
}

#[tokio::test]
async fn multi_product_frames_carry_several_products() {
    let sim = start(SimConfig {
        multi_product_frames: true,
        ..quick(3)
    })
    .await;
    let mut ws = connect(&sim).await;
    subscribe(&mut ws, "market_trades", &["BTC-USD", "ETH-USD", "SOL-USD"]).await;
    let mut mixed = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while mixed < 3 {
        assert!(Instant::now() < deadline, "no multi-product frames");
        let frame = next_update(&mut ws).await;
        let products: BTreeSet<&str> = frame["events"][0]["trades"]
            .as_array()
            .expect("trades")
            .iter()
            .map(|t| t["product_id"].as_str().expect("product"))
            .collect();
        if products.len() > 1 {
            mixed += 1;
        }
    }
    // And off again through the admin API.
    let off = reqwest::Client::new()
        .post(format!("http://{}/sim/options", sim.addr))
        .json(&json!({"multi_product_frames": false}))
        .send()
        .await
        .expect("admin");
    assert_eq!(off.status(), 200);
    assert!(!sim.state.multi_product_frames());
    sim.stop().await;
}
