//! The rolling 24-hour change and volume of every product, as exchanges show them, from the
//! one-minute candles.
//!
//! In: one-minute candle updates (the live state records each one it sees, and the web role
//! seeds the last day from the database at start). Out: per product, a [`DaySummary`]: the
//! price a day ago (the open of the oldest minute in the window), the last price, the change,
//! and the exact sum of the window's volumes.
//!
//! The window is the 1,440 one-minute buckets ending with the current one. Each bucket keeps
//! only its newest version, so a revision replaces what it revises and a stale copy changes
//! nothing. The volume is a running sum kept with checked arithmetic: exact, and when a sum
//! would overflow (amounts near `Decimal::MAX`) the window's volume is unknown rather than
//! wrong, until the offending minutes leave it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::model::{CandleUpdate, Granularity, ProductId, Version};
use crate::store::Repository;

/// Buckets in the window.
pub const MINUTES: i64 = 1440;
/// Seconds in the window.
pub const WINDOW_SECS: i64 = MINUTES * 60;

/// One bucket of the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minute {
    /// Bytes of the update's [`Version`]: bytewise order is version order.
    pub version: [u8; Version::BYTES],
    pub open: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
}

impl Minute {
    /// The bucket of a one-minute update.
    pub fn of(update: &CandleUpdate) -> Minute {
        Minute {
            version: update.version().to_bytes(),
            open: update.candle.open,
            close: update.candle.close,
            volume: update.candle.volume,
        }
    }
}

/// What the board shows of a product's last day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaySummary {
    /// The open of the oldest minute in the window: the price a day ago, when the window is
    /// full.
    pub open: Decimal,
    /// The close of the newest minute.
    pub last: Decimal,
    /// `last - open`; `None` if it overflows.
    pub change: Option<Decimal>,
    /// Sum of the window's volumes; `None` if it overflows.
    pub volume: Option<Decimal>,
    /// Start (Unix seconds) of the oldest minute in the window.
    pub since: i64,
    /// Minutes in the window that hold a candle.
    pub minutes: usize,
}

impl DaySummary {
    /// The change in percent of the open, rounded to `dp` decimals; `None` when the open is
    /// zero or the division overflows.
    pub fn change_percent(&self, dp: u32) -> Option<Decimal> {
        percent(self.open, self.change?, dp)
    }
}

/// `change / base × 100`, rounded to `dp` decimals, with checked arithmetic.
pub fn percent(base: Decimal, change: Decimal, dp: u32) -> Option<Decimal> {
    if base.is_zero() {
        return None;
    }
    change
        .checked_mul(Decimal::ONE_HUNDRED)?
        .checked_div(base)
        .map(|p| p.round_dp(dp))
}

#[derive(Debug, Default)]
struct Window {
    minutes: BTreeMap<i64, Minute>,
    /// Running sum of the minutes' volumes; `None` when it could not be kept (overflow).
    volume: Option<Decimal>,
}

impl Window {
    /// Takes `minute` at `start` if it is newer than what the bucket holds.
    fn record(&mut self, start: i64, minute: Minute) -> bool {
        let previous = match self.minutes.get(&start) {
            Some(held) if held.version >= minute.version => return false,
            Some(held) => Some(held.volume),
            None => None,
        };
        let volume = minute.volume;
        self.minutes.insert(start, minute);
        self.volume = match (self.volume, previous) {
            (Some(sum), Some(old)) => sum.checked_sub(old).and_then(|s| s.checked_add(volume)),
            (Some(sum), None) => sum.checked_add(volume),
            (None, _) => self.sum(),
        };
        true
    }

    /// Drops the minutes that start at or before `floor`. When any goes, the sum is made
    /// again from scratch (once a minute at most): `Decimal` rounds a sum whose scale it must
    /// shrink instead of failing, so a running sum could drift from the exact one by a last
    /// digit; this bounds that to the current minute.
    fn expire(&mut self, floor: i64) {
        let mut dropped = false;
        while let Some(entry) = self.minutes.first_entry() {
            if *entry.key() > floor {
                break;
            }
            entry.remove();
            dropped = true;
        }
        if dropped {
            self.volume = self.sum();
        }
    }

    /// The sum of every minute's volume, from scratch (`None` on overflow).
    fn sum(&self) -> Option<Decimal> {
        self.minutes
            .values()
            .try_fold(Decimal::ZERO, |sum, m| sum.checked_add(m.volume))
    }

    fn summary(&self) -> Option<DaySummary> {
        let (&since, oldest) = self.minutes.first_key_value()?;
        let (_, newest) = self.minutes.last_key_value()?;
        Some(DaySummary {
            open: oldest.open,
            last: newest.close,
            change: newest.close.checked_sub(oldest.open),
            volume: self.volume,
            since,
            minutes: self.minutes.len(),
        })
    }
}

