//! HTTP endpoints besides `/health`.

pub mod api;
