//! Backfill and reconciliation against the simulator (which serves Coinbase's REST candles
//! from the same trades it streams), with a real PostgreSQL and a real nats-server: history
//! on a fresh database, a restart after a gap, a sequence gap and a reconnect after more than
//! a minute, each filled from REST and compared candle by candle, every granularity, with an
//! aggregation of the simulator's trade log; and a deliberately wrong stored candle caught by
//! the REST cross-check, counted and repaired.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use common::{
    AppEnv, LoggedTrade, StoredRow, TestApp, TestDb, aggregate, read_trade_log, stored_rows, width,
};
use rust_decimal::Decimal;
use serde_json::Value;
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId};
use spot_canvas::store::Repository;
use spot_canvas_sim::faults::{FaultKind, FaultRequest, Scope};
use spot_canvas_sim::{SimConfig, Simulator};

mod history;
mod repair;

async fn sim(
    dir: &std::path::Path,
    products: &[&str],
    history_minutes: u32,
    trades_per_second: f64,
) -> Simulator {
    // Logs show with `--nocapture`.
    let _already = tracing_subscriber::fmt()
        .with_env_filter("info,spot_canvas_sim=warn")
        .with_test_writer()
        .try_init();
    Simulator::start(SimConfig {
        product_list: Some(products.iter().map(|p| (*p).to_owned()).collect()),
        trades_per_second,
        history_minutes,
        trade_log: Some(dir.join("trades.jsonl")),
        ..SimConfig::default()
    })
    .await
    .expect("sim")
}

/// The service on `db`, fed by `sim`, for `products`: REST paced generously, the periodic
/// REST cross-check off unless `extra` sets it; the feed's silence timeout is `silence`.
async fn start_app(
    sim: &Simulator,
    db: &TestDb,
    data_dir: &std::path::Path,
    products: &[&str],
    extra: &[(&str, &str)],
    silence: Duration,
) -> TestApp {
    let env = extra.iter().fold(
        AppEnv::for_sim(sim, data_dir)
            .database(db)
            .set("PRODUCTS", products.join(","))
            .set("REST_REQUESTS_PER_SECOND", "50")
            .set("CROSSCHECK_INTERVAL_SECS", "0"),
        |env, (name, value)| env.set(name, *value),
    );
    TestApp::start(&env, |s| s.silence_timeout = silence).await
}

/// `/health` of `app`, which must answer.
async fn health_of(app: &TestApp) -> Value {
    app.health().await.expect("/health answers").1
}

/// Polls `/health` of `app` until `done` holds; the last answer shows when it never does.
async fn wait_for(app: &TestApp, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) {
    let last = LastSeen(std::sync::Mutex::new(Value::Null));
    app.wait_for_health(what, timeout, |_, health| {
        let ok = done(health);
        *last.0.lock().expect("last health") = health.clone();
        ok
    })
    .await;
}

/// Stops `app`, which must stop cleanly.
async fn stop(app: TestApp) {
    app.stop().await.expect("app stops cleanly");
}

/// The last `/health` answer of a wait, printed if the wait fails.
struct LastSeen(std::sync::Mutex<Value>);

impl Drop for LastSeen {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let last = self.0.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("the last /health answer: {last:#}");
        }
    }
}

fn reconcile(h: &Value, field: &str) -> u64 {
    h["reconcile"][field].as_u64().unwrap_or(0)
}
