//! Coinbase Advanced Trade's protocol: WebSocket frame and REST parsers (exact decimals), JWT
//! auth, request pacing within the exchange's limits (the production URLs are defaults of the
//! configuration, re-exported here).
//!
//! In: bytes from Coinbase (answers' bodies read with a cap, [`body`]). Out: typed frames,
//! products and candles. Used by the feed and the reconciler; the simulator deliberately does
//! not use it, so that its ground truth stays independent of these parsers.

pub mod auth;
pub mod body;
pub mod frame;
pub mod pacer;
pub mod rest;
pub mod url;

pub use frame::{Frame, FrameBody, FrameError, frame_sequence, parse_frame};

/// The production endpoints, defaults of the configuration (which owns every default).
pub use crate::config::{PRODUCTION_REST_URL, PRODUCTION_WS_URL};
