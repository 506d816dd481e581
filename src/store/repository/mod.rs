//! Queries on `live_candles` and `trading_pairs`.
//!
//! In: candle updates and products. Out: rows. Every candle write is an upsert that changes a
//! row only when the incoming version is higher, so replays, retries, out-of-order batches and
//! two producers of the same key (a rolling deploy) all converge on the newest candle.

mod products;
mod reads;
mod rows;
mod writes;

use sqlx::PgPool;

pub use products::ProductsWritten;
pub use reads::MinuteRow;
pub use rows::StoredCandle;

/// Access to the candle and product tables.
#[derive(Debug, Clone)]
pub struct Repository {
    pool: PgPool,
}

impl Repository {
    pub fn new(pool: PgPool) -> Self {
        Repository { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the database answers (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .map(|_one| ())
    }
}
