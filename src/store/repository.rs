//! Queries on `live_candles` and `trading_pairs`.
//!
//! In: candle updates and products. Out: rows. Every candle write is an upsert that changes a
//! row only when the incoming version is higher, so replays, retries, out-of-order batches and
//! two producers of the same key (a rolling deploy) all converge on the newest candle.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};

use crate::model::{Candle, CandleUpdate, Currency, EXCHANGE, Granularity, Product, ProductId};

/// What [`Repository::upsert_products`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductsWritten {
    /// Rows inserted or updated.
    pub changed: u64,
    /// Listings merged into another of the same product id (the last one is stored).
    pub merged: usize,
    /// Ids of the products the server refused for their content (left out).
    pub refused: Vec<ProductId>,
}

/// A candle as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCandle {
    pub candle: Candle,
    pub revision: u32,
    pub complete: bool,
    pub backfilled: bool,
    /// [`crate::model::Version::to_bytes`] of the stored update.
    pub version: Vec<u8>,
    pub last_trade_time: Option<DateTime<Utc>>,
    pub last_update: DateTime<Utc>,
}

/// Access to the candle and product tables.
#[derive(Debug, Clone)]
pub struct Repository {
    pool: PgPool,
}

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
    pub fn new(pool: PgPool) -> Self {
        Repository { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

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

    /// Inserts or updates products (trading pairs), keeping them in step with the feed. A
    /// product listed twice is written once, as listed last; a product the server refuses for
    /// its content (an id too long for the index, a NUL byte) is left out, logged escaped and
    /// counted (`spot_canvas_store_products_refused_total`), and the rest are written.
    pub async fn upsert_products(
        &self,
        products: &[Product],
    ) -> Result<ProductsWritten, sqlx::Error> {
        // The last listing of an id wins, in the order of the ids' first listing.
        let mut position: HashMap<&str, usize> = HashMap::new();
        let mut distinct: Vec<&Product> = Vec::with_capacity(products.len());
        for product in products {
            match position.get(product.product_id.as_str()) {
                Some(&at) => distinct[at] = product,
                None => {
                    position.insert(product.product_id.as_str(), distinct.len());
                    distinct.push(product);
                }
            }
        }
        let mut written = ProductsWritten {
            merged: products.len() - distinct.len(),
            ..ProductsWritten::default()
        };
        if written.merged > 0 {
            tracing::warn!(
                merged = written.merged,
                "the products list names some products more than once; the last listing of each is stored"
            );
        }
        let changed = std::sync::atomic::AtomicU64::new(0);
        let refused = super::refusal::write_splitting(distinct.len(), |range| {
            let (rows, changed) = (&distinct[range], &changed);
            async move {
                let n = self.upsert_product_rows(rows).await?;
                changed.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;
        written.changed = changed.into_inner();
        if !refused.is_empty() {
            metrics::counter!("spot_canvas_store_products_refused_total")
                .increment(refused.len() as u64);
            for (index, error) in refused.iter().take(5) {
                let why = super::refusal::refusal(error);
                tracing::error!(
                    product = %super::refusal::escaped(&distinct[*index].product_id, 64),
                    code = why.code.as_deref().unwrap_or(""),
                    error = %why.message,
                    "PostgreSQL refused a product for its content; it is left out, the rest written"
                );
            }
            if refused.len() > 5 {
                tracing::error!(
                    refused = refused.len(),
                    "products refused by PostgreSQL in this update, in all"
                );
            }
        }
        written.refused = refused
            .iter()
            .map(|(index, _)| distinct[*index].product_id.clone())
            .collect();
        Ok(written)
    }

    /// One upsert statement of distinct products; the rows it changed.
    async fn upsert_product_rows(&self, products: &[&Product]) -> Result<u64, sqlx::Error> {
        if products.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = products.iter().map(|p| p.product_id.as_str()).collect();
        let bases: Vec<&str> = products.iter().map(|p| p.base.as_str()).collect();
        let quotes: Vec<&str> = products.iter().map(|p| p.quote.as_str()).collect();
        let statuses: Vec<&str> = products.iter().map(|p| p.status.as_str()).collect();
        let types: Vec<&str> = products.iter().map(|p| p.product_type.as_str()).collect();
        let disabled: Vec<bool> = products.iter().map(|p| p.trading_disabled).collect();
        let min: Vec<Option<Decimal>> = products.iter().map(|p| p.base_min_size).collect();
        let max: Vec<Option<Decimal>> = products.iter().map(|p| p.base_max_size).collect();
        let inc: Vec<Option<Decimal>> = products.iter().map(|p| p.base_increment).collect();
        let price_inc: Vec<Option<Decimal>> = products.iter().map(|p| p.price_increment).collect();
        let result = sqlx::query(
            r#"
INSERT INTO trading_pairs (exchange, product_id, base, quote, status, product_type,
    trading_disabled, base_min_size, base_max_size, base_increment, price_increment)
SELECT $1, u.* FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::bool[], $8::numeric[], $9::numeric[], $10::numeric[], $11::numeric[]) AS u
ON CONFLICT (exchange, product_id) DO UPDATE SET
    base = EXCLUDED.base, quote = EXCLUDED.quote, status = EXCLUDED.status,
    product_type = EXCLUDED.product_type, trading_disabled = EXCLUDED.trading_disabled,
    base_min_size = EXCLUDED.base_min_size, base_max_size = EXCLUDED.base_max_size,
    base_increment = EXCLUDED.base_increment, price_increment = EXCLUDED.price_increment,
    updated_at = now()
"#,
        )
        .bind(EXCHANGE)
        .bind(&ids)
        .bind(&bases)
        .bind(&quotes)
        .bind(&statuses)
        .bind(&types)
        .bind(&disabled)
        .bind(&min)
        .bind(&max)
        .bind(&inc)
        .bind(&price_inc)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// The ids of all stored products, by id. A stored id that is not a product id (a row
    /// from before ids were checked) is left out and logged.
    pub async fn product_ids(&self) -> Result<Vec<ProductId>, sqlx::Error> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT product_id FROM trading_pairs WHERE exchange = $1 ORDER BY product_id",
        )
        .bind(EXCHANGE)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids
            .iter()
            .filter_map(|id| match ProductId::parse(id) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!(error = %e, "leaving out a stored product");
                    None
                }
            })
            .collect())
    }

    /// Whether the database answers (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .map(|_one| ())
    }

    /// All stored products, by id.
    pub async fn products(&self) -> Result<Vec<Product>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT product_id, base, quote, status, product_type, trading_disabled, \
             base_min_size, base_max_size, base_increment, price_increment \
             FROM trading_pairs WHERE exchange = $1 ORDER BY product_id",
        )
        .bind(EXCHANGE)
        .fetch_all(&self.pool)
        .await?;
        let mut products = Vec::with_capacity(rows.len());
        for r in &rows {
            // A stored row whose id or codes do not parse (written before they were checked)
            // costs only itself.
            let (product_id, base, quote) = match (
                parsed::<ProductId>(r, "product_id"),
                parsed::<Currency>(r, "base"),
                parsed::<Currency>(r, "quote"),
            ) {
                (Ok(id), Ok(base), Ok(quote)) => (id, base, quote),
                (id, base, quote) => {
                    let error = [id.err(), base.err(), quote.err()]
                        .into_iter()
                        .flatten()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::warn!(%error, "leaving out a stored product");
                    continue;
                }
            };
            products.push(Product {
                product_id,
                base,
                quote,
                status: r.try_get("status")?,
                product_type: r.try_get("product_type")?,
                trading_disabled: r.try_get("trading_disabled")?,
                base_min_size: r.try_get("base_min_size")?,
                base_max_size: r.try_get("base_max_size")?,
                base_increment: r.try_get("base_increment")?,
                price_increment: r.try_get("price_increment")?,
                alias: None,
                alias_to: Vec::new(),
            });
        }
        Ok(products)
    }
}

