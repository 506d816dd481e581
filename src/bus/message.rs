//! The candle message on NATS subjects and in the KV: versioned JSON with exact decimal
//! strings. A golden sample lives in `tests/fixtures/candle-message.json`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::model::{Candle, CandleUpdate, EXCHANGE, Granularity, ProductId, Version};

/// The message format's version; a consumer refuses messages with another.
pub const SCHEMA: u32 = 1;

/// One candle update as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandleMessage {
    pub schema: u32,
    pub exchange: String,
    /// Checked when the message is read: a message naming no product id is refused whole.
    pub product_id: ProductId,
    pub granularity: Granularity,
    /// Bucket start, RFC 3339.
    pub start: DateTime<Utc>,
    /// Bucket start, Unix seconds.
    pub timestamp: i64,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub buy_volume: Option<Decimal>,
    pub trade_count: Option<u64>,
    pub complete: bool,
    pub revision: u32,
    /// [`Version::to_bytes`] in hex: comparing these strings compares versions.
    pub version: String,
    pub last_trade_time: DateTime<Utc>,
    pub last_received: DateTime<Utc>,
}

/// A message that is not a candle message of this schema.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// serde's text quotes what it read: shown escaped and clipped.
    #[error("not a candle message: {}", crate::model::shown(&.0.to_string()))]
    Json(#[from] serde_json::Error),
    #[error("schema {0} is not {SCHEMA}")]
    Schema(u32),
    #[error("version {} is not a candle version", crate::model::shown(.0))]
    Version(String),
    #[error(
        "the bucket's start, timestamp and version disagree (or the version is not lower-case hex)"
    )]
    Inconsistent,
    #[error("exchange {} is not {EXCHANGE}", crate::model::shown(.0))]
    Exchange(String),
    #[error("the subject {} does not name the message's series", crate::model::shown(.0))]
    Subject(String),
}

impl CandleMessage {
    pub fn from_update(u: &CandleUpdate) -> Self {
        let c = &u.candle;
        CandleMessage {
            schema: SCHEMA,
            exchange: EXCHANGE.to_owned(),
            product_id: c.product_id.clone(),
            granularity: c.granularity,
            start: c.start,
            timestamp: c.start.timestamp(),
            open: c.open,
            high: c.high,
            low: c.low,
            close: c.close,
            volume: c.volume,
            buy_volume: c.buy_volume,
            trade_count: c.trade_count,
            complete: u.complete,
            revision: u.revision,
            version: hex(&u.version().to_bytes()),
            last_trade_time: u.last_trade_time,
            last_received: u.last_received,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Plain data: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a message.
    pub fn parse(bytes: &[u8]) -> Result<Self, MessageError> {
        let message: CandleMessage = serde_json::from_slice(bytes)?;
        if message.schema != SCHEMA {
            return Err(MessageError::Schema(message.schema));
        }
        if message.exchange != EXCHANGE {
            return Err(MessageError::Exchange(message.exchange));
        }
        let version = message.parsed_version()?;
        // One bucket, said three ways, and the version in its one spelling (lower-case hex,
        // which orders as the version does): coalescing compares these fields unread.
        let start = message.start.timestamp();
        if message.timestamp != start
            || version.bucket_start != start
            || message.version != hex(&version.to_bytes())
        {
            return Err(MessageError::Inconsistent);
        }
        Ok(message)
    }

    /// Checks that `subject` (`candles.<exchange>.<product>.<granularity>`) names this
    /// message's series: a producer cannot publish one series under another's subject.
    pub fn check_subject(&self, subject: &str) -> Result<(), MessageError> {
        let mut parts = subject.split('.');
        let names = parts.next() == Some("candles")
            && parts.next() == Some(self.exchange.as_str())
            && parts.next() == Some(self.product_id.as_str())
            && parts.next() == Some(self.granularity.as_str())
            && parts.next().is_none();
        if names {
            Ok(())
        } else {
            Err(MessageError::Subject(subject.to_owned()))
        }
    }

    pub fn parsed_version(&self) -> Result<Version, MessageError> {
        unhex(&self.version)
            .and_then(|b| Version::from_bytes(&b))
            .ok_or_else(|| MessageError::Version(self.version.clone()))
    }

    /// Back to the engine's type (the version must be valid: see [`CandleMessage::parse`]).
    pub fn to_update(&self) -> Result<CandleUpdate, MessageError> {
        let version = self.parsed_version()?;
        Ok(CandleUpdate {
            candle: Candle {
                product_id: self.product_id.clone(),
                granularity: self.granularity,
                start: self.start,
                open: self.open,
                high: self.high,
                low: self.low,
                close: self.close,
                volume: self.volume,
                buy_volume: self.buy_volume,
                trade_count: self.trade_count,
            },
            complete: version.complete,
            revision: version.revision,
            counted_trades: version.trade_count,
            last_trade_id: version.last_trade_id,
            last_trade_time: self.last_trade_time,
            last_received: self.last_received,
        })
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
