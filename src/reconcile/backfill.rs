//! Backfill of one window: REST one-minute candles for the engine, and history for a product
//! without recent stored minutes.
//!
//! In: a [`Job`] (a product's window), the store's newest minute and stored candles around
//! the window, Coinbase's REST candles. Out: one [`Backfill`] to the engine (the REST minutes,
//! the stored minutes and revisions it needs to recompute the larger candles around them)
//! and, for a fresh or stale product, history candles of every granularity written straight
//! to the store. A failed window is retried whole a few times, then given up (counted).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;

use super::Worker;
use super::windows::{Job, WindowKind, at, ceil_minute};
use crate::backoff::equal_jitter;
use crate::candles::Backfill;
use crate::coinbase::pacer::Priority;
use crate::model::{Candle, CandleUpdate, Granularity, ProductId, TradeId};

/// Attempts of a whole window (REST pages retry on their own) before it is given up.
const JOB_ATTEMPTS: u32 = 10;

/// The history a start fills in before its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum History {
    /// The store holds recent minutes: the window bridges to them.
    None,
    /// Nothing stored: fill holes.
    Fresh,
    /// The newest stored minute is older than the horizon: fill holes, and replace the
    /// buckets from that minute's on (they may be partial).
    Stale { newest: i64 },
}

impl Worker {
    /// Backfills one window, retrying the whole of it a few times.
    pub(super) async fn run_job(self, job: Job) {
        let mut attempt = 0;
        loop {
            match self.backfill(&job).await {
                Ok(()) => {
                    self.stats.windows_done.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) if attempt + 1 < JOB_ATTEMPTS => {
                    let delay = equal_jitter(
                        Duration::from_secs(2),
                        Duration::from_secs(60),
                        attempt,
                        rand::rng().random::<f64>(),
                    );
                    tracing::warn!(
                        product = %job.product,
                        kind = ?job.kind,
                        error = %e,
                        attempt,
                        "backfill failed, retrying"
                    );
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    self.stats.windows_failed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("spot_canvas_backfill_failures_total").increment(1);
                    tracing::error!(
                        product = %job.product,
                        kind = ?job.kind,
                        from = %job.from,
                        to = %job.to,
                        error = %e,
                        "backfill given up: these minutes stay as the live feed built them"
                    );
                    return;
                }
            }
        }
    }

    async fn backfill(&self, job: &Job) -> anyhow::Result<()> {
        let minute = Granularity::OneMinute;
        let (from, history) = match job.kind {
            WindowKind::Start => self.start_of(&job.product, job.to).await?,
            WindowKind::StartEdge
            | WindowKind::Reconnect
            | WindowKind::Gap
            | WindowKind::Repair => (job.from, History::None),
        };
        let from = minute.bucket_start_secs(from.timestamp());
        let to = ceil_minute(job.to);
        if to <= from {
            return Ok(());
        }
        let minutes = self
            .client
            .candles(&job.product, minute, from, to, Priority::High)
            .await?;
        let day = Granularity::OneDay;
        let (first, end) = (
            day.bucket_start_secs(from),
            day.bucket_start_secs(to - 1) + day.seconds(),
        );
        let stored = self
            .repository
            .candles_between(&job.product, at(first), at(end))
            .await?;
        let context: Vec<Candle> = stored
            .iter()
            .filter(|s| s.candle.granularity == minute)
            .filter(|s| !(from..to).contains(&s.candle.start.timestamp()))
            .map(|s| s.candle.clone())
            .collect();
        let revisions = stored
            .iter()
            .map(|s| (s.candle.granularity, s.candle.start.timestamp(), s.revision))
            .collect();
        let fetched = minutes.len() as u64;
        tracing::info!(
            product = %job.product,
            kind = ?job.kind,
            from = %at(from),
            to = %at(to),
            minutes = fetched,
            context = context.len(),
            "backfilling"
        );
        self.backfills
            .send(Backfill {
                product_id: job.product.clone(),
                from,
                to,
                minutes,
                context,
                stored: revisions,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the engine stopped"))?;
        self.stats
            .minutes_fetched
            .fetch_add(fetched, Ordering::Relaxed);
        if history != History::None {
            self.fill_history(&job.product, from, history).await?;
        }
        Ok(())
    }

    /// Where a start window begins, and what history the product needs before it.
    async fn start_of(
        &self,
        product: &ProductId,
        subscribed: DateTime<Utc>,
    ) -> anyhow::Result<(DateTime<Utc>, History)> {
        let now = self.clock.now();
        // The subscribe snapshot may carry trades this old: minutes from here on may already
        // hold this process's own (partial) candles, so they do not count as stored history.
        let reach = subscribed - self.settings.timing.revision_window - TimeDelta::minutes(1);
        let newest = self.repository.newest_minute(product, reach).await?;
        Ok(match newest {
            Some(newest) if newest >= now - self.settings.horizon => {
                (newest.min(reach), History::None)
            }
            _ => {
                // Nothing recent stored: start at a day boundary, so every larger candle
                // over the window is built from whole minutes.
                let day = Granularity::OneDay.bucket_start(reach);
                let history = match (self.settings.history_buckets, newest) {
                    (0, _) => History::None,
                    (_, None) => History::Fresh,
                    (_, Some(newest)) => History::Stale {
                        newest: newest.timestamp(),
                    },
                };
                (day, history)
            }
        })
    }

    /// Writes REST candles of every granularity for the buckets before `until` (which the
    /// engine does not hold) among the newest `history_buckets` of each. Elsewhere existing
    /// rows win (a history candle has the lowest version its bucket can have), but from the
    /// bucket of a stale product's newest stored minute on, where the stored candles may be
    /// partial (the service stopped in them), REST replaces them with a higher revision.
    async fn fill_history(
        &self,
        product: &ProductId,
        until: i64,
        history: History,
    ) -> anyhow::Result<()> {
        let now = self.clock.now();
        let n = i64::from(self.settings.history_buckets);
        let mut written = 0u64;
        for g in Granularity::ALL {
            let from = g.bucket_start_secs(now.timestamp()) - (n - 1) * g.seconds();
            if from >= until {
                continue;
            }
            let candles = self
                .client
                .candles(product, g, from, until, Priority::Low)
                .await?;
            let replace_from = match history {
                History::Stale { newest } => Some(g.bucket_start_secs(newest).max(from)),
                History::None | History::Fresh => None,
            };
            let mut stored: BTreeMap<i64, u32> = BTreeMap::new();
            if let Some(replace_from) = replace_from.filter(|&r| r < until) {
                let rows = self
                    .repository
                    .candles(product, g, at(replace_from), at(until), n as u32 + 1)
                    .await?;
                stored.extend(
                    rows.iter()
                        .map(|r| (r.candle.start.timestamp(), r.revision)),
                );
            }
            let updates: Vec<CandleUpdate> = candles
                .into_iter()
                .map(|candle| {
                    let start = candle.start.timestamp();
                    let revision = match replace_from {
                        Some(r) if start >= r => {
                            stored.get(&start).map_or(0, |r| r.saturating_add(1))
                        }
                        _ => 0,
                    };
                    CandleUpdate {
                        complete: true,
                        revision,
                        counted_trades: 0,
                        last_trade_id: TradeId(0),
                        last_trade_time: candle.end(),
                        last_received: now,
                        candle,
                    }
                })
                .collect();
            written += self.repository.upsert_candles(&updates).await?;
        }
        self.stats
            .history_candles
            .fetch_add(written, Ordering::Relaxed);
        tracing::info!(product = %product, written, ?history, "history filled from REST");
        Ok(())
    }
}
