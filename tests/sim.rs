//! The exchange simulator over real sockets: conformance with the production recording,
//! Coinbase's limits, every fault, and REST answers checked against its own trade log.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use spot_canvas::coinbase::rest::{parse_candles, parse_products};
use spot_canvas::coinbase::{FrameBody, parse_frame};
use spot_canvas::model::{Granularity, Product};
use spot_canvas_sim::faults::{FaultKind, FaultRequest, Scope, ScopeName, TradeDefect};
use spot_canvas_sim::{SimConfig, Simulator};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn start(config: SimConfig) -> Simulator {
    Simulator::start(config).await.expect("simulator starts")
}

fn quick(products: usize) -> SimConfig {
    SimConfig {
        products,
        trades_per_second: 20.0,
        history_minutes: 10,
        ..SimConfig::default()
    }
}

async fn connect(sim: &Simulator) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(sim.ws_url())
        .await
        .expect("connects");
    ws
}

async fn subscribe(ws: &mut Ws, channel: &str, products: &[&str]) {
    let message = if channel == "heartbeats" {
        json!({"type": "subscribe", "channel": channel})
    } else {
        json!({"type": "subscribe", "channel": channel, "product_ids": products})
    };
    ws.send(Message::Text(message.to_string().into()))
        .await
        .expect("sends");
}

/// The next message within `wait`, or `None` on timeout.
async fn next(ws: &mut Ws, wait: Duration) -> Option<Result<Message, String>> {
    match timeout(wait, ws.next()).await {
        Ok(Some(Ok(m))) => Some(Ok(m)),
        Ok(Some(Err(e))) => Some(Err(e.to_string())),
        Ok(None) => Some(Err("stream ended".into())),
        Err(_) => None,
    }
}

/// The next text frame as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    next_json_within(ws, Duration::from_secs(5)).await
}

