//! The REST API on a real PostgreSQL: the products list (shard, ingested, live, exact
//! increments), the known-products directory, candle history paged through `next` over
//! `[start, end)` with exact decimals, and readiness following the database down and up again
//! in the whole service (fed by the simulator).

use crate::common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{AppEnv, TestApp, TestDb, get_json, product, timestamps, wait_for};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId};
use spot_canvas::store::Repository;
use spot_canvas::web::{AppState, ProductDirectory};
use spot_canvas_sim::{SimConfig, Simulator};

mod candles;
mod products;
mod readiness;

const T0: i64 = 1_790_000_040; // a minute boundary

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("time")
}

fn dec(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

/// A one-minute candle of `product` at `start` whose close is `close`.
fn candle(product: &str, start: i64, close: Decimal, volume: Decimal) -> CandleUpdate {
    CandleUpdate {
        candle: Candle {
            product_id: product.parse().expect("an id"),
            granularity: Granularity::OneMinute,
            start: at(start),
            open: close,
            high: close,
            low: close,
            close,
            volume,
            buy_volume: Some(volume),
            trade_count: Some(3),
        },
        complete: true,
        revision: 0,
        counted_trades: 3,
        last_trade_id: TradeId(3),
        last_trade_time: at(start + 1),
        last_received: at(start + 1),
    }
}

/// The API's state on `db` (its own API pool, as the service has), the rest idle.
fn api_state(db: &TestDb) -> AppState {
    AppState::idle(Repository::new(spot_canvas::store::api_pool(&db.pool)))
}
