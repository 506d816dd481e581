//! The whole pipeline into a real PostgreSQL, fed by the simulator: the database stops
//! abruptly and comes back while trades flow; the service is stopped with SIGTERM while
//! updates are in flight, and while PostgreSQL is away (the writer's spool keeps what it holds
//! and the next start writes it: every candle a `/stream` client saw is then in the table).
//! Afterwards the table equals an aggregation of the simulator's trade log.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{AppEnv, Service, TestDb, read_trade_log};
use spot_canvas::candles::{Engine, EngineSettings};
use spot_canvas::feed::{Feed, FeedSettings};
use spot_canvas::model::FeedEvent;
use spot_canvas::model::{CandleUpdate, SystemClock};
use spot_canvas::store::{BatchWriter, Repository, WriterSettings};
use spot_canvas_sim::{SimConfig, Simulator};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod crash;
mod stop;

async fn sim_with_log(dir: &std::path::Path, products: usize, tps: f64) -> Simulator {
    Simulator::start(SimConfig {
        products,
        trades_per_second: tps,
        history_minutes: 3,
        trade_log: Some(dir.join("trades.jsonl")),
        ..SimConfig::default()
    })
    .await
    .expect("sim")
}
