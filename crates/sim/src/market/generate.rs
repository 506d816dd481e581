//! One tick of the markets: the trades of a span for every trading product (a Poisson count
//! at the current rate, a geometric random walk of the price, sizes between the spec's bounds,
//! late trades when queued), recorded into each product's snapshot and one-minute aggregates,
//! written to the trade log, and broadcast.
//!
//! In: the span `[from, to)` of a tick (or of the history built at start). Out: a [`Tick`] to
//! the WebSocket connections, and the markets' state and trade log updated.

use std::io::Write;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use rand::rngs::StdRng;
use rust_decimal::Decimal;
use serde::Serialize;
use spot_canvas_model::{Side, Trade, TradeId};

use super::random::{poisson, round, standard_normal};
use super::{AGGREGATE_RETENTION_SECS, Aggregate, Exchange, ProductState, SNAPSHOT_TRADES, Tick};

#[derive(Serialize)]
struct LoggedTrade<'a> {
    product_id: &'a str,
    trade_id: String,
    price: String,
    size: String,
    side: Side,
    time: String,
}

impl Exchange {
    /// Generates the trades of `[from, to)` for every trading product, records them, and
    /// broadcasts them as one tick.
    pub fn tick(&self, from: DateTime<Utc>, to: DateTime<Utc>) {
        if self.paused.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let tick = self.generate(from, to);
        if !tick.batches.is_empty() {
            // No receiver (no connection) is fine: the trades are recorded either way.
            let _no_receivers = self.ticks.send(Arc::new(tick));
        }
    }

    pub(super) fn generate(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Tick {
        let mut state = self.lock();
        let state = &mut *state;
        let window_us = (to - from).num_microseconds().unwrap_or(0).max(0);
        let rate = self.trades_per_second();
        let mut tick = Tick::default();
        for product in &mut state.products {
            if product.listing.status != "online" || product.listing.trading_disabled {
                continue;
            }
            let expected = rate * window_us as f64 / 1e6;
            let count = poisson(&mut state.rng, expected);
            let mut times: Vec<i64> = (0..count)
                .map(|_| state.rng.random_range(0..window_us.max(1)))
                .collect();
            times.sort_unstable();
            // A taker sweeping several makers: trades that share one time.
            for i in 1..times.len() {
                if state.rng.random_bool(0.2) {
                    times[i] = times[i - 1];
                }
            }
            let mut trades: Vec<Trade> = times
                .into_iter()
                .map(|us| {
                    let time = from + TimeDelta::microseconds(us);
                    next_trade(&mut state.rng, product, time)
                })
                .collect();
            if product.pending_late > 0 {
                let minute = to.timestamp().div_euclid(60) * 60 - 120;
                for _ in 0..std::mem::take(&mut product.pending_late) {
                    let offset = state.rng.random_range(0..60_000_000i64);
                    let time = DateTime::from_timestamp(minute, 0).unwrap_or(from)
                        + TimeDelta::microseconds(offset);
                    trades.push(next_trade(&mut state.rng, product, time));
                }
            }
            if trades.is_empty() {
                continue;
            }
            for t in &trades {
                record(product, t);
            }
            state.trades_total += trades.len() as u64;
            self.log_trades(&trades);
            trades.reverse();
            tick.batches.push((product.spec.product_id.clone(), trades));
        }
        tick
    }

    fn log_trades(&self, trades: &[Trade]) {
        let Some(log) = &self.log else { return };
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        for t in trades {
            let line = LoggedTrade {
                product_id: &t.product_id,
                trade_id: t.trade_id.to_string(),
                price: t.price.to_string(),
                size: t.size.to_string(),
                side: t.side,
                time: crate::go_time::go_time(t.time),
            };
            let written = serde_json::to_writer(&mut *log, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| log.write_all(b"\n"));
            if let Err(e) = written {
                tracing::error!(error = %e, "cannot write the trade log");
                return;
            }
        }
        if let Err(e) = log.flush() {
            tracing::error!(error = %e, "cannot flush the trade log");
        }
    }
}

fn next_trade(rng: &mut StdRng, product: &mut ProductState, time: DateTime<Utc>) -> Trade {
    // Geometric random walk: about 0.05% per trade.
    let step = 0.0005 * standard_normal(rng);
    product.price = (product.price * step.exp()).max(10f64.powi(-(product.spec.price_dp as i32)));
    let price =
        round(product.price, product.spec.price_dp).max(Decimal::new(1, product.spec.price_dp));
    let (lo, hi) = (product.spec.size_min.ln(), product.spec.size_max.ln());
    let size = round(rng.random_range(lo..hi).exp(), product.spec.size_dp)
        .max(Decimal::new(1, product.spec.size_dp));
    let trade_id = TradeId(product.next_trade_id);
    product.next_trade_id += 1;
    Trade {
        product_id: product.id.clone(),
        trade_id,
        price,
        size,
        side: if rng.random_bool(0.5) {
            Side::Buy
        } else {
            Side::Sell
        },
        time: DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time),
        received: time,
    }
}

fn record(product: &mut ProductState, t: &Trade) {
    let minute = t.time.timestamp().div_euclid(60) * 60;
    product
        .minutes
        .entry(minute)
        .and_modify(|a| a.add(t))
        .or_insert_with(|| Aggregate::from_trade(minute, t));
    if product.recent.len() == SNAPSHOT_TRADES {
        product.recent.pop_front();
    }
    product.recent.push_back(t.clone());
    // Keep `recent` ordered by (time, id) even with late trades.
    let mut i = product.recent.len() - 1;
    while i > 0 && product.recent[i - 1].order_key() > product.recent[i].order_key() {
        product.recent.swap(i - 1, i);
        i -= 1;
    }
    let horizon = minute - AGGREGATE_RETENTION_SECS;
    while let Some((&oldest, _)) = product.minutes.first_key_value() {
        if oldest >= horizon {
            break;
        }
        product.minutes.pop_first();
    }
}
