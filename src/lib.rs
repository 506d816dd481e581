//! spot-canvas: live OHLCV candles for Coinbase spot markets.
//!
//! # Layout
//! - [`config`]: typed configuration from the environment.
//! - [`model`]: granularities, trades, candles, updates, products, the clock.
//! - [`feed`]: Coinbase market data: connections, parsers, auth, discovery.
//! - [`candles`]: the candle engine.
//! - [`sink`]: the coalescing sink shared by the writer and the publisher.
//! - [`bus`]: NATS: publisher, KV, live state, embedded nats-server.
//! - [`store`]: PostgreSQL storage, the batch writer, the embedded database.
//! - [`sim`]: the exchange simulator (`spot-canvas sim`).
//! - [`shutdown`]: the stop signal.
//! - [`telemetry`]: logging setup.
//! - [`cli`]: the command line.

pub mod app;
pub mod bus;
pub mod candles;
pub mod cli;
pub mod config;
pub mod feed;
pub mod model;
pub mod reconcile;
pub mod shutdown;
pub mod sim;
pub mod sink;
pub mod store;
pub mod telemetry;
pub mod web;
