//! Coinbase Advanced Trade's protocol: WebSocket frame and REST parsers (exact decimals), JWT
//! auth, request pacing within the exchange's limits, and the production URLs.
//!
//! In: bytes from Coinbase (answers' bodies read with a cap, [`body`]). Out: typed frames, products and candles. Used by the feed, the
//! reconciler and the configuration; the simulator deliberately does not use it, so that its
//! ground truth stays independent of these parsers.

pub mod auth;
pub mod body;
pub mod frame;
pub mod pacer;
pub mod rest;
pub mod url;

pub use frame::{Frame, FrameBody, FrameError, frame_sequence, parse_frame};

/// Coinbase's production market-data WebSocket endpoint.
pub const PRODUCTION_WS_URL: &str = "wss://advanced-trade-ws.coinbase.com";
/// Coinbase's production public REST base (`/market/products` and so on hang below it).
pub const PRODUCTION_REST_URL: &str = "https://api.coinbase.com/api/v3/brokerage";
