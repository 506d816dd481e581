//! The simulated markets: products with prices on a random walk, trades generated every
//! 250 ms, the last 100 trades per product for snapshots, one-minute aggregates for REST
//! candles, and an optional JSON-lines log of every trade (the ground truth for tests).
//!
//! In: ticks of the clock and admin commands (add a product, change a listing, inject late
//! trades). Out: [`Tick`]s broadcast to WebSocket connections, and queries for snapshots and
//! candles.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::{Side, Trade, TradeId};

/// Trades kept per product for snapshots.
pub const SNAPSHOT_TRADES: usize = 100;
/// How long one-minute aggregates are kept for REST candles.
const AGGREGATE_RETENTION_SECS: i64 = 10 * 86_400;

/// Price and size scales of one simulated product.
#[derive(Debug, Clone)]
pub struct MarketSpec {
    pub product_id: String,
    pub base: String,
    pub quote: String,
    pub start_price: f64,
    /// Decimal places of the price increment.
    pub price_dp: u32,
    pub size_min: f64,
    pub size_max: f64,
    pub size_dp: u32,
}

/// Well-known markets at realistic magnitudes, used first when products are given as a count.
const KNOWN: &[(&str, f64, u32, f64, f64, u32)] = &[
    // product, price, price dp, size min, size max, size dp
    ("BTC-USD", 100_000.0, 2, 0.000_01, 0.5, 8),
    ("ETH-USD", 3_500.0, 2, 0.000_1, 10.0, 8),
    ("SOL-USD", 150.0, 2, 0.001, 200.0, 8),
    ("XRP-USD", 0.6, 4, 1.0, 50_000.0, 6),
    ("DOGE-USD", 0.15, 5, 1.0, 500_000.0, 1),
    ("ADA-USD", 0.45, 4, 1.0, 50_000.0, 8),
    ("AVAX-USD", 30.0, 2, 0.01, 1_000.0, 8),
    ("LINK-USD", 15.0, 3, 0.01, 5_000.0, 8),
    ("LTC-USD", 80.0, 2, 0.001, 500.0, 8),
    ("DOT-USD", 6.0, 3, 0.01, 5_000.0, 8),
    ("PEPE-USD", 0.000_012, 10, 1_000_000.0, 1_000_000_000.0, 0),
    ("SHIB-USD", 0.000_018, 9, 1_000_000.0, 1_000_000_000.0, 0),
    ("BONK-USD", 0.000_025, 10, 1_000_000.0, 1_000_000_000.0, 0),
    ("UNI-USD", 8.0, 3, 0.01, 5_000.0, 6),
    ("ATOM-USD", 7.0, 3, 0.01, 5_000.0, 8),
    ("NEAR-USD", 5.0, 3, 0.1, 10_000.0, 8),
];

impl MarketSpec {
    /// The spec of a well-known product, or a plausible mid-cap one for any other id.
    pub fn for_product(product_id: &str) -> MarketSpec {
        let (base, quote) = product_id
            .split_once('-')
            .map_or((product_id, "USD"), |(b, q)| (b, q));
        if let Some(&(_, price, price_dp, size_min, size_max, size_dp)) =
            KNOWN.iter().find(|k| k.0 == product_id)
        {
            return MarketSpec {
                product_id: product_id.to_owned(),
                base: base.to_owned(),
                quote: quote.to_owned(),
                start_price: price,
                price_dp,
                size_min,
                size_max,
                size_dp,
            };
        }
        // Deterministic price from the name, between 0.5 and ~500.
        let hash = product_id
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        MarketSpec {
            product_id: product_id.to_owned(),
            base: base.to_owned(),
            quote: quote.to_owned(),
            start_price: 0.5 * 10f64.powf(f64::from(hash % 3000) / 1000.0),
            price_dp: 4,
            size_min: 0.1,
            size_max: 10_000.0,
            size_dp: 4,
        }
    }

    /// Product ids for a count: the well-known ones first, then synthetic `SIMnnn-USD`.
    pub fn product_ids(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| match KNOWN.get(i) {
                Some(k) => k.0.to_owned(),
                None => format!("SIM{:03}-USD", i - KNOWN.len() + 1),
            })
            .collect()
    }
}