/// The next text frame as JSON, within `wait`.
async fn next_json_within(ws: &mut Ws, wait: Duration) -> Value {
    loop {
        match next(ws, wait).await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("json"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Frames until the close frame (or end), returning the close code if one came.
async fn until_close(ws: &mut Ws, wait: Duration) -> (Vec<Value>, Option<u16>, bool) {
    let deadline = Instant::now() + wait;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(ws, left).await {
            Some(Ok(Message::Text(t))) => {
                frames.push(serde_json::from_str(&t).unwrap_or(Value::Null));
            }
            Some(Ok(Message::Close(frame))) => {
                return (frames, frame.map(|f| u16::from(f.code)), true);
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => return (frames, None, false),
            None => panic!("no close within {wait:?}; got {} frames", frames.len()),
        }
    }
}

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

fn frame_time(frame: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(frame["timestamp"].as_str().expect("timestamp"))
        .expect("time")
        .with_timezone(&Utc)
}

fn frame_kind(frame: &Value) -> String {
    let channel = frame["channel"].as_str().unwrap_or("?");
    let event = frame["events"][0]["type"].as_str().unwrap_or("-");
    format!("{channel}/{event}")
}

#[tokio::test]
async fn frames_have_the_shape_of_the_production_recording() {
    // Production shapes, per channel and event type.
    let recording = include_str!("fixtures/coinbase/production-market-data-2026-09-30.jsonl");
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
        serde_json::from_str(include_str!("fixtures/coinbase/example-ws-candles.json"))
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

fn fault(after_frames: u64, kind: FaultKind) -> FaultRequest {
    FaultRequest {
        scope: Scope::Named(ScopeName::All),
        after_frames,
        kind,
    }
}

async fn subscribed(sim: &Simulator) -> Ws {
    let mut ws = connect(sim).await;
    subscribe(&mut ws, "heartbeats", &[]).await;
    subscribe(&mut ws, "market_trades", &["BTC-USD"]).await;
    ws
}

#[tokio::test]
async fn close_faults_close_with_the_given_code_after_n_frames() {
    for code in [1000u16, 1001] {
        let sim = start(quick(1)).await;
        sim.arm(fault(5, FaultKind::Close { code }));
        let mut ws = subscribed(&sim).await;
        let (frames, got, closed) = until_close(&mut ws, Duration::from_secs(10)).await;
        assert!(closed);
        assert_eq!(got, Some(code));
        assert_eq!(frames.len(), 5, "closed after exactly 5 frames");
        sim.stop().await;
    }
}

#[tokio::test]
async fn drop_fault_ends_the_connection_without_a_close_frame() {
    let sim = start(quick(1)).await;
    sim.arm(fault(3, FaultKind::Drop));
    let mut ws = subscribed(&sim).await;
    let (frames, code, closed) = until_close(&mut ws, Duration::from_secs(10)).await;
    assert!(!closed, "no close frame (the client sees 1006)");
    assert_eq!(code, None);
    assert_eq!(frames.len(), 3);
    sim.stop().await;
}

#[tokio::test]
async fn stall_fault_stops_sending_while_the_socket_stays_open() {
    let sim = start(quick(1)).await;
    sim.arm(fault(3, FaultKind::Stall { secs: Some(3) }));
    let mut ws = subscribed(&sim).await;
    let mut seqs = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..3 {
        let frame = next_json(&mut ws).await;
        seqs.push(frame["sequence_num"].as_u64().expect("seq"));
        sent.push(frame_time(&frame));
    }
    // Heartbeats would come every second: nothing comes while stalled, then it resumes, and
    // the sequence numbers show the frames lost meanwhile.
    let resumed = next_json_within(&mut ws, Duration::from_secs(10)).await;
    let after = resumed["sequence_num"].as_u64().expect("seq");
    // Measured by the simulator's own send times: the stall began after the third frame was
    // built, so the next one was built at least the stall's length later.
    let silent = frame_time(&resumed) - sent[2];
    assert!(
        silent >= chrono::TimeDelta::seconds(3),
        "stalled only {silent}"
    );
    assert!(
        after > seqs[2] + 1,
        "a gap after the stall: {seqs:?} then {after}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn skip_sequence_fault_leaves_a_gap() {
    let sim = start(quick(1)).await;
    sim.arm(fault(4, FaultKind::SkipSequence { count: 7 }));
    let mut ws = subscribed(&sim).await;
    let mut seqs = Vec::new();
    for _ in 0..6 {
        seqs.push(
            next_json(&mut ws).await["sequence_num"]
                .as_u64()
                .expect("seq"),
        );
    }
    assert_eq!(&seqs[..4], &[0, 1, 2, 3]);
    assert_eq!(seqs[4], 11, "7 numbers skipped: {seqs:?}");
    assert_eq!(seqs[5], 12);
    sim.stop().await;
}

#[tokio::test]
async fn malformed_fault_sends_one_frame_the_parser_rejects() {
    let sim = start(quick(1)).await;
    sim.arm(fault(2, FaultKind::Malformed));
    let mut ws = subscribed(&sim).await;
    let mut bad = 0;
    for _ in 0..6 {
        match next(&mut ws, Duration::from_secs(5)).await {
            Some(Ok(Message::Text(t))) => {
                if parse_frame(t.as_bytes(), Utc::now()).is_err() {
                    bad += 1;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(bad, 1);
    sim.stop().await;
}

#[tokio::test]
async fn bad_heartbeat_fault_sends_one_refused_frame_that_takes_a_sequence_number() {
    let sim = start(quick(1)).await;
    sim.arm(fault(3, FaultKind::BadHeartbeat));
    let mut ws = subscribed(&sim).await;
    let mut seqs = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..6 {
        match next(&mut ws, Duration::from_secs(5)).await {
            Some(Ok(Message::Text(t))) => {
                let value: Value = serde_json::from_str(&t).expect("well-formed JSON");
                let seq = value["sequence_num"].as_u64().expect("sequenced");
                seqs.push(seq);
                if parse_frame(t.as_bytes(), Utc::now()).is_err() {
                    refused.push(seq);
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seqs, (0..6).collect::<Vec<u64>>(), "no number skipped");
    assert_eq!(refused.len(), 1, "{refused:?}");
    sim.stop().await;
}

#[tokio::test]
async fn oversized_fault_sends_one_frame_of_the_given_size() {
    let sim = start(quick(1)).await;
    sim.arm(fault(2, FaultKind::Oversized { bytes: 2 << 20 }));
    let mut ws = subscribed(&sim).await;
    let mut sizes = Vec::new();
    for _ in 0..4 {
        if let Some(Ok(Message::Text(t))) = next(&mut ws, Duration::from_secs(5)).await {
            sizes.push(t.len());
        }
    }
    assert_eq!(
        sizes.iter().filter(|&&s| s >= 2 << 20).count(),
        1,
        "{sizes:?}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn duplicate_fault_repeats_a_trades_update_with_the_same_ids() {
    let sim = start(quick(1)).await;
    sim.arm(fault(0, FaultKind::Duplicate));
    let mut ws = subscribed(&sim).await;
    let mut updates: Vec<Value> = Vec::new();
    while updates.len() < 2 {
        let frame = next_json(&mut ws).await;
        if frame_kind(&frame) == "market_trades/update" {
            updates.push(frame);
        }
    }
    assert_eq!(
        updates[0]["events"][0]["trades"], updates[1]["events"][0]["trades"],
        "the same trades twice"
    );
    assert_eq!(
        updates[1]["sequence_num"].as_u64(),
        updates[0]["sequence_num"].as_u64().map(|s| s + 1),
        "as a new frame"
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_fault_can_target_one_connection() {
    let sim = start(quick(1)).await;
    let mut first = subscribed(&sim).await;
    let mut second = subscribed(&sim).await;
    let _ = next_json(&mut first).await;
    let _ = next_json(&mut second).await;
    sim.arm(FaultRequest {
        scope: Scope::Connection(2),
        after_frames: 0,
        kind: FaultKind::Close { code: 1001 },
    });
    let (_, code, _) = until_close(&mut second, Duration::from_secs(5)).await;
    assert_eq!(code, Some(1001));
    // The first connection keeps receiving.
    for _ in 0..3 {
        let _ = next_json(&mut first).await;
    }
    sim.stop().await;
}

#[tokio::test]
async fn late_trades_carry_a_time_in_an_earlier_complete_minute() {
    let sim = start(quick(1)).await;
    let mut ws = subscribed(&sim).await;
    let client = reqwest::Client::new();
    let status = client
        .post(format!("http://{}/sim/late-trades", sim.addr))
        .json(&json!({"product_id": "BTC-USD", "count": 2}))
        .send()
        .await
        .expect("admin")
        .status();
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut late = 0;
    while Instant::now() < deadline && late < 2 {
        let frame = next_json(&mut ws).await;
        if frame_kind(&frame) != "market_trades/update" {
            continue;
        }
        let sent = DateTime::parse_from_rfc3339(frame["timestamp"].as_str().expect("ts"))
            .expect("time")
            .with_timezone(&Utc);
        let current_minute = sent.timestamp().div_euclid(60) * 60;
        for t in frame["events"][0]["trades"].as_array().expect("trades") {
            let time = DateTime::parse_from_rfc3339(t["time"].as_str().expect("t"))
                .expect("time")
                .with_timezone(&Utc);
            if time.timestamp() < current_minute - 60 {
                late += 1;
            }
        }
    }
    assert_eq!(late, 2, "two trades from an earlier, complete minute");
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

async fn get(url: String) -> (u16, bytes::Bytes) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body"))
}

#[tokio::test]
async fn products_list_parses_with_the_service_parser_and_has_entries_to_filter() {
    let sim = start(quick(3)).await;
    let (status, body) = get(format!("{}/market/products", sim.rest_url())).await;
    assert_eq!(status, 200);
    let list = parse_products(&body).expect("the service parses it");
    assert!(
        list.skipped.is_empty() && list.degraded.is_empty(),
        "{list:?}"
    );
    let products = list.products;
    let ingestible: BTreeSet<&str> = products
        .iter()
        .filter(|p| p.is_ingestible())
        .map(|p| p.product_id.as_str())
        .collect();
    assert_eq!(
        ingestible,
        BTreeSet::from(["BTC-USD", "ETH-USD", "SOL-USD"])
    );
    let find = |id: &str| -> &Product { products.iter().find(|p| p.product_id == id).expect(id) };
    assert_eq!(
        find("BTC-USDC").alias,
        Some(spot_canvas::model::ProductId::from_static("BTC-USD"))
    );
    assert_eq!(find("OLD-USD").status, "delisted");
    assert!(find("HALT-USD").trading_disabled);
    // The future's id is of another grammar: left out as not spot, not as malformed.
    assert!(products.iter().all(|p| p.product_id != "BIP-20DEC30-CDE"));
    assert_eq!(list.not_spot, 1);

    // A product added later appears; a delisted one stops being ingestible.
    let client = reqwest::Client::new();
    let added = client
        .post(format!("http://{}/sim/products", sim.addr))
        .json(&json!({"product_id": "NEW-USD", "price": 2.5}))
        .send()
        .await
        .expect("admin");
    assert_eq!(added.status(), 201);
    let delisted = client
        .put(format!("http://{}/sim/products/ETH-USD/listing", sim.addr))
        .json(&json!({"status": "delisted", "trading_disabled": true}))
        .send()
        .await
        .expect("admin");
    assert_eq!(delisted.status(), 204);
    let (_, body) = get(format!("{}/market/products", sim.rest_url())).await;
    let products = parse_products(&body).expect("parses").products;
    let ingestible: BTreeSet<&str> = products
        .iter()
        .filter(|p| p.is_ingestible())
        .map(|p| p.product_id.as_str())
        .collect();
    assert_eq!(
        ingestible,
        BTreeSet::from(["BTC-USD", "NEW-USD", "SOL-USD"])
    );
    sim.stop().await;
}

#[tokio::test]
async fn rest_candles_equal_an_aggregation_of_the_logged_trades() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("trades.jsonl");
    let sim = start(SimConfig {
        products: 2,
        trades_per_second: 3.0,
        history_minutes: 90,
        trade_log: Some(log_path.clone()),
        ..SimConfig::default()
    })
    .await;
    let now = Utc::now().timestamp();
    for (granularity, width) in [
        (Granularity::OneMinute, 60),
        (Granularity::FiveMinutes, 300),
        (Granularity::OneHour, 3600),
    ] {
        let end = now - now.rem_euclid(width);
        let start = (end - 90 * 60).max(end - 299 * width);
        let url = format!(
            "{}/market/products/ETH-USD/candles?start={start}&end={end}&granularity={}",
            sim.rest_url(),
            granularity.rest_name()
        );
        let (status, body) = get(url).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let candles = parse_candles(
            &body,
            &spot_canvas::model::ProductId::from_static("ETH-USD"),
            granularity,
        )
        .expect("parses");
        assert!(!candles.is_empty());
        assert!(
            candles.windows(2).all(|w| w[0].start > w[1].start),
            "newest first"
        );
        // The shared test aggregation (tests/common), written apart from the simulator's.
        let log = common::read_trade_log(&log_path);
        let eth: Vec<&common::LoggedTrade> =
            log.iter().filter(|t| t.product_id == "ETH-USD").collect();
        let expected: BTreeMap<i64, common::Ohlcv> = common::aggregate(&eth)
            .into_iter()
            .filter(|((_, g, _), _)| *g == granularity)
            .map(|((_, _, bucket), ohlcv)| (bucket, ohlcv))
            .collect();
        assert_eq!(common::width(granularity), width);
        let mut compared = 0;
        for c in &candles {
            let bucket = c.start.timestamp();
            assert!(bucket >= start && bucket < end);
            let e = expected
                .get(&bucket)
                .unwrap_or_else(|| panic!("no trades at {bucket}"));
            let got = common::Ohlcv {
                open: c.open,
                high: c.high,
                low: c.low,
                close: c.close,
                volume: c.volume,
                // REST candles carry no trade count.
                count: e.count,
            };
            assert_eq!(&got, e, "{granularity} bucket {bucket}");
            compared += 1;
        }
        let in_window = expected.range(start..end).count();
        // A bucket partly before the history's first trade has trades in both sources alike.
        assert_eq!(
            compared, in_window,
            "{granularity}: every bucket with trades"
        );
    }
    sim.stop().await;
}

#[tokio::test]
async fn rest_candles_refuse_windows_of_350_buckets_and_cap_answers_at_300() {
    let sim = start(SimConfig {
        products: 1,
        trades_per_second: 2.0,
        history_minutes: 400,
        ..SimConfig::default()
    })
    .await;
    let now = Utc::now().timestamp();
    let end = now - now.rem_euclid(60);
    let url = |start: i64, g: &str| {
        format!(
            "{}/market/products/BTC-USD/candles?start={start}&end={end}&granularity={g}",
            sim.rest_url()
        )
    };
    let (status, body) = get(url(end - 350 * 60, "ONE_MINUTE")).await;
    assert_eq!(status, 400);
    let err: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(err["error"], "INVALID_ARGUMENT");
    assert!(
        err["message"]
            .as_str()
            .expect("m")
            .contains("less than 350")
    );

    let (status, body) = get(url(end - 349 * 60, "ONE_MINUTE")).await;
    assert_eq!(status, 200);
    let candles = parse_candles(
        &body,
        &spot_canvas::model::ProductId::from_static("BTC-USD"),
        Granularity::OneMinute,
    )
    .expect("parses");
    assert_eq!(candles.len(), 300, "at most 300 per answer, the newest");
    assert_eq!(candles[0].start.timestamp(), end - 60);

    let (status, _) = get(url(end - 60, "FIVE_MINUTES")).await;
    assert_eq!(
        status, 400,
        "plural names are the service's, not Coinbase's"
    );
    for g in Granularity::ALL {
        let (status, _) = get(url(end - 10 * g.seconds(), g.rest_name())).await;
        assert_eq!(status, 200, "{}", g.rest_name());
    }
    sim.stop().await;
}

/// The next `market_trades` update frame.
async fn next_update(ws: &mut Ws) -> Value {
    loop {
        let frame = next_json(ws).await;
        if frame_kind(&frame) == "market_trades/update" {
            return frame;
        }
    }
}

async fn injected(sim: &Simulator) -> Vec<Value> {
    let (status, body) = get(format!("http://{}/sim/injected-trades", sim.addr)).await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).expect("json")
}

fn logged_ids(path: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .expect("log")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            v["trade_id"].as_str().expect("id").to_owned()
        })
        .collect()
}

#[tokio::test]
async fn bad_trade_faults_put_malformed_trades_among_good_ones_and_out_of_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = start(SimConfig {
        trade_log: Some(log.clone()),
        ..quick(1)
    })
    .await;
    let mut ws = subscribed(&sim).await;
    // Armed after the snapshot, so the faults land in an update frame.
    let _ = next_json(&mut ws).await;
    for defect in TradeDefect::ALL {
        sim.arm(fault(0, FaultKind::BadTrade { defect }));
    }
    let frame = next_update(&mut ws).await;
    let trades = frame["events"][0]["trades"].as_array().expect("trades");
    let injected = injected(&sim).await;
    assert_eq!(injected.len(), 6, "{injected:?}");
    let bad_ids: BTreeSet<&str> = injected
        .iter()
        .map(|t| t["trade_id"].as_str().expect("id"))
        .collect();
    let (bad, good): (Vec<&Value>, Vec<&Value>) = trades
        .iter()
        .partition(|t| bad_ids.contains(t["trade_id"].as_str().expect("id")));
    assert_eq!(bad.len(), 6);
    assert!(!good.is_empty(), "good trades beside the bad ones");
    let position = |t: &Value| trades.iter().position(|x| x == t).expect("in frame");
    assert!(
        bad.iter().all(|t| position(t) > 0) || good.len() == 1,
        "bad trades sit between good ones"
    );
    let faults: BTreeSet<&str> = injected
        .iter()
        .map(|t| t["fault"].as_str().expect("fault"))
        .collect();
    assert_eq!(faults.len(), 6, "{faults:?}");
    for t in &bad {
        let fault = injected
            .iter()
            .find(|i| i["trade_id"] == t["trade_id"])
            .expect("recorded")["fault"]
            .as_str()
            .expect("fault");
        match fault {
            "bad_trade:zero_price" => assert_eq!(t["price"], "0"),
            "bad_trade:negative_size" => {
                assert!(t["size"].as_str().expect("size").starts_with('-'));
            }
            "bad_trade:exponent" => assert_eq!(t["price"], "1e5"),
            "bad_trade:unknown_side" => assert_eq!(t["side"], "HOLD"),
            "bad_trade:non_numeric_id" => {
                assert!(t["trade_id"].as_str().expect("id").starts_with('x'));
            }
            "bad_trade:empty_price" => assert_eq!(t["price"], ""),
            other => panic!("unexpected fault {other}"),
        }
    }
    // The trade log holds the good trades of the frame and none of the bad.
    let ids = wait_for_log(&log, good.len()).await;
    for t in &good {
        assert!(ids.contains(t["trade_id"].as_str().expect("id")));
    }
    for id in &bad_ids {
        assert!(!ids.contains(*id), "injected trade {id} in the log");
    }
    sim.stop().await;
}

/// The trade log's ids once it holds at least `at_least` trades.
async fn wait_for_log(path: &std::path::Path, at_least: usize) -> BTreeSet<String> {
    common::eventually("the trade log", Duration::from_secs(10), || async {
        let ids = logged_ids(path);
        (ids.len() >= at_least).then_some(ids)
    })
    .await
}

#[tokio::test]
async fn absurd_and_future_trades_come_beside_normal_trades() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = start(SimConfig {
        trade_log: Some(log.clone()),
        ..quick(1)
    })
    .await;
    let mut ws = subscribed(&sim).await;
    let _ = next_json(&mut ws).await;
    sim.arm(fault(0, FaultKind::AbsurdSize { size: None }));
    sim.arm(fault(0, FaultKind::FutureTrade { time: None }));
    let frame = next_update(&mut ws).await;
    let trades = frame["events"][0]["trades"].as_array().expect("trades");
    let absurd: Vec<_> = trades
        .iter()
        .filter(|t| t["size"] == "79228162514264337593543950335")
        .collect();
    let future: Vec<_> = trades
        .iter()
        .filter(|t| t["time"] == "2100-01-01T00:00:00Z")
        .collect();
    assert_eq!((absurd.len(), future.len()), (1, 1), "{trades:?}");
    assert!(trades.len() >= 3, "normal trades beside them");
    // Both are well-formed: the service's parser takes the frame whole.
    let parsed = parse_frame(frame.to_string().as_bytes(), Utc::now()).expect("parses");
    let FrameBody::MarketTrades { trades: parsed, .. } = parsed.body else {
        panic!("trades frame");
    };
    assert_eq!(parsed.len(), trades.len());
    let injected = injected(&sim).await;
    assert_eq!(injected.len(), 2);
    let ids = wait_for_log(&log, trades.len() - 2).await;
    for t in injected {
        assert!(!ids.contains(t["trade_id"].as_str().expect("id")));
    }
    sim.stop().await;
}

#[tokio::test]
async fn a_refused_product_fails_its_subscribes_and_the_others_subscribe() {
    let sim = start(quick(2)).await;
    sim.arm(fault(
        0,
        FaultKind::RefuseSubscribe {
            product_id: "ETH-USD".into(),
        },
    ));
    let mut ws = connect(&sim).await;
    subscribe(&mut ws, "market_trades", &["BTC-USD", "ETH-USD"]).await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert!(
        err["message"]
            .as_str()
            .expect("message")
            .contains("ETH-USD"),
        "{err}"
    );
    assert!(err.get("sequence_num").is_none());
    subscribe(&mut ws, "market_trades", &["BTC-USD"]).await;
    let ack = loop {
        let frame = next_json(&mut ws).await;
        if frame["channel"] == "subscriptions" {
            break frame;
        }
    };
    assert_eq!(
        ack["events"][0]["subscriptions"],
        json!({"market_trades": ["BTC-USD"]})
    );
    assert_eq!(sim.state.stats.refused_subscribes.get(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn rewind_sequence_fault_sends_a_lower_number() {
    let sim = start(quick(1)).await;
    sim.arm(fault(4, FaultKind::RewindSequence { count: 3 }));
    let mut ws = subscribed(&sim).await;
    let mut seqs = Vec::new();
    for _ in 0..6 {
        seqs.push(
            next_json(&mut ws).await["sequence_num"]
                .as_u64()
                .expect("seq"),
        );
    }
    assert_eq!(seqs, vec![0, 1, 2, 3, 1, 2], "back by 3 after frame 4");
    sim.stop().await;
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

mod tokens {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    const KEY_NAME: &str = "organizations/o/apiKeys/k";

    fn key(byte: u8) -> p256::SecretKey {
        p256::SecretKey::from_slice(&[byte; 32]).expect("key")
    }

    fn public_pem(byte: u8) -> String {
        key(byte)
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem")
    }

    /// A token made here with jsonwebtoken directly, as Coinbase documents it.
    fn token(byte: u8, iss: &str, kid: &str, nbf: i64, exp: i64) -> String {
        let der = key(byte).to_pkcs8_der().expect("der");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        header.nonce = Some("00112233445566778899aabbccddeeff".into());
        let claims = json!({"iss": iss, "sub": KEY_NAME, "nbf": nbf, "exp": exp});
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(der.as_bytes()))
            .expect("signs")
    }

    async fn answer(sim: &Simulator, jwt: String) -> Value {
        let mut ws = connect(sim).await;
        let message = json!({"type": "subscribe", "channel": "heartbeats", "jwt": jwt});
        ws.send(Message::Text(message.to_string().into()))
            .await
            .expect("sends");
        next_json(&mut ws).await
    }

    #[tokio::test]
    async fn subscribe_tokens_are_verified_with_the_public_key() {
        let sim = start(SimConfig {
            jwt_public_key: Some(public_pem(0x42)),
            jwt_key_name: Some(KEY_NAME.into()),
            ..quick(1)
        })
        .await;
        let now = Utc::now().timestamp();
        let ok = answer(&sim, token(0x42, "cdp", KEY_NAME, now, now + 120)).await;
        assert_eq!(ok["channel"], "subscriptions", "{ok}");
        let failure = json!({"type": "error", "message": "authentication failure"});
        for (what, jwt) in [
            ("another key", token(0x43, "cdp", KEY_NAME, now, now + 120)),
            (
                "wrong issuer",
                token(0x42, "coinbase", KEY_NAME, now, now + 120),
            ),
            ("wrong kid", token(0x42, "cdp", "other", now, now + 120)),
            (
                "expired",
                token(0x42, "cdp", KEY_NAME, now - 300, now - 180),
            ),
            ("too long", token(0x42, "cdp", KEY_NAME, now, now + 3600)),
            (
                "not yet valid",
                token(0x42, "cdp", KEY_NAME, now + 60, now + 180),
            ),
            ("garbage", "not.a.token".to_owned()),
        ] {
            assert_eq!(answer(&sim, jwt).await, failure, "{what}");
        }
        assert_eq!(sim.state.stats.jwt_accepted.get(), 1);
        assert_eq!(sim.state.stats.jwt_rejected.get(), 7);
        sim.stop().await;
    }

    #[tokio::test]
    async fn ed25519_tokens_are_verified_too() {
        use base64::Engine as _;
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let public =
            base64::engine::general_purpose::STANDARD.encode(signing.verifying_key().as_bytes());
        let sim = start(SimConfig {
            jwt_public_key: Some(public),
            jwt_key_name: Some(KEY_NAME.into()),
            ..quick(1)
        })
        .await;
        let der = signing.to_pkcs8_der().expect("der");
        let sign = |key: &EncodingKey| {
            let now = Utc::now().timestamp();
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(KEY_NAME.into());
            header.nonce = Some("0123456789abcdef".into());
            let claims = json!({"iss": "cdp", "sub": KEY_NAME, "nbf": now, "exp": now + 120});
            jsonwebtoken::encode(&header, &claims, key).expect("signs")
        };
        let ok = answer(&sim, sign(&EncodingKey::from_ed_der(der.as_bytes()))).await;
        assert_eq!(ok["channel"], "subscriptions", "{ok}");
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32])
            .to_pkcs8_der()
            .expect("der");
        let refused = answer(&sim, sign(&EncodingKey::from_ed_der(other.as_bytes()))).await;
        assert_eq!(refused["type"], "error", "{refused}");
        // An ES256 token is refused by an Ed25519 key whatever its signature.
        let now = Utc::now().timestamp();
        let es = answer(&sim, token(0x42, "cdp", KEY_NAME, now, now + 120)).await;
        assert_eq!(es["type"], "error", "{es}");
        assert_eq!(sim.state.stats.jwt_accepted.get(), 1);
        sim.stop().await;
    }
}

// ---- Faults of the trust boundary: the products list and trades of unlisted products ----

use spot_canvas_sim::products_faults::{CONTROL_PRODUCT, CONTROL_TEXT, OddId, ProductsFault};

/// The products list as served, as JSON.
async fn products_json(sim: &Simulator) -> Value {
    let (status, body) = get(format!(
        "{}/market/products?product_type=SPOT",
        sim.rest_url()
    ))
    .await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).expect("a JSON list")
}

/// The ids of a products list, in order.
fn listed_ids(list: &Value) -> Vec<String> {
    list["products"]
        .as_array()
        .expect("products")
        .iter()
        .map(|p| p["product_id"].as_str().expect("id").to_owned())
        .collect()
}

async fn arm_products_fault(sim: &Simulator, fault: Value) {
    let answer = reqwest::Client::new()
        .post(format!("http://{}/sim/products-faults", sim.addr))
        .json(&fault)
        .send()
        .await
        .expect("admin");
    assert_eq!(answer.status(), 201, "{fault}");
}

async fn clear_products_faults(sim: &Simulator) {
    let answer = reqwest::Client::new()
        .delete(format!("http://{}/sim/products-faults", sim.addr))
        .send()
        .await
        .expect("admin");
    assert_eq!(answer.status(), 204);
}

/// Resident memory of this test process (the simulator runs in it), in bytes.
fn own_rss() -> u64 {
    common::footprint::rss_of(std::process::id()).expect("/proc/self/status")
}

#[tokio::test]
async fn products_faults_list_odd_ids_a_duplicate_and_control_characters_until_cleared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = start(SimConfig {
        trade_log: Some(log.clone()),
        ..quick(2)
    })
    .await;
    let normal = products_json(&sim).await;
    let normal_ids = listed_ids(&normal);

    arm_products_fault(&sim, json!({"kind": "odd_ids"})).await;
    arm_products_fault(&sim, json!({"kind": "duplicate", "product_id": "ETH-USD"})).await;
    arm_products_fault(&sim, json!({"kind": "control_chars"})).await;
    let armed: Value = serde_json::from_slice(
        &get(format!("http://{}/sim/products-faults", sim.addr))
            .await
            .1,
    )
    .expect("json");
    assert_eq!(armed.as_array().map(Vec::len), Some(3), "{armed}");

    let list = products_json(&sim).await;
    let ids = listed_ids(&list);
    // The normal list comes first, whole; then the extras.
    assert_eq!(ids[..normal_ids.len()], normal_ids[..]);
    for odd in OddId::ALL {
        assert!(ids.contains(&odd.id()), "{odd:?} listed");
    }
    let long = ids.iter().find(|id| id.len() > 8000).expect("a long id");
    assert!(long.ends_with("-USD"));
    for needle in [
        "\0",
        "/../",
        "#",
        "?",
        " ",
        "TWO-DASH-USD",
        "lower-usd",
        "\u{421}",
    ] {
        assert!(
            ids.iter().any(|id| id.contains(needle)),
            "an id holding {needle:?}"
        );
    }
    assert!(ids.contains(&"-USD".to_owned()) && ids.contains(&"EMPTYQ-".to_owned()));
    assert_eq!(
        ids.iter().filter(|id| *id == "ETH-USD").count(),
        2,
        "listed twice"
    );
    let products = list["products"].as_array().expect("products");
    let ctrl = products
        .iter()
        .find(|p| p["product_id"] == CONTROL_PRODUCT)
        .expect("the control characters product");
    for field in [
        "base_name",
        "quote_name",
        "display_name",
        "base_display_symbol",
    ] {
        let text = ctrl[field].as_str().expect(field);
        assert_eq!(text, CONTROL_TEXT);
        for c in ['\r', '\n', '\u{1}', '\u{7f}'] {
            assert!(text.contains(c), "{field} holds {c:?}");
        }
    }
    // The extras are online spot products, as a service would ingest them.
    for p in products
        .iter()
        .filter(|p| !normal_ids.contains(&p["product_id"].as_str().unwrap_or_default().to_owned()))
    {
        assert_eq!(
            (p["status"].as_str(), p["product_type"].as_str()),
            (Some("online"), Some("SPOT"))
        );
    }
    // Into a normal product's fields, and into the currency ids, on request.
    arm_products_fault(
        &sim,
        json!({"kind": "control_chars", "product_id": "BTC-USD", "currency_ids": true}),
    )
    .await;
    let list = products_json(&sim).await;
    let btc = &list["products"][0];
    assert_eq!(btc["product_id"], "BTC-USD");
    assert_eq!(btc["base_name"], CONTROL_TEXT);
    assert!(
        btc["base_currency_id"]
            .as_str()
            .expect("currency")
            .contains('\r')
    );

    // Listed, never traded: no REST candles; a subscribe naming one is taken, and no trade of
    // it ever comes; the trade log holds only the normal markets.
    let now = Utc::now().timestamp();
    let (status, _) = get(format!(
        "{}/market/products/lower-usd/candles?start={}&end={now}&granularity=ONE_MINUTE",
        sim.rest_url(),
        now - 3600
    ))
    .await;
    assert_eq!(status, 404);
    let mut ws = connect(&sim).await;
    subscribe(
        &mut ws,
        "market_trades",
        &["BTC-USD", "lower-usd", CONTROL_PRODUCT],
    )
    .await;
    let mut acked = false;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let Some(Ok(Message::Text(text))) = next(&mut ws, Duration::from_millis(500)).await else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text).expect("json");
        assert_ne!(frame["type"], "error", "{frame}");
        acked |= frame["channel"] == "subscriptions";
        for event in frame["events"].as_array().into_iter().flatten() {
            for trade in event["trades"].as_array().into_iter().flatten() {
                assert_eq!(trade["product_id"], "BTC-USD", "{trade}");
            }
        }
    }
    assert!(acked, "the subscribe naming listed extras is taken");
    let logged: BTreeSet<String> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["product_id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    assert_eq!(
        logged,
        BTreeSet::from(["BTC-USD".to_owned(), "ETH-USD".to_owned()])
    );

    // Cleared: the normal list again.
    clear_products_faults(&sim).await;
    assert_eq!(listed_ids(&products_json(&sim).await), normal_ids);
    sim.stop().await;
}

#[tokio::test]
async fn a_products_fault_given_at_start_is_armed() {
    let fault: ProductsFault =
        serde_json::from_str(r#"{"kind":"odd_ids","ids":["nul","dot_dot"]}"#).expect("parses");
    let sim = start(SimConfig {
        products_faults: vec![fault],
        ..quick(1)
    })
    .await;
    let ids = listed_ids(&products_json(&sim).await);
    assert!(ids.contains(&OddId::Nul.id()) && ids.contains(&OddId::DotDot.id()));
    assert!(!ids.contains(&OddId::Lower.id()));
    sim.stop().await;
}

#[tokio::test]
async fn huge_products_list_streams_gigabytes_with_bounded_simulator_memory() {
    let sim = start(quick(2)).await;
    // A small one is a whole, valid list of the given size.
    arm_products_fault(&sim, json!({"kind": "huge", "bytes": 1_000_000})).await;
    let small = products_json(&sim).await;
    assert!(listed_ids(&small).len() > 500);
    clear_products_faults(&sim).await;

    arm_products_fault(&sim, json!({"kind": "huge"})).await;
    let before = own_rss();
    let mut response = reqwest::get(format!("{}/market/products", sim.rest_url()))
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    assert!(response.content_length().is_none(), "streamed, no length");
    let mut read = Vec::new();
    while read.len() < 8 << 20 {
        let chunk = response
            .chunk()
            .await
            .expect("reads")
            .expect("more to come");
        read.extend_from_slice(&chunk);
    }
    assert!(read.starts_with(br#"{"products":[{"#));
    let head = String::from_utf8_lossy(&read[..4096]);
    assert!(head.contains(r#""product_id":"HUGE-USD""#), "{head}");
    let grown = own_rss().saturating_sub(before);
    println!(
        "huge products list: read {} MiB, the process grew {} MiB",
        read.len() >> 20,
        grown >> 20
    );
    assert!(
        grown < 64 << 20,
        "the simulator holds the list whole? grew {grown} bytes"
    );
    drop(response);

    // Announced in the header, on request: 2 GiB or a little more.
    clear_products_faults(&sim).await;
    arm_products_fault(&sim, json!({"kind": "huge", "content_length": true})).await;
    let response = reqwest::get(format!("{}/market/products", sim.rest_url()))
        .await
        .expect("answers");
    let length = response.content_length().expect("a length");
    assert!(
        (2u64 << 30..(2u64 << 30) + (1 << 20)).contains(&length),
        "{length}"
    );
    drop(response);
    sim.stop().await;
}

#[tokio::test]
async fn endless_products_list_never_ends_and_does_not_hold_up_the_stop() {
    let sim = start(quick(1)).await;
    arm_products_fault(&sim, json!({"kind": "endless", "interval_ms": 20})).await;
    let mut response = reqwest::get(format!("{}/market/products", sim.rest_url()))
        .await
        .expect("answers");
    let mut read = Vec::new();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let chunk = timeout(Duration::from_secs(1), response.chunk())
            .await
            .expect("a product every 20 ms")
            .expect("reads")
            .expect("never ends");
        read.extend_from_slice(&chunk);
    }
    assert!(read.starts_with(br#"{"products":["#));
    let products = read.windows(12).filter(|w| w == br#""product_id""#).count();
    assert!(
        (10..=60).contains(&products),
        "{products} products in a second"
    );
    // The simulator stops although a client still reads the list.
    timeout(Duration::from_secs(5), sim.stop())
        .await
        .expect("stops");
    drop(response);
}

#[tokio::test]
async fn unlisted_trade_faults_send_trades_of_products_never_listed_nor_subscribed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = start(SimConfig {
        trade_log: Some(log.clone()),
        ..quick(1)
    })
    .await;
    let mut ws = subscribed(&sim).await;
    let _ = next_json(&mut ws).await;
    let odd = OddId::Nul.id();
    sim.arm(fault(0, FaultKind::UnlistedTrade { product_id: None }));
    sim.arm(fault(
        0,
        FaultKind::UnlistedTrade {
            product_id: Some(odd.clone()),
        },
    ));
    let frame = next_update(&mut ws).await;
    assert_eq!(frame["channel"], "market_trades");
    let trades = frame["events"][0]["trades"].as_array().expect("trades");
    let products: Vec<&str> = trades
        .iter()
        .map(|t| t["product_id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        products.iter().filter(|p| **p == "GHOST-USD").count(),
        1,
        "{products:?}"
    );
    assert_eq!(products.iter().filter(|p| **p == odd).count(), 1);
    assert!(
        products.iter().filter(|p| **p == "BTC-USD").count() >= 1,
        "beside normal trades"
    );
    let listed = listed_ids(&products_json(&sim).await);
    assert!(!listed.contains(&"GHOST-USD".to_owned()) && !listed.contains(&odd));
    let injected = injected(&sim).await;
    assert_eq!(injected.len(), 2);
    assert!(injected.iter().all(|t| t["fault"] == "unlisted_trade"));
    let ids = wait_for_log(&log, trades.len() - 2).await;
    for t in &injected {
        assert!(!ids.contains(t["trade_id"].as_str().expect("id")));
    }
    let logged: BTreeSet<String> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["product_id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    assert_eq!(logged, BTreeSet::from(["BTC-USD".to_owned()]));
    sim.stop().await;
}
