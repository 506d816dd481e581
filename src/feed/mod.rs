//! Market-data ingestion.
//!
//! In: Coinbase's WebSocket frames (and its REST products list for discovery). Out:
//! [`FeedEvent`](crate::model::FeedEvent)s on one bounded channel: trade batches for the
//! candle engine, Coinbase's own 5-minute candles for the cross-check, heartbeats, and the
//! first subscribes, reconnects and sequence gaps before or during which a window of trades
//! may be missing. Sending waits when the channel is full, so a slow engine slows the socket
//! reads instead of losing trades.

pub mod client;
pub mod discovery;
pub mod health;
pub mod manager;
pub mod shard;

use std::time::Duration;

use crate::config::{CoinbaseCredentials, Config};
use crate::model::ProductId;

pub use crate::backoff::ReconnectPolicy;
pub use health::FeedHealth;
pub use manager::Feed;

/// Everything the feed needs to run.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    pub ws_url: String,
    pub rest_url: String,
    /// Explicit products; `None` discovers them from REST.
    pub products: Option<Vec<ProductId>>,
    pub shard_index: u32,
    pub shard_count: u32,
    pub products_per_connection: usize,
    pub credentials: Option<CoinbaseCredentials>,
    pub reconnect: ReconnectPolicy,
    /// No frame for this long means a dead socket.
    pub silence_timeout: Duration,
    /// Least time between two connects (all connections together).
    pub connect_interval: Duration,
    /// Least time between two client messages (all connections together).
    pub message_interval: Duration,
    /// How often the products list is fetched again (discovery mode only).
    pub refresh_interval: Duration,
    /// Largest frame accepted; a bigger one is a protocol error and a reconnect.
    pub max_frame_bytes: usize,
    /// Capacity of the event channel the feed writes to.
    pub channel_capacity: usize,
}

impl FeedSettings {
    /// Settings from the configuration, with the production tunables.
    pub fn from_config(config: &Config) -> Self {
        FeedSettings {
            ws_url: config.coinbase_ws_url.clone(),
            rest_url: config.coinbase_rest_url.clone(),
            products: config.products.clone(),
            shard_index: config.shard_index,
            shard_count: config.shard_count,
            products_per_connection: config.products_per_connection,
            credentials: config.coinbase_credentials.clone(),
            reconnect: ReconnectPolicy::DEFAULT,
            silence_timeout: Duration::from_secs(10),
            // Coinbase allows 8 connects and 8 messages a second per IP: stay clear of both.
            connect_interval: Duration::from_millis(1_100),
            message_interval: Duration::from_millis(150),
            refresh_interval: Duration::from_secs(600),
            max_frame_bytes: 16 << 20,
            channel_capacity: 1024,
        }
    }
}