/// A product's listing as the REST products list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub status: String,
    pub trading_disabled: bool,
}

/// OHLCV of one minute (or a merge of minutes), with the order keys of its first and last
/// trade so late trades land correctly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub start: i64,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub trades: u64,
    first: (DateTime<Utc>, TradeId),
    last: (DateTime<Utc>, TradeId),
}

impl Aggregate {
    fn from_trade(start: i64, t: &Trade) -> Self {
        Aggregate {
            start,
            open: t.price,
            high: t.price,
            low: t.price,
            close: t.price,
            volume: t.size,
            trades: 1,
            first: t.order_key(),
            last: t.order_key(),
        }
    }

    fn add(&mut self, t: &Trade) {
        let key = t.order_key();
        if key < self.first {
            self.first = key;
            self.open = t.price;
        }
        if key > self.last {
            self.last = key;
            self.close = t.price;
        }
        self.high = self.high.max(t.price);
        self.low = self.low.min(t.price);
        self.volume += t.size;
        self.trades += 1;
    }

    fn merge(&mut self, other: &Aggregate) {
        if other.first < self.first {
            self.first = other.first;
            self.open = other.open;
        }
        if other.last > self.last {
            self.last = other.last;
            self.close = other.close;
        }
        self.high = self.high.max(other.high);
        self.low = self.low.min(other.low);
        self.volume += other.volume;
        self.trades += other.trades;
    }
}

#[derive(Debug)]
struct ProductState {
    spec: MarketSpec,
    listing: Listing,
    price: f64,
    next_trade_id: u64,
    /// Newest at the back.
    recent: VecDeque<Trade>,
    minutes: BTreeMap<i64, Aggregate>,
    /// Late trades to emit at the next tick.
    pending_late: u32,
}

/// What one 250 ms tick produced: per product, its new trades newest first.
#[derive(Debug, Default)]
pub struct Tick {
    pub batches: Vec<(String, Vec<Trade>)>,
}

