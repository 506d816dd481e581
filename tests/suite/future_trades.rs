//! A trade stamped far in the future, slipped by the simulator into frames beside normal
//! trades, reaches no part of the whole service: no stored row, no KV entry and no live-state
//! candle starts after the current bucket, while the normal trades keep flowing.

use crate::common;

use std::time::Duration;

use chrono::Utc;
use common::{AppEnv, TestApp, TestDb};
use futures_util::StreamExt;
use serde_json::Value;
use spot_canvas::bus::EmbeddedNats;
use spot_canvas::model::Granularity;
use spot_canvas_sim::faults::{FaultKind, FaultRequest, Scope, ScopeName};
use spot_canvas_sim::{SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_trade_from_the_future_reaches_no_store_kv_or_live_candle() {
    let sim = Simulator::start(SimConfig {
        products: 2,
        trades_per_second: 5.0,
        history_minutes: 3,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    for after_frames in [3, 8, 13] {
        sim.arm(FaultRequest {
            scope: Scope::Named(ScopeName::All),
            after_frames,
            kind: FaultKind::FutureTrade { time: None },
        });
    }
    let db = TestDb::new().await;
    let nats_dir = tempfile::tempdir().expect("tempdir");
    let nats = EmbeddedNats::start(None, nats_dir.path())
        .await
        .expect("nats-server starts");
    let data = common::data_dir();
    let env = AppEnv::for_sim(&sim, data.path())
        .database(&db)
        .set("NATS_URL", nats.client_url());
    let app = TestApp::start(&env, |_| {}).await;

    // Every injected future trade was rejected, and normal trades still make candles.
    let health = app
        .wait_for_health("the future trades rejected", WAIT, |status, h| {
            status == 200 && h["engine"]["rejected_future"].as_u64() >= Some(3)
        })
        .await;
    let trades_then = health["engine"]["trades"].as_u64().unwrap_or(0);
    app.wait_for_health("normal trades after them", WAIT, |_, h| {
        h["engine"]["trades"].as_u64() > Some(trades_then)
            && h["store"]["writer"]["pending"].as_u64() == Some(0)
            && h["store"]["writer"]["written_rows"].as_u64() > Some(0)
    })
    .await;
    let injected = sim.state.injected.all();
    assert!(
        injected
            .iter()
            .filter(|t| t.fault == "future_trade")
            .count()
            >= 3,
        "{injected:?}"
    );
    // The newest bucket a real trade can be in: now, plus the engine's 5 s of tolerance.
    let limit = Utc::now() + chrono::TimeDelta::seconds(60);

    // The store.
    let stored = common::stored_rows(&db.pool).await;
    assert!(!stored.is_empty(), "candles were stored");
    for key in stored.keys() {
        assert!(
            key.2 <= limit.timestamp(),
            "a stored row in the future: {key:?}"
        );
    }

    // The KV.
    let client = spot_canvas::bus::connect_plain(&nats.client_url())
        .await
        .expect("connects");
    let kv = async_nats::jetstream::new(client)
        .get_key_value("live-candles")
        .await
        .expect("the bucket");
    let keys: Vec<String> = kv
        .keys()
        .await
        .expect("keys")
        .filter_map(|k| async move { k.ok() })
        .collect()
        .await;
    assert!(!keys.is_empty(), "the KV holds candles");
    for key in keys {
        let value = kv.get(&key).await.expect("get").expect("a value");
        let candle: Value = serde_json::from_slice(&value).expect("json");
        let start = candle["timestamp"].as_i64().expect("timestamp");
        assert!(
            start <= limit.timestamp(),
            "a KV candle in the future: {candle}"
        );
    }

    // The live state, for every product and granularity.
    let products: std::collections::BTreeSet<spot_canvas::model::ProductId> = stored
        .keys()
        .map(|key| key.0.parse().expect("a stored id"))
        .collect();
    let mut live = 0;
    for product in &products {
        for g in Granularity::ALL {
            if let Some(update) = app.state.live.current(product, g) {
                live += 1;
                assert!(
                    update.candle.start <= limit,
                    "a live candle in the future: {update:?}"
                );
            }
        }
    }
    assert!(live > 0, "the live state holds candles");

    app.stop().await.expect("stops cleanly");
    nats.stop().await;
    sim.stop().await;
}
