//! The simulated markets: products with prices on a random walk, trades generated every
//! 250 ms, the last 100 trades per product for snapshots, one-minute aggregates for REST
//! candles, and an optional JSON-lines log of every trade (the ground truth for tests).
//!
//! In: ticks of the clock and admin commands (add a product, change a listing, inject late
//! trades). Out: [`Tick`]s broadcast to WebSocket connections, and queries for snapshots and
//! candles.

mod aggregate;
mod generate;
mod random;
mod spec;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use tokio::sync::broadcast;

use self::random::round;
use spot_canvas_model::{ProductId, Trade};

pub use self::aggregate::Aggregate;
pub use self::spec::MarketSpec;

/// Trades kept per product for snapshots.
pub const SNAPSHOT_TRADES: usize = 100;
/// Whether `rate` (trades per second per product) is one the exchange takes: finite, from 0 to
/// [`MAX_TRADES_PER_SECOND`]. NaN would never end the Poisson draw; infinity would ask for
/// `usize::MAX` trades.
pub fn valid_rate(rate: f64) -> bool {
    rate.is_finite() && (0.0..=MAX_TRADES_PER_SECOND).contains(&rate)
}

/// The highest rate [`Exchange::new`] and [`Exchange::set_trades_per_second`] accept, per
/// product.
pub const MAX_TRADES_PER_SECOND: f64 = 10_000.0;
/// How long one-minute aggregates are kept for REST candles.
const AGGREGATE_RETENTION_SECS: i64 = 10 * 86_400;

/// A product's listing as the REST products list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub status: String,
    pub trading_disabled: bool,
}

#[derive(Debug)]
struct ProductState {
    /// The spec's id, checked: a market that trades has a valid id (odd ids are faults,
    /// sent beside the markets).
    id: ProductId,
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
    /// Average trades per second per product, as `f64` bits (changed at run time by
    /// [`Exchange::set_trades_per_second`]).
    trades_per_second: AtomicU64,
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
        if !valid_rate(trades_per_second) {
            anyhow::bail!(
                "trades per second must be a number from 0 to {MAX_TRADES_PER_SECOND}, not {trades_per_second}"
            );
        }
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
            trades_per_second: AtomicU64::new(trades_per_second.to_bits()),
            log,
            started: now,
            paused: std::sync::atomic::AtomicBool::new(false),
        };
        for id in product_ids {
            if ProductId::parse(id).is_err() {
                anyhow::bail!("{} is not a product id", spot_canvas_model::shown(id));
            }
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

    /// Adds a trading product (no-op if it exists, or if `product_id` is not a product id).
    /// `price` overrides the spec's start price.
    pub fn add_product(&self, product_id: &str, price: Option<f64>) -> bool {
        let Ok(id) = ProductId::parse(product_id) else {
            return false;
        };
        let mut state = self.lock();
        if state.by_id.contains_key(product_id) {
            return false;
        }
        let spec = MarketSpec::for_product(product_id);
        let price = price.filter(|p| *p > 0.0).unwrap_or(spec.start_price);
        let first_id = 1_000_000 + (state.rng.random::<u32>() as u64) * 1000;
        let index = state.products.len();
        state.products.push(ProductState {
            id,
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

    /// Takes the next trade id of `product_id` for a trade a fault adds to a frame, so it
    /// collides with no real trade; `None` for an unknown product.
    pub fn allocate_trade_id(&self, product_id: &str) -> Option<u64> {
        let mut state = self.lock();
        let &i = state.by_id.get(product_id)?;
        let product = &mut state.products[i];
        let id = product.next_trade_id;
        product.next_trade_id += 1;
        Some(id)
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

    /// Average trades per second per product.
    pub fn trades_per_second(&self) -> f64 {
        f64::from_bits(self.trades_per_second.load(Ordering::Relaxed))
    }

    /// Changes the average trades per second per product from the next tick on (a burst, a
    /// lull). Refuses (returns false) a rate that is negative, not finite or over
    /// [`MAX_TRADES_PER_SECOND`].
    pub fn set_trades_per_second(&self, rate: f64) -> bool {
        if !valid_rate(rate) {
            return false;
        }
        self.trades_per_second
            .store(rate.to_bits(), Ordering::Relaxed);
        true
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
}

#[cfg(test)]
mod tests;
