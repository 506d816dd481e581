//! The frame and REST parsers against the production recording, the documented examples and
//! malformed input.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::Value;
use spot_canvas::coinbase::rest::{parse_candles, parse_error, parse_product, parse_products};
use spot_canvas::coinbase::{FrameBody, FrameError, frame_sequence, parse_frame};
use spot_canvas::model::{Granularity, Side, Trade, TradeId};

mod documented;
mod malformed;
mod recording;
mod rest;

const MARKET_DATA: &str =
    include_str!("../../fixtures/coinbase/production-market-data-2026-09-30.jsonl");

fn received() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-09-30T02:40:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

/// Frames of a recording: each line is `<receive ns>\t<frame JSON>`.
fn frames(recording: &str) -> Vec<&str> {
    recording
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_once('\t').map_or(l, |(_, frame)| frame))
        .collect()
}
