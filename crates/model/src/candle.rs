//! Candles and the updates the engine emits for them, with the version that orders every
//! update of one (product, granularity) key.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{Granularity, ProductId, TradeId};

/// The exchange every candle of this service comes from (subject and key prefix).
pub const EXCHANGE: &str = "coinbase";

/// OHLCV of one bucket `[start, start + granularity)` of one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candle {
    pub product_id: ProductId,
    pub granularity: Granularity,
    /// Bucket start, aligned to the UTC epoch.
    pub start: DateTime<Utc>,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    /// Sum of trade sizes (base currency).
    pub volume: Decimal,
    /// Volume of trades whose taker bought (the maker sold). `None` when unknown (a candle
    /// from REST).
    pub buy_volume: Option<Decimal>,
    /// Number of trades. `None` when unknown (a candle from REST).
    pub trade_count: Option<u64>,
}

impl Candle {
    /// Exclusive end of the bucket.
    pub fn end(&self) -> DateTime<Utc> {
        self.granularity.bucket_end(self.start)
    }

    /// Volume of trades whose taker sold, when the buy volume is known.
    pub fn sell_volume(&self) -> Option<Decimal> {
        self.buy_volume.and_then(|buy| self.volume.checked_sub(buy))
    }
}

/// Orders the updates of one (product, granularity) key totally, across buckets, restarts
/// and two producers of the same key: a newer bucket wins, then a higher revision, then the
/// complete update over the live ones of its revision, then more trades, then a later last
/// trade. Storage, KV and clients keep the highest.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    /// Bucket start in Unix seconds.
    pub bucket_start: i64,
    pub revision: u32,
    pub complete: bool,
    pub trade_count: u64,
    pub last_trade_id: TradeId,
}

impl Version {
    /// Encoded length of [`Version::to_bytes`].
    pub const BYTES: usize = 29;

    /// A byte string whose bytewise order is the version order (for PostgreSQL `bytea`
    /// comparisons and the KV): bucket start (sign bit flipped), revision, completeness,
    /// trade count and last trade id, all big-endian.
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[0..8].copy_from_slice(&((self.bucket_start as u64) ^ (1 << 63)).to_be_bytes());
        out[8..12].copy_from_slice(&self.revision.to_be_bytes());
        out[12] = u8::from(self.complete);
        out[13..21].copy_from_slice(&self.trade_count.to_be_bytes());
        out[21..29].copy_from_slice(&self.last_trade_id.0.to_be_bytes());
        out
    }

    /// Decodes [`Version::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Version> {
        if bytes.len() != Self::BYTES || bytes[12] > 1 {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let mut revision = [0u8; 4];
        revision.copy_from_slice(&bytes[8..12]);
        Some(Version {
            bucket_start: (u64_at(0) ^ (1 << 63)) as i64,
            revision: u32::from_be_bytes(revision),
            complete: bytes[12] == 1,
            trade_count: u64_at(13),
            last_trade_id: TradeId(u64_at(21)),
        })
    }
}

/// One change of one candle, as the engine emits it. Every field is held once: the
/// [`Version`] that orders the updates of a key is derived from them by
/// [`CandleUpdate::version`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandleUpdate {
    pub candle: Candle,
    /// The clock has passed the bucket's end plus the grace period.
    pub complete: bool,
    /// 0 for the live candle; incremented each time a late trade changes a complete candle.
    pub revision: u32,
    /// Trades counted one by one: the candle's trade count when it is known; when it is not
    /// (the candle holds REST minutes), the trades of its other minutes. Orders the live
    /// updates of one revision.
    pub counted_trades: u64,
    /// The newest trade in the candle, by (exchange time, numeric id); 0 for a candle from REST.
    pub last_trade_id: TradeId,
    /// Exchange time of the newest trade in the candle.
    pub last_trade_time: DateTime<Utc>,
    /// When the newest trade in the candle was received.
    pub last_received: DateTime<Utc>,
}

impl CandleUpdate {
    /// The version of this update, derived from its fields (the one source of truth).
    pub fn version(&self) -> Version {
        Version {
            bucket_start: self.candle.start.timestamp(),
            revision: self.revision,
            complete: self.complete,
            trade_count: self.counted_trades,
            last_trade_id: self.last_trade_id,
        }
    }

    /// The candle this update is of: product, granularity, bucket start (Unix seconds).
    pub fn candle_key(&self) -> (&str, Granularity, i64) {
        (
            &self.candle.product_id,
            self.candle.granularity,
            self.candle.start.timestamp(),
        )
    }

    /// Puts `update` under `key` in `map` unless the update there has a version as high.
    pub fn keep_newest<K, U>(map: &mut std::collections::HashMap<K, U>, key: K, update: U)
    where
        K: std::hash::Hash + Eq,
        U: std::borrow::Borrow<CandleUpdate>,
    {
        match map.get(&key) {
            Some(existing) if existing.borrow().version() >= update.borrow().version() => {}
            _ => {
                map.insert(key, update);
            }
        }
    }

    /// The element and key id of the newest bucket of this product and granularity,
    /// `<product>-<granularity>`.
    pub fn key_id(&self) -> String {
        format!("{}-{}", self.candle.product_id, self.candle.granularity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(bucket_start: i64, revision: u32, complete: bool, trade_count: u64, last: u64) -> Version {
        Version {
            bucket_start,
            revision,
            complete,
            trade_count,
            last_trade_id: TradeId(last),
        }
    }

    #[test]
    fn versions_order_by_bucket_revision_completeness_count_and_last_trade() {
        let ordered = [
            v(60, 0, false, 1, 10),
            v(60, 0, false, 1, 11),
            v(60, 0, false, 2, 5),
            v(60, 0, true, 2, 5),
            v(60, 1, true, 3, 1),
            v(120, 0, false, 1, 1),
        ];
        for pair in ordered.windows(2) {
            assert!(pair[0] < pair[1], "{:?} < {:?}", pair[0], pair[1]);
            assert!(
                pair[0].to_bytes() < pair[1].to_bytes(),
                "bytes keep the order"
            );
        }
    }

    #[test]
    fn the_version_is_derived_from_the_update_so_it_cannot_disagree() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let mut u = CandleUpdate {
            candle: Candle {
                product_id: crate::ProductId::from_static("BTC-USD"),
                granularity: Granularity::OneMinute,
                start,
                open: Decimal::ONE,
                high: Decimal::ONE,
                low: Decimal::ONE,
                close: Decimal::ONE,
                volume: Decimal::ONE,
                buy_volume: None,
                trade_count: None,
            },
            complete: false,
            revision: 0,
            counted_trades: 4,
            last_trade_id: TradeId(9),
            last_trade_time: start,
            last_received: start,
        };
        assert_eq!(u.version(), v(1_800_000_000, 0, false, 4, 9));
        u.complete = true;
        u.revision = 2;
        assert_eq!(u.version(), v(1_800_000_000, 2, true, 4, 9));
        let later = u.version();
        u.revision = 1;
        assert!(u.version() < later, "the revision orders updates");
    }

    #[test]
    fn version_bytes_round_trip_and_order_negative_starts() {
        let early = v(-86_400, 0, false, 1, 1);
        let late = v(0, 0, false, 1, 1);
        assert!(early.to_bytes() < late.to_bytes());
        for version in [early, late, v(i64::MAX, u32::MAX, true, u64::MAX, u64::MAX)] {
            assert_eq!(Version::from_bytes(&version.to_bytes()), Some(version));
        }
        assert_eq!(Version::from_bytes(&[0; 3]), None);
    }
}
