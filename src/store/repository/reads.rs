//! Candle reads: the newest candle, a range for the history API and charts, the one-minute
//! rows the rolling day is seeded from, and the newest stored minute backfill starts after.
//!
//! In: a product, a granularity and a time range. Out: stored candles or minute rows.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::Row;

use super::Repository;
use super::rows::{StoredCandle, parsed, stored_candle};
use crate::model::{EXCHANGE, Granularity, ProductId};

/// The columns of a stored candle, as a literal so queries stay static strings.
macro_rules! select_candle {
    () => {
        r#"SELECT product_id, granularity::text AS granularity, "timestamp", open, high, low,
       close, volume, trade_count, buy_volume, revision, version, complete, backfilled,
       last_trade_time, last_update
FROM live_candles "#
    };
}

const LIVE_CANDLE: &str = concat!(
    select_candle!(),
    r#"WHERE exchange = $1 AND product_id = $2 AND granularity = $3::text::granularity
ORDER BY "timestamp" DESC LIMIT 1"#
);

const CANDLES_BETWEEN: &str = concat!(
    select_candle!(),
    r#"WHERE exchange = $1 AND product_id = $2 AND "timestamp" >= $3 AND "timestamp" < $4
ORDER BY granularity, "timestamp""#
);

const NEWEST_MINUTE: &str = r#"SELECT max("timestamp") FROM live_candles
WHERE exchange = $1 AND product_id = $2 AND granularity = 'ONE_MINUTE' AND "timestamp" < $3"#;

const CANDLES_IN_RANGE: &str = concat!(
    "SELECT * FROM (",
    select_candle!(),
    r#"WHERE exchange = $1 AND product_id = $2 AND granularity = $3::text::granularity
  AND "timestamp" >= $4 AND "timestamp" < $5
ORDER BY "timestamp" DESC LIMIT $6) newest ORDER BY "timestamp" ASC"#
);

/// Through the primary key, product by product (its first columns are exchange and product):
/// never a scan of the whole table and its history.
const MINUTES_SINCE: &str = r#"SELECT c.product_id, c."timestamp", c.open, c.close, c.volume, c.version
FROM UNNEST($3::text[]) AS p(product_id)
CROSS JOIN LATERAL (
    SELECT product_id, "timestamp", open, close, volume, version
    FROM live_candles
    WHERE exchange = $1 AND product_id = p.product_id AND granularity = 'ONE_MINUTE'
      AND "timestamp" > $2
) c"#;

/// Longest the server may spend on the day's seed query; it stops the query itself (a client
/// timeout alone would leave it running).
const SEED_STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '100s'";

/// What the rolling day needs of a stored one-minute candle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteRow {
    pub product_id: ProductId,
    pub start: DateTime<Utc>,
    pub open: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub version: Vec<u8>,
}

impl Repository {
    /// The newest candle of a product and granularity.
    pub async fn live_candle(
        &self,
        product_id: &ProductId,
        granularity: Granularity,
    ) -> Result<Option<StoredCandle>, sqlx::Error> {
        let row = sqlx::query(LIVE_CANDLE)
            .bind(EXCHANGE)
            .bind(product_id.as_str())
            .bind(granularity.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| stored_candle(&r)).transpose()
    }

    /// The newest `limit` candles of a product and granularity starting in `[from, to)`,
    /// oldest first (as a chart draws them).
    pub async fn candles(
        &self,
        product_id: &ProductId,
        granularity: Granularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StoredCandle>, sqlx::Error> {
        let rows = sqlx::query(CANDLES_IN_RANGE)
            .bind(EXCHANGE)
            .bind(product_id.as_str())
            .bind(granularity.as_str())
            .bind(from)
            .bind(to)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored_candle).collect()
    }

    /// Every stored candle of a product (all granularities) starting in `[from, to)`.
    pub async fn candles_between(
        &self,
        product_id: &ProductId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredCandle>, sqlx::Error> {
        let rows = sqlx::query(CANDLES_BETWEEN)
            .bind(EXCHANGE)
            .bind(product_id.as_str())
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored_candle).collect()
    }

    /// Calls `each` with every stored one-minute candle of `products` starting after
    /// `since`, as the rows arrive (a day of hundreds of products is not collected first).
    /// Returns the number of rows; a row that cannot be decoded is skipped and counted apart.
    pub async fn each_minute_since(
        &self,
        since: DateTime<Utc>,
        products: &[ProductId],
        mut each: impl FnMut(MinuteRow),
    ) -> Result<(u64, u64), sqlx::Error> {
        use futures_util::TryStreamExt as _;
        let mut tx = self.pool.begin().await?;
        sqlx::query(SEED_STATEMENT_TIMEOUT)
            .execute(&mut *tx)
            .await?;
        let mut rows = sqlx::query(MINUTES_SINCE)
            .bind(EXCHANGE)
            .bind(since)
            .bind(products.iter().map(ProductId::as_str).collect::<Vec<_>>())
            .fetch(&mut *tx);
        let (mut taken, mut bad) = (0u64, 0u64);
        while let Some(row) = rows.try_next().await? {
            let decoded = (|| {
                Ok::<_, sqlx::Error>(MinuteRow {
                    product_id: parsed(&row, "product_id")?,
                    start: row.try_get("timestamp")?,
                    open: row.try_get("open")?,
                    close: row.try_get("close")?,
                    volume: row.try_get("volume")?,
                    version: row.try_get("version")?,
                })
            })();
            match decoded {
                Ok(minute) => {
                    taken += 1;
                    each(minute);
                }
                Err(_) => bad += 1,
            }
        }
        drop(rows);
        tx.commit().await?;
        Ok((taken, bad))
    }

    /// The start of the newest stored one-minute candle of a product starting before
    /// `before`.
    pub async fn newest_minute(
        &self,
        product_id: &ProductId,
        before: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar(NEWEST_MINUTE)
            .bind(EXCHANGE)
            .bind(product_id.as_str())
            .bind(before)
            .fetch_one(&self.pool)
            .await
    }
}
