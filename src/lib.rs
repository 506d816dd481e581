//! spot-canvas: live OHLCV candles for Coinbase spot markets.
//!
//! # Layout
//! - [`config`]: typed configuration from the environment.
//! - [`model`]: granularities, trades, candles, updates, products, the clock.
//! - [`feed`]: Coinbase market data (frame and REST parsers).
//! - [`telemetry`]: logging setup.
//! - [`cli`]: the command line.

pub mod cli;
pub mod config;
pub mod feed;
pub mod model;
pub mod telemetry;
