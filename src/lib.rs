//! spot-canvas: live OHLCV candles for Coinbase spot markets.
//!
//! # Layout
//! - [`config`]: typed configuration from the environment.
//! - [`model`]: granularities, trades, candles, updates, products, the clock (the
//!   `spot-canvas-model` crate of the workspace, re-exported).
//! - [`coinbase`]: Coinbase's protocol: frame and REST parsers, auth, pacing, URLs.
//! - [`feed`]: Coinbase market data: connections, discovery, health.
//! - [`backoff`]: retry delays shared by the feed, the sinks and the reconciler.
//! - [`candles`]: the candle engine.
//! - [`sink`]: the coalescing sink shared by the writer and the publisher.
//! - [`bus`]: NATS: subjects, messages, publisher, KV, embedded nats-server.
//! - [`live`]: the live view: live state, rolling day, elements, quiet products, fan-out.
//! - [`store`]: PostgreSQL storage, the batch writer, the embedded database.
//! - [`children`]: child processes (embedded servers): minimal environment, stopped on drop.
//! - [`shutdown`]: the stop signal.
//! - [`supervise`]: stage supervision (restart or ordered stop on an early end).
//! - [`sse`]: the one renderer of server-sent events (no control character from outside).
//! - [`web`]: HTTP: router, `/health`, the history API.
//! - [`telemetry`]: the ground floor of figures: logging, the metric catalog and recorder,
//!   watched channels, latency.
//! - [`cli`]: the command line.
//!
//! The exchange simulator (`spot-canvas sim`) is the workspace crate `spot-canvas-sim`: it uses
//! the model only, so it can never import the service.

pub mod app;
#[cfg(test)]
mod architecture;
pub mod backoff;
pub mod bus;
pub mod candles;
pub mod children;
pub mod cli;
pub mod coinbase;
pub mod config;
pub mod feed;
pub mod live;
pub mod ops;
pub mod reconcile;
pub mod shutdown;
pub mod sink;
pub mod sse;
pub mod store;
pub mod supervise;
pub mod telemetry;
pub mod web;

pub use spot_canvas_model as model;
