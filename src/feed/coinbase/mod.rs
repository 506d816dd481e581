//! Coinbase Advanced Trade market data: the frame and REST parsers, JWT auth, product
//! discovery, the WebSocket client and the connection manager.

pub mod auth;
pub mod client;
pub mod discovery;
pub mod frame;
pub mod manager;
pub mod rest;

pub use frame::{Frame, FrameBody, FrameError, parse_frame};

/// Coinbase's production market-data WebSocket endpoint.
pub const PRODUCTION_WS_URL: &str = "wss://advanced-trade-ws.coinbase.com";
/// Coinbase's production public REST base (`/market/products` and so on hang below it).
pub const PRODUCTION_REST_URL: &str = "https://api.coinbase.com/api/v3/brokerage";