/// The last day of every product: a lock per product, so that the ingest path recording one
/// product and the boards reading others do not wait on each other.
#[derive(Debug, Default)]
pub struct DayStats {
    windows: RwLock<HashMap<ProductId, Arc<Mutex<Window>>>>,
}

fn lock(window: &Mutex<Window>) -> MutexGuard<'_, Window> {
    window.lock().unwrap_or_else(|e| e.into_inner())
}

/// The start of the oldest bucket a window at `now` excludes: buckets must start after it.
fn floor(now: i64) -> i64 {
    now.div_euclid(60) * 60 - WINDOW_SECS
}

impl DayStats {
    pub fn new() -> Self {
        DayStats::default()
    }

    /// The window of a product, if it has one.
    fn window(&self, product_id: &str) -> Option<Arc<Mutex<Window>>> {
        // A panic while holding a lock cannot leave a window in a state that matters more than
        // the board's 24-hour figures: keep serving.
        let windows = self.windows.read().unwrap_or_else(|e| e.into_inner());
        windows.get(product_id).cloned()
    }

    fn window_or_new(&self, product_id: &ProductId) -> Arc<Mutex<Window>> {
        if let Some(window) = self.window(product_id) {
            return window;
        }
        let mut windows = self.windows.write().unwrap_or_else(|e| e.into_inner());
        windows
            .entry(product_id.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Window {
                    volume: Some(Decimal::ZERO),
                    ..Window::default()
                }))
            })
            .clone()
    }

    /// Records a one-minute update (others are ignored). `now`: Unix seconds. Returns whether
    /// it changed the window.
    pub fn record(&self, update: &CandleUpdate, now: i64) -> bool {
        if update.candle.granularity != Granularity::OneMinute {
            return false;
        }
        self.record_minute(
            &update.candle.product_id,
            update.candle.start.timestamp(),
            Minute::of(update),
            now,
        )
    }

    /// Records one bucket of a product. Buckets outside the window (older than a day, or
    /// after the current minute's next) are ignored.
    pub fn record_minute(
        &self,
        product_id: &ProductId,
        start: i64,
        minute: Minute,
        now: i64,
    ) -> bool {
        let floor = floor(now);
        if start <= floor || start > now + 60 {
            return false;
        }
        let window = self.window_or_new(product_id);
        let mut window = lock(&window);
        window.expire(floor);
        window.record(start, minute)
    }

    /// Forgets the products with no minute left in the window at `now` (Unix seconds): a
    /// delisted product's window goes a day after its last trade. Returns how many went.
    pub fn forget_empty(&self, now: i64) -> usize {
        let floor = floor(now);
        let mut windows = self.windows.write().unwrap_or_else(|e| e.into_inner());
        let before = windows.len();
        windows.retain(|_, window| {
            // A window someone else holds may be about to take a minute (it was just got
            // through `window_or_new`): kept, looked at again next time.
            if Arc::strong_count(window) > 1 {
                return true;
            }
            let mut window = lock(window);
            window.expire(floor);
            !window.minutes.is_empty()
        });
        before - windows.len()
    }

    /// The product's last day at `now` (Unix seconds); `None` when no minute of it is in the
    /// window.
    pub fn summary(&self, product_id: &str, now: i64) -> Option<DaySummary> {
        let window = self.window(product_id)?;
        let mut window = lock(&window);
        window.expire(floor(now));
        window.summary()
    }

    /// Seeds the windows of `products` with their stored one-minute candles of the last day
    /// (read through the table's key index, product by product). Newer versions
    /// already recorded from the live path win. Returns (rows taken, rows that could not be
    /// decoded).
    pub async fn seed(
        &self,
        repository: &Repository,
        products: &[ProductId],
        now: DateTime<Utc>,
    ) -> Result<(u64, u64), sqlx::Error> {
        let since = now - chrono::Duration::seconds(WINDOW_SECS);
        let clock = now.timestamp();
        let mut wrong_version = 0u64;
        let (taken, bad) = repository
            .each_minute_since(since, products, |row| {
                let Ok(version) = <[u8; Version::BYTES]>::try_from(row.version.as_slice()) else {
                    wrong_version += 1;
                    return;
                };
                let minute = Minute {
                    version,
                    open: row.open,
                    close: row.close,
                    volume: row.volume,
                };
                self.record_minute(&row.product_id, row.start.timestamp(), minute, clock);
            })
            .await?;
        Ok((taken - wrong_version, bad + wrong_version))
    }

    /// Products with a window.
    pub fn products(&self) -> usize {
        self.windows.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests;
