//! Candle writes: one upsert statement for a batch, a row changed only by a higher version.
//!
//! In: candle updates (the writer's batches, backfill). Out: the number of rows that changed.

use std::collections::HashMap;

use rust_decimal::Decimal;

use super::Repository;
use crate::model::{CandleUpdate, EXCHANGE, Granularity};

const UPSERT_CANDLES: &str = r#"
INSERT INTO live_candles AS c (
    exchange, product_id, granularity, "timestamp", open, high, low, close, volume,
    trade_count, buy_volume, revision, version, complete, backfilled, last_trade_time, last_update
)
SELECT u.exchange, u.product_id, u.granularity::granularity, u.ts, u.open, u.high, u.low,
       u.close, u.volume, u.trade_count, u.buy_volume, u.revision, u.version, u.complete,
       u.backfilled, u.last_trade_time, now()
FROM UNNEST(
    $1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::numeric[], $6::numeric[],
    $7::numeric[], $8::numeric[], $9::numeric[], $10::int8[], $11::numeric[], $12::int4[],
    $13::bytea[], $14::bool[], $15::bool[], $16::timestamptz[]
) AS u(exchange, product_id, granularity, ts, open, high, low, close, volume, trade_count,
       buy_volume, revision, version, complete, backfilled, last_trade_time)
ON CONFLICT (exchange, product_id, granularity, "timestamp") DO UPDATE SET
    open = EXCLUDED.open,
    high = EXCLUDED.high,
    low = EXCLUDED.low,
    close = EXCLUDED.close,
    volume = EXCLUDED.volume,
    trade_count = EXCLUDED.trade_count,
    buy_volume = EXCLUDED.buy_volume,
    revision = EXCLUDED.revision,
    version = EXCLUDED.version,
    complete = EXCLUDED.complete,
    backfilled = EXCLUDED.backfilled,
    last_trade_time = EXCLUDED.last_trade_time,
    last_update = EXCLUDED.last_update
WHERE c.version < EXCLUDED.version
"#;

impl Repository {
    /// Upserts one candle; true when the row changed.
    pub async fn upsert_candle(&self, update: &CandleUpdate) -> Result<bool, sqlx::Error> {
        Ok(self.upsert_candles(std::slice::from_ref(update)).await? == 1)
    }

    /// Upserts a batch in one statement; returns the rows that changed. Several updates of one
    /// key in the batch are reduced to the highest version first (a statement may not touch a
    /// row twice).
    pub async fn upsert_candles(&self, updates: &[CandleUpdate]) -> Result<u64, sqlx::Error> {
        if updates.is_empty() {
            return Ok(0);
        }
        let mut newest: HashMap<(&str, Granularity, i64), &CandleUpdate> = HashMap::new();
        for u in updates {
            CandleUpdate::keep_newest(&mut newest, u.candle_key(), u);
        }
        // Rows in key order: concurrent writers (two instances in a rolling deploy) then lock
        // rows in the same order and cannot deadlock each other.
        let mut rows: Vec<(_, &CandleUpdate)> = newest.into_iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let rows: Vec<&CandleUpdate> = rows.into_iter().map(|(_, u)| u).collect();
        let n = rows.len();
        let mut exchange = Vec::with_capacity(n);
        let mut product = Vec::with_capacity(n);
        let mut granularity = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        let (mut open, mut high, mut low, mut close, mut volume) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut trade_count: Vec<Option<i64>> = Vec::with_capacity(n);
        let mut buy_volume: Vec<Option<Decimal>> = Vec::with_capacity(n);
        let mut revision = Vec::with_capacity(n);
        let mut version: Vec<Vec<u8>> = Vec::with_capacity(n);
        let mut complete = Vec::with_capacity(n);
        let mut backfilled = Vec::with_capacity(n);
        let mut last_trade_time = Vec::with_capacity(n);
        for u in rows {
            let c = &u.candle;
            exchange.push(EXCHANGE);
            product.push(c.product_id.as_str());
            granularity.push(c.granularity.as_str());
            ts.push(c.start);
            open.push(c.open);
            high.push(c.high);
            low.push(c.low);
            close.push(c.close);
            volume.push(c.volume);
            trade_count.push(c.trade_count.map(|n| i64::try_from(n).unwrap_or(i64::MAX)));
            buy_volume.push(c.buy_volume);
            revision.push(i32::try_from(u.revision).unwrap_or(i32::MAX));
            version.push(u.version().to_bytes().to_vec());
            complete.push(u.complete);
            // Candles without a trade count come (at least partly) from REST backfill; the
            // time of their last trade is unknown.
            backfilled.push(c.trade_count.is_none());
            last_trade_time.push(c.trade_count.map(|_| u.last_trade_time));
        }
        let result = sqlx::query(UPSERT_CANDLES)
            .bind(&exchange)
            .bind(&product)
            .bind(&granularity)
            .bind(&ts)
            .bind(&open)
            .bind(&high)
            .bind(&low)
            .bind(&close)
            .bind(&volume)
            .bind(&trade_count)
            .bind(&buy_volume)
            .bind(&revision)
            .bind(&version)
            .bind(&complete)
            .bind(&backfilled)
            .bind(&last_trade_time)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}
