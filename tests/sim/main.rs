//! The exchange simulator over real sockets: conformance with the production recording,
//! Coinbase's limits, every fault, and REST answers checked against its own trade log.

#[path = "../common/mod.rs"]
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
use spot_canvas_sim::products_faults::{CONTROL_PRODUCT, CONTROL_TEXT, OddId, ProductsFault};
use spot_canvas_sim::{SimConfig, Simulator};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod faults;
mod products_faults;
mod protocol;
mod rest;
mod tokens;
mod trades;

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

fn frame_kind(frame: &Value) -> String {
    let channel = frame["channel"].as_str().unwrap_or("?");
    let event = frame["events"][0]["type"].as_str().unwrap_or("-");
    format!("{channel}/{event}")
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

async fn get(url: String) -> (u16, bytes::Bytes) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body"))
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

/// The trade log's ids once it holds at least `at_least` trades.
async fn wait_for_log(path: &std::path::Path, at_least: usize) -> BTreeSet<String> {
    common::eventually("the trade log", Duration::from_secs(10), || async {
        let ids = logged_ids(path);
        (ids.len() >= at_least).then_some(ids)
    })
    .await
}