/// A text column parsed into one of the model's checked types; a value that does not parse
/// is a decode error (named, escaped).
fn parsed<T>(r: &sqlx::postgres::PgRow, column: &str) -> Result<T, sqlx::Error>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = r.try_get(column)?;
    text.parse::<T>().map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    })
}

fn stored_candle(r: &sqlx::postgres::PgRow) -> Result<StoredCandle, sqlx::Error> {
    let granularity: String = r.try_get("granularity")?;
    let granularity = granularity
        .parse::<Granularity>()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let trade_count: Option<i64> = r.try_get("trade_count")?;
    let revision: i32 = r.try_get("revision")?;
    Ok(StoredCandle {
        candle: Candle {
            product_id: parsed(r, "product_id")?,
            granularity,
            start: r.try_get("timestamp")?,
            open: r.try_get("open")?,
            high: r.try_get("high")?,
            low: r.try_get("low")?,
            close: r.try_get("close")?,
            volume: r.try_get("volume")?,
            buy_volume: r.try_get("buy_volume")?,
            trade_count: trade_count.map(|n| n.max(0) as u64),
        },
        revision: revision.max(0) as u32,
        complete: r.try_get("complete")?,
        backfilled: r.try_get("backfilled")?,
        version: r.try_get("version")?,
        last_trade_time: r.try_get("last_trade_time")?,
        last_update: r.try_get("last_update")?,
    })
}
