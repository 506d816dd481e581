//! Board rows rendered once for every page showing them.
//!
//! In: a product's row inputs (its candle's version, its rolling day, whether it is stale, how
//! much of the day is known). Out: the row's HTML on one line and its hash, shared: every board
//! stream of a granularity asks for the same rows, and a row is rendered again only when one of
//! its inputs changed. Without it each open board rendered every changed row itself. One line:
//! an event carries a `data: elements ` prefix per line of HTML, a sixth of a row when it kept
//! the template's lines.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use super::templates::{RowPartial, render};
use super::view::{ProductInfo, Row, STALE_SECS};
use crate::live::day::{DaySummary, WINDOW_SECS};
use crate::model::{CandleUpdate, Granularity, ProductId, Version};

/// What a row's HTML depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    /// The product as the catalog lists it (its increment sets the price format).
    product: ProductInfo,
    version: Option<[u8; Version::BYTES]>,
    day: Option<DaySummary>,
    stale: bool,
    /// Minutes of the day known (the span shown while the window fills).
    covered_minutes: i64,
}

/// A rendered row.
#[derive(Debug, Clone)]
pub struct RenderedRow {
    pub html: Arc<str>,
    pub hash: u64,
}

#[derive(Debug)]
struct Cached {
    inputs: Inputs,
    row: RenderedRow,
}

/// The shared cache, one entry per product and granularity.
#[derive(Debug, Default)]
pub struct RowCache {
    rows: Mutex<HashMap<(ProductId, Granularity), Cached>>,
}

impl RowCache {
    /// How many rows are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the rows of products not in `products` (sorted by id, the catalog's list): a
    /// delisted product's rows go.
    pub fn keep_only(&self, products: &[ProductInfo]) {
        self.lock()
            .retain(|(id, _), _| products.binary_search_by(|p| p.id.cmp(id)).is_ok());
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(ProductId, Granularity), Cached>> {
        // Entries are replaced whole: a panic elsewhere cannot leave one half-written.
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The row of `product`, rendered only if its inputs changed since it was last asked for.
    pub fn row(
        &self,
        product: &ProductInfo,
        granularity: Granularity,
        update: Option<&CandleUpdate>,
        day: Option<DaySummary>,
        now: DateTime<Utc>,
    ) -> RenderedRow {
        let inputs = Inputs {
            product: product.clone(),
            version: update.map(|u| u.version().to_bytes()),
            stale: update.is_some_and(|u| (now - u.last_received).num_seconds() > STALE_SECS),
            covered_minutes: day.as_ref().map_or(0, |d| {
                (now.timestamp() - d.since).clamp(0, WINDOW_SECS) / 60
            }),
            day,
        };
        let key = (product.id.clone(), granularity);
        if let Some(cached) = self.lock().get(&key)
            && cached.inputs == inputs
        {
            return cached.row.clone();
        }
        // Rendered outside the lock: other streams are not held up by it.
        let row = Row::new(product, granularity, update, inputs.day.as_ref(), now);
        let html: Arc<str> = Arc::from(one_line(&render(&RowPartial { row: &row })));
        let mut hasher = DefaultHasher::new();
        html.hash(&mut hasher);
        let rendered = RenderedRow {
            html,
            hash: hasher.finish(),
        };
        self.lock().insert(
            key,
            Cached {
                inputs,
                row: rendered.clone(),
            },
        );
        rendered
    }
}

/// `html` on one line: each line trimmed, joined by single spaces. The template's line breaks
/// and indentation fall between tags or between attributes, where one space means the same.
fn one_line(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    for line in html.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_one_line_with_single_spaces_between_tags_and_attributes() {
        let html = "<div id=\"row-A\"\n     data-x=\"1\">\n  <span>1,000.50</span>\n\n  <span title=\"a b\">x</span>\n</div>\n";
        assert_eq!(
            one_line(html),
            "<div id=\"row-A\" data-x=\"1\"> <span>1,000.50</span> <span title=\"a b\">x</span> </div>"
        );
    }
}
