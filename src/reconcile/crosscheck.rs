//! Cross-check: stored one-minute candles compared with Coinbase's REST candles.
//!
//! In: a round of products, each with how far it was checked before; the stored complete
//! live minutes since then (up to a lag behind the clock, so REST has settled) and REST's.
//! Out: per product how far it was checked and the minutes that did not match (the scheduler
//! repairs them), and the match counts for `/health`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use chrono::TimeDelta;

use super::Worker;
use super::windows::at;
use crate::candles::crosscheck::{CrossCheck, Verdict, compare};
use crate::coinbase::pacer::Priority;
use crate::model::{Candle, Granularity, ProductId};

/// Minutes compared per product at most (the first round of a product).
const CHECK_MINUTES: i64 = 30;

/// What a cross-check round found for one product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checked {
    pub(crate) product: ProductId,
    /// Minutes before this were compared.
    pub(crate) until: i64,
    /// Starts of the minutes that did not match REST.
    pub(crate) wrong: Vec<i64>,
}

impl Worker {
    /// Compares the complete one-minute candles stored since the last check of each product
    /// with REST's. Returns how far each product was checked, and the wrong minutes.
    pub(super) async fn check_round(self, round: Vec<(ProductId, Option<i64>)>) -> Vec<Checked> {
        let minute = Granularity::OneMinute;
        let lag = self.settings.timing.grace
            + TimeDelta::from_std(self.settings.settle * 2).unwrap_or_default();
        let to = minute.bucket_start_secs((self.clock.now() - lag).timestamp());
        let mut out = Vec::new();
        for (product, since) in round {
            let from = since.unwrap_or(i64::MIN).max(to - CHECK_MINUTES * 60);
            if from >= to {
                continue;
            }
            match self.check(&product, from, to).await {
                Ok(wrong) => out.push(Checked {
                    product,
                    until: to,
                    wrong,
                }),
                Err(e) => {
                    tracing::warn!(product = %product, error = %e, "cross-check with REST failed")
                }
            }
        }
        out
    }

    /// Compares one product's minutes in `[from, to)`; returns the starts of the wrong ones.
    async fn check(&self, product: &ProductId, from: i64, to: i64) -> anyhow::Result<Vec<i64>> {
        let minute = Granularity::OneMinute;
        let ours = self
            .repository
            .candles(product, minute, at(from), at(to), CHECK_MINUTES as u32 + 1)
            .await?;
        let theirs = self
            .client
            .candles(product, minute, from, to, Priority::Low)
            .await?;
        let theirs: BTreeMap<i64, Candle> = theirs
            .into_iter()
            .map(|c| (c.start.timestamp(), c))
            .collect();
        let mut ours_at = BTreeSet::new();
        let mut wrong = Vec::new();
        for stored in ours {
            ours_at.insert(stored.candle.start.timestamp());
            // Ours from REST are REST's: nothing to compare.
            if stored.backfilled || !stored.complete {
                continue;
            }
            let start = stored.candle.start.timestamp();
            let check = match theirs.get(&start) {
                Some(theirs) => CrossCheck {
                    verdict: compare(&stored.candle, theirs, true),
                    theirs: theirs.clone(),
                    ours: stored.candle,
                },
                None => {
                    // Coinbase has no trades in a minute we have a candle for.
                    let mut nothing = stored.candle.clone();
                    nothing.volume = rust_decimal::Decimal::ZERO;
                    CrossCheck {
                        verdict: Verdict::Mismatch,
                        theirs: nothing,
                        ours: stored.candle,
                    }
                }
            };
            self.stats.rest_1m.record("rest_1m", &check);
            if check.verdict == Verdict::Mismatch {
                wrong.push(start);
            }
        }
        let missing = theirs.keys().filter(|s| !ours_at.contains(s)).count() as u64;
        if missing > 0 {
            tracing::warn!(
                product = %product,
                missing,
                "cross-check: REST has minutes we have no candle for"
            );
            self.stats
                .rest_1m_missing
                .fetch_add(missing, Ordering::Relaxed);
        }
        Ok(wrong)
    }
}
