//! Decoding stored rows into the model's checked types.
//!
//! In: a PostgreSQL row. Out: a [`StoredCandle`] or one parsed column; a value that does not
//! parse is a decode error naming its column.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::model::{Candle, Granularity};

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

/// A text column parsed into one of the model's checked types; a value that does not parse
/// is a decode error (named, escaped).
pub(super) fn parsed<T>(r: &sqlx::postgres::PgRow, column: &str) -> Result<T, sqlx::Error>
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

pub(super) fn stored_candle(r: &sqlx::postgres::PgRow) -> Result<StoredCandle, sqlx::Error> {
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
