//! Storage on a real PostgreSQL (a throwaway cluster per test, a fresh database in it):
//! migrations, idempotent versioned upserts, exact extreme values, range queries, products,
//! and the batch writer.

use crate::common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{TestDb, wait_for};
use rust_decimal::Decimal;
use spot_canvas::model::{Candle, CandleUpdate, Granularity, Product, TradeId, Version};
use spot_canvas::store::{BatchWriter, Repository, WriterSettings, migrate_down, migration_status};
use tokio::sync::mpsc;

mod pools;
mod queries;
mod spool;
mod writer;

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("time")
}

const T0: i64 = 1_790_000_040; // a minute boundary

fn update(product: &str, start: i64, revision: u32, count: u64, close: &str) -> CandleUpdate {
    let close: Decimal = close.parse().expect("decimal");
    CandleUpdate {
        candle: Candle {
            product_id: product.parse().expect("an id"),
            granularity: Granularity::OneMinute,
            start: at(start),
            open: Decimal::ONE,
            high: close.max(Decimal::ONE),
            low: close.min(Decimal::ONE),
            close,
            volume: Decimal::from(count),
            buy_volume: Some(Decimal::ZERO),
            trade_count: Some(count),
        },
        complete: false,
        revision,
        counted_trades: count,
        last_trade_id: TradeId(count),
        last_trade_time: at(start + 1),
        last_received: at(start + 1),
    }
}

/// Rows of `live_candles` per product and their trade counts.
async fn counts(pool: &sqlx::PgPool) -> std::collections::BTreeMap<(String, i64), i64> {
    let rows: Vec<(String, DateTime<Utc>, i64)> =
        sqlx::query_as(r#"SELECT product_id, "timestamp", trade_count FROM live_candles"#)
            .fetch_all(pool)
            .await
            .expect("rows");
    rows.into_iter()
        .map(|(p, t, n)| ((p, t.timestamp()), n))
        .collect()
}
