//! Runs: the accepted trades of one product and one minute that follow each other in a
//! batch, tallied first and then merged into the 8 granularities at once. Coinbase sends a
//! product's trades of up to 250 ms in one frame, so a frame is nearly always one run, and
//! a run of n trades costs n small tally additions and 8 checked merges instead of 8n checked
//! additions.
//!
//! In: trades (by their index in the batch) that passed the per-trade checks. Out: the run's
//! tally, or, when a sum of the run itself would overflow, the word that its trades must go
//! one by one (so only the trade that overflows is rejected).

use super::tally::Tally;
use crate::model::Trade;

/// The run being gathered.
#[derive(Debug, Default)]
pub(crate) struct Run {
    /// Start of the run's minute, Unix seconds.
    pub(crate) minute: i64,
    /// Indices of the run's trades in the batch, in batch order.
    pub(crate) members: Vec<usize>,
    pub(crate) tally: Option<Tally>,
    /// A sum of the run's own tally would overflow: its trades must go one by one.
    pub(crate) overflow: bool,
}

impl Run {
    /// Whether `t` (of the minute starting at `minute`) may join: the run is empty, or
    /// holds trades of the same product and minute.
    pub(crate) fn takes(&self, t: &Trade, minute: i64, batch: &[Trade]) -> bool {
        self.members
            .first()
            .is_none_or(|&first| self.minute == minute && batch[first].product_id == t.product_id)
    }

    /// Adds the trade at `index` of the batch (which [`Run::takes`]).
    pub(crate) fn push(&mut self, index: usize, t: &Trade, minute: i64) {
        self.minute = minute;
        self.members.push(index);
        if self.overflow {
            return;
        }
        match &mut self.tally {
            None => self.tally = Some(Tally::of(t)),
            Some(tally) => match tally.sums_with(t) {
                Some(sums) => tally.add(t, sums),
                None => self.overflow = true,
            },
        }
    }

    /// Empties the run, keeping its buffer.
    pub(crate) fn clear(&mut self) {
        self.members.clear();
        self.tally = None;
        self.overflow = false;
    }
}