/// The simulated exchange. Shared by the generator task, the WebSocket connections and REST.
#[derive(Debug)]
pub struct Exchange {
    state: Mutex<State>,
    /// Sender of every tick; each WebSocket connection holds a receiver.
    ticks: broadcast::Sender<Arc<Tick>>,
    trades_per_second: f64,
    log: Option<Mutex<BufWriter<File>>>,
    started: DateTime<Utc>,
    /// No trades happen while paused (a market-wide halt).
    paused: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    products: Vec<ProductState>,
    by_id: HashMap<String, usize>,
    trades_total: u64,
}

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
    /// Creates the markets and their trade history of `history` before `now`.
    pub fn new(
        product_ids: &[String],
        trades_per_second: f64,
        seed: u64,
        history: TimeDelta,
        now: DateTime<Utc>,
        trade_log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let log = match trade_log {
            Some(path) => Some(Mutex::new(BufWriter::new(File::create(path).map_err(
                |e| anyhow::anyhow!("cannot create trade log {}: {e}", path.display()),
            )?))),
            None => None,
        };
        let (ticks, _) = broadcast::channel(1024);
        let exchange = Exchange {
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                products: Vec::new(),
                by_id: HashMap::new(),
                trades_total: 0,
            }),
            ticks,
            trades_per_second,
            log,
            started: now,
            paused: std::sync::atomic::AtomicBool::new(false),
        };
        for id in product_ids {
            exchange.add_product(id, None);
        }
        if history > TimeDelta::zero() {
            // Generate history in one-minute slices so the random walk looks the same as live.
            let mut from = now - history;
            while from < now {
                let to = (from + TimeDelta::minutes(1)).min(now);
                exchange.generate(from, to);
                from = to;
            }
        }
        Ok(exchange)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the exchange started (for heartbeat counters).
    pub fn started(&self) -> DateTime<Utc> {
        self.started
    }

    pub fn subscribe_ticks(&self) -> broadcast::Receiver<Arc<Tick>> {
        self.ticks.subscribe()
    }

    /// Adds a trading product (no-op if it exists). `price` overrides the spec's start price.
    pub fn add_product(&self, product_id: &str, price: Option<f64>) -> bool {
        let mut state = self.lock();
        if state.by_id.contains_key(product_id) {
            return false;
        }
        let spec = MarketSpec::for_product(product_id);
        let price = price.filter(|p| *p > 0.0).unwrap_or(spec.start_price);
        let first_id = 1_000_000 + (state.rng.random::<u32>() as u64) * 1000;
        let index = state.products.len();
        state.products.push(ProductState {
            spec,
            listing: Listing {
                status: "online".into(),
                trading_disabled: false,
            },
            price,
            next_trade_id: first_id,
            recent: VecDeque::with_capacity(SNAPSHOT_TRADES),
            minutes: BTreeMap::new(),
            pending_late: 0,
        });
        state.by_id.insert(product_id.to_owned(), index);
        true
    }

    /// Changes a product's listing; a product that is not online or has trading disabled stops
    /// trading. Returns false for an unknown product.
    pub fn set_listing(&self, product_id: &str, listing: Listing) -> bool {
        let mut state = self.lock();
        let Some(&i) = state.by_id.get(product_id) else {
            return false;
        };
        state.products[i].listing = listing;
        true
    }

    /// Queues `count` trades of `product_id` whose exchange time lies in the minute before the
    /// previous one (already complete), sent with the next tick.
    pub fn inject_late_trades(&self, product_id: &str, count: u32) -> bool {
        let mut state = self.lock();
        let Some(&i) = state.by_id.get(product_id) else {
            return false;
        };
        state.products[i].pending_late += count;
        true
    }

    /// Specs and listings of all products, in the order they were added.
    pub fn products(&self) -> Vec<(MarketSpec, Listing, Decimal)> {
        let state = self.lock();
        state
            .products
            .iter()
            .map(|p| {
                (
                    p.spec.clone(),
                    p.listing.clone(),
                    round(p.price, p.spec.price_dp),
                )
            })
            .collect()
    }

    /// Whether `product_id` is a product that trades here.
    pub fn is_tradable(&self, product_id: &str) -> bool {
        let state = self.lock();
        state.by_id.get(product_id).is_some_and(|&i| {
            let l = &state.products[i].listing;
            l.status == "online" && !l.trading_disabled
        })
    }

    pub fn trades_total(&self) -> u64 {
        self.lock().trades_total
    }

    /// The last trades of `product_id`, newest first, as a snapshot holds them.
    pub fn snapshot(&self, product_id: &str) -> Vec<Trade> {
        let state = self.lock();
        state.by_id.get(product_id).map_or_else(Vec::new, |&i| {
            state.products[i].recent.iter().rev().cloned().collect()
        })
    }

    /// Candles of `bucket_secs` width for `product_id` whose start lies in `[start, end)`,
    /// newest first; buckets without trades are absent. `None` for an unknown product.
    pub fn candles(
        &self,
        product_id: &str,
        bucket_secs: i64,
        start: i64,
        end: i64,
    ) -> Option<Vec<Aggregate>> {
        let state = self.lock();
        let &i = state.by_id.get(product_id)?;
        let first_bucket = start.div_euclid(bucket_secs) * bucket_secs;
        let mut buckets: BTreeMap<i64, Aggregate> = BTreeMap::new();
        for (&minute, agg) in state.products[i].minutes.range(first_bucket..end) {
            let bucket = minute.div_euclid(bucket_secs) * bucket_secs;
            if bucket < start {
                continue;
            }
            buckets
                .entry(bucket)
                .and_modify(|b| b.merge(agg))
                .or_insert_with(|| Aggregate {
                    start: bucket,
                    ..agg.clone()
                });
        }
        Some(buckets.into_values().rev().collect())
    }

    /// Halts (or resumes) all trading: while paused, ticks generate no trades.
    pub fn set_paused(&self, paused: bool) {
        self.paused
            .store(paused, std::sync::atomic::Ordering::Relaxed);
    }

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

    fn generate(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Tick {
        let mut state = self.lock();
        let state = &mut *state;
        let window_us = (to - from).num_microseconds().unwrap_or(0).max(0);
        let mut tick = Tick::default();
        for product in &mut state.products {
            if product.listing.status != "online" || product.listing.trading_disabled {
                continue;
            }
            let expected = self.trades_per_second * window_us as f64 / 1e6;
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
                time: super::format::go_time(t.time),
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
        product_id: product.spec.product_id.clone(),
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

fn round(value: f64, dp: u32) -> Decimal {
    Decimal::from_f64(value)
        .unwrap_or(Decimal::ONE)
        .round_dp_with_strategy(dp, RoundingStrategy::MidpointNearestEven)
        .normalize()
}

fn standard_normal(rng: &mut StdRng) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn poisson(rng: &mut StdRng, lambda: f64) -> usize {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        let n = lambda + lambda.sqrt() * standard_normal(rng);
        return n.round().max(0.0) as usize;
    }
    let limit = (-lambda).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= rng.random::<f64>();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("valid")
    }

    #[test]
    fn the_same_seed_gives_the_same_trades() {
        let ids = MarketSpec::product_ids(3);
        let a = Exchange::new(&ids, 5.0, 7, TimeDelta::minutes(5), at(1_700_000_000), None)
            .expect("exchange");
        let b = Exchange::new(&ids, 5.0, 7, TimeDelta::minutes(5), at(1_700_000_000), None)
            .expect("exchange");
        assert!(a.trades_total() > 100);
        assert_eq!(a.snapshot("BTC-USD"), b.snapshot("BTC-USD"));
    }

    #[test]
    fn snapshots_hold_the_last_100_trades_newest_first() {
        let ids = MarketSpec::product_ids(1);
        let ex = Exchange::new(
            &ids,
            5.0,
            1,
            TimeDelta::minutes(10),
            at(1_700_000_000),
            None,
        )
        .expect("exchange");
        let snap = ex.snapshot("BTC-USD");
        assert_eq!(snap.len(), SNAPSHOT_TRADES);
        assert!(snap.windows(2).all(|w| w[0].order_key() > w[1].order_key()));
    }

    #[test]
    fn meme_coins_trade_near_1e_minus_5_with_daily_volume_above_1e12() {
        let ids = vec!["PEPE-USD".to_owned()];
        let now = at(1_700_006_400);
        let ex = Exchange::new(&ids, 1.0, 3, TimeDelta::hours(2), now, None).expect("exchange");
        let candles = ex
            .candles("PEPE-USD", 7200, now.timestamp() - 7200, now.timestamp())
            .expect("known product");
        let volume: Decimal = candles.iter().map(|c| c.volume).sum();
        // Two hours at one trade a second: scale to a day.
        assert!(
            volume * Decimal::from(12) > Decimal::from(1_000_000_000_000u64),
            "{volume}"
        );
        let close = candles[0].close;
        assert!(
            close > Decimal::new(1, 6) && close < Decimal::new(1, 4),
            "{close}"
        );
    }

    #[test]
    fn bitcoin_trades_near_1e5() {
        let ids = MarketSpec::product_ids(1);
        let ex = Exchange::new(
            &ids,
            1.0,
            3,
            TimeDelta::minutes(30),
            at(1_700_000_000),
            None,
        )
        .expect("exchange");
        let price = ex.snapshot("BTC-USD")[0].price;
        assert!(
            price > Decimal::from(50_000) && price < Decimal::from(200_000),
            "{price}"
        );
    }

    #[test]
    fn late_trades_land_in_an_earlier_minute() {
        let ids = MarketSpec::product_ids(1);
        let now = at(1_700_000_030);
        let ex = Exchange::new(&ids, 0.0, 3, TimeDelta::zero(), now, None).expect("exchange");
        let mut rx = ex.subscribe_ticks();
        ex.inject_late_trades("BTC-USD", 3);
        ex.tick(now, now + TimeDelta::milliseconds(250));
        let tick = rx.try_recv().expect("a tick");
        let trades = &tick.batches[0].1;
        assert_eq!(trades.len(), 3);
        for t in trades {
            assert!(t.time < at(1_700_000_030 - 30 - 60), "{}", t.time);
        }
    }
}
