//! Domain types shared by every stage: granularities, trades, candles and their updates,
//! products, and the injected clock. Amounts are exact decimals, never floats.
//!
//! The workspace's ground floor, the crate `spot-canvas-model`: it depends on registry crates only
//! (chrono, rust_decimal, serde, thiserror). The service re-exports it as `spot_canvas::model`; the
//! simulator (`spot-canvas-sim`) uses it directly.

mod candle;
mod clock;
mod event;
mod granularity;
mod product;
mod product_id;
mod trade;

pub use candle::{Candle, CandleUpdate, EXCHANGE, Version};
pub use clock::{Clock, ManualClock, SystemClock};
pub use event::{FeedEvent, TradeBatch};
pub use granularity::{ACCEPTED_GRANULARITIES, Granularity, UnknownGranularity};
pub use product::Product;
pub use product_id::{
    BadCurrency, BadProductId, Currency, MAX_CURRENCY_LEN, MAX_PRODUCT_ID_LEN, ProductId, shown,
};
pub use trade::{BadTradeId, Side, Trade, TradeId};
