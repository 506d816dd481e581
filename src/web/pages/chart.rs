//! `GET /markets/{product}/stream`: one product's chart and header, live.
//!
//! In: the product, the granularity (a parameter or the page's signal), the stored history
//! (the newest [`CHART_HISTORY`] candles), the live state. Out: Datastar events: the
//! connection signal; a `<spot-chart>` holding the history as `<spot-candle>` children (ids
//! `<product>-<granularity>-<start>`), which replaces the page's chart so that a granularity
//! switch reloads the history without a page reload; the header; then the live candles: a
//! bucket the chart holds is morphed in place by id (the forming candle moving, a revision, its
//! completion), a new bucket is appended to the chart. Changes are coalesced per bucket over
//! [`FLUSH`].

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use datastar::prelude::{ElementPatchMode, PatchElements};

use super::templates::{SummaryPartial, render};
use super::view::{ProductInfo, Row};
use super::{CHART_HISTORY, live, query};
use crate::live::LiveEntry;
use crate::live::element::{ElementId, candle_element, escape};
use crate::model::{CandleUpdate, Granularity, ProductId, Version};
use crate::store::StoredCandle;
use crate::web::AppState;
use crate::web::catalog::UNAVAILABLE;
use crate::web::error::{ApiError, ReadError, within};
use crate::web::serve::Connection;
use crate::web::session::{Events, View};

/// Longest a changed candle waits before it is sent.
pub const FLUSH: Duration = Duration::from_millis(250);
/// Buckets a chart may hold beyond [`CHART_HISTORY`] before the oldest are removed.
const TRIM_SLACK: usize = 60;
/// Longest the history read may take.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);

/// The handler.
pub async fn chart_stream(
    State(state): State<AppState>,
    Path(product_id): Path<String>,
    connection: Option<Extension<Connection>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    state.streams.open()?;
    let query = query::parse(raw.as_deref()).map_err(ApiError::bad_request)?;
    let no_such_market = || ApiError::not_found("no such market; GET /api/v1/products lists them");
    let product_id = ProductId::from_client(&product_id).map_err(|_| no_such_market())?;
    let product = state
        .products
        .product(&product_id)
        .await
        .map_err(|_| ApiError::unavailable(UNAVAILABLE, "5"))?
        .ok_or_else(no_such_market)?;
    let connection = connection.map(|Extension(c)| c);
    let session = state.streams.admit(connection.as_ref(), &headers)?;
    let granularity = query.granularity;
    let now = Utc::now();
    let span = chrono::Duration::seconds(granularity.seconds() * i64::from(CHART_HISTORY + 2));
    let history = within(
        HISTORY_TIMEOUT,
        state.repository.candles(
            &product.id,
            granularity,
            now - span,
            now + chrono::Duration::seconds(granularity.seconds() * 2),
            CHART_HISTORY,
        ),
    )
    .await
    .inspect_err(|error| {
        tracing::warn!(%error, product = %product.id, "a chart's history read failed");
    })
    .map_err(|e| match e {
        ReadError::Failed { .. } => {
            ApiError::unavailable("the history is not available; retry shortly", "2")
        }
        ReadError::TimedOut(_) => {
            ApiError::unavailable("the history read timed out; retry shortly", "2")
        }
    })?;
    let product = Arc::new(product);
    let chart = Chart {
        product: product.clone(),
        granularity,
        history,
        held: HashMap::new(),
        changed: BTreeMap::new(),
        newest: None,
        summary_dirty: false,
        summary_sent: 0,
        state: state.clone(),
    };
    let ids = std::slice::from_ref(&product.id);
    Ok(live::respond(
        &state,
        session,
        &query,
        Some(ids),
        &headers,
        chart,
    ))
}

/// Drops the oldest buckets of `held` beyond [`CHART_HISTORY`] once it holds more than
/// [`TRIM_SLACK`] extra; returns the selector of their elements.
fn trim(
    held: &mut HashMap<i64, Version>,
    product: &str,
    granularity: Granularity,
) -> Option<String> {
    if held.len() <= CHART_HISTORY as usize + TRIM_SLACK {
        return None;
    }
    let mut starts: Vec<i64> = held.keys().copied().collect();
    starts.sort_unstable();
    let excess = starts.len() - CHART_HISTORY as usize;
    let selector = starts[..excess]
        .iter()
        .map(|start| {
            held.remove(start);
            // An attribute selector: `#1INCH-USD-…` is not a valid CSS id selector (a leading
            // digit), and the catalog's ids hold no quote.
            format!(
                "[id=\"{}-{}-{start}\"]",
                escape(product),
                granularity.as_str()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Some(selector)
}

/// A stored candle as the update it was written from.
pub fn stored_update(stored: StoredCandle) -> CandleUpdate {
    let version = Version::from_bytes(&stored.version).unwrap_or_default();
    CandleUpdate {
        complete: stored.complete,
        revision: stored.revision,
        counted_trades: version.trade_count,
        last_trade_id: version.last_trade_id,
        last_trade_time: stored.last_trade_time.unwrap_or(stored.candle.start),
        last_received: stored.last_update,
        candle: stored.candle,
    }
}

/// A chart's view: the history and the live candles of one product in one granularity, and
/// its header.
struct Chart {
    state: AppState,
    product: Arc<ProductInfo>,
    granularity: Granularity,
    /// The stored candles the chart opens with (taken by `open`).
    history: Vec<StoredCandle>,
    /// The version of every bucket the page's chart holds, by start.
    held: HashMap<i64, Version>,
    /// Buckets changed since the last flush.
    changed: BTreeMap<i64, CandleUpdate>,
    /// The newest bucket: the header's candle.
    newest: Option<CandleUpdate>,
    summary_dirty: bool,
    summary_sent: u64,
}

impl View for Chart {
    fn open(&mut self, initial: Vec<Arc<LiveEntry>>, out: &mut Events) {
        live::live_signal(out);
        let mut buckets: BTreeMap<i64, CandleUpdate> = BTreeMap::new();
        for stored in std::mem::take(&mut self.history) {
            let update = stored_update(stored);
            buckets.insert(update.candle.start.timestamp(), update);
        }
        for entry in &initial {
            if entry.update.candle.granularity != self.granularity {
                continue;
            }
            let start = entry.update.candle.start.timestamp();
            let newer = buckets
                .get(&start)
                .is_none_or(|held| held.version() < entry.update.version());
            if newer {
                buckets.insert(start, entry.update.clone());
            }
        }
        let p = &self.product;
        let mut html = format!(
            "<spot-chart id=\"chart\" data-product=\"{}\" data-granularity=\"{}\" data-price-increment=\"{}\">",
            escape(&p.id),
            self.granularity.as_str(),
            p.price_increment
                .map(|i| i.normalize().to_string())
                .unwrap_or_default()
        );
        for (start, update) in &buckets {
            html.push('\n');
            html.push_str(&candle_element(update, ElementId::Bucket));
            self.held.insert(*start, update.version());
        }
        html.push_str("\n</spot-chart>");
        self.newest = buckets.into_values().next_back();
        out.push(
            PatchElements::new(html)
                .mode(ElementPatchMode::Replace)
                .into_datastar_event(),
        );
        self.summary_dirty = true;
        self.push_summary(out);
    }

    fn note(&mut self, entries: &[Arc<LiveEntry>], _resync: bool, _out: &mut Events) {
        for entry in entries {
            self.note_one(entry);
        }
    }

    fn timers(&self) -> Vec<Duration> {
        vec![FLUSH]
    }

    fn tick(&mut self, _timer: usize, out: &mut Events) {
        self.flush(out);
    }
}

impl Chart {
    fn note_one(&mut self, entry: &LiveEntry) {
        let update = &entry.update;
        if update.candle.product_id != self.product.id {
            return;
        }
        if update.candle.granularity == Granularity::OneMinute {
            self.summary_dirty = true;
        }
        if update.candle.granularity != self.granularity {
            return;
        }
        let start = update.candle.start.timestamp();
        let version = update.version();
        let known = self
            .changed
            .get(&start)
            .map(CandleUpdate::version)
            .or_else(|| self.held.get(&start).copied());
        if known.is_some_and(|k| k >= version) {
            return;
        }
        if self
            .newest
            .as_ref()
            .is_none_or(|n| n.candle.start.timestamp() <= start)
        {
            self.newest = Some(update.clone());
            self.summary_dirty = true;
        }
        self.changed.insert(start, update.clone());
    }

    fn flush(&mut self, out: &mut Events) {
        if !self.changed.is_empty() {
            let mut morphs = String::new();
            let mut appends = String::new();
            for (start, update) in std::mem::take(&mut self.changed) {
                let element = candle_element(&update, ElementId::Bucket);
                let target = if self.held.contains_key(&start) {
                    &mut morphs
                } else {
                    &mut appends
                };
                if !target.is_empty() {
                    target.push('\n');
                }
                target.push_str(&element);
                self.held.insert(start, update.version());
            }
            if !morphs.is_empty() {
                out.push(PatchElements::new(morphs).into_datastar_event());
            }
            if !appends.is_empty() {
                out.push(
                    PatchElements::new(appends)
                        .selector("#chart")
                        .mode(ElementPatchMode::Append)
                        .into_datastar_event(),
                );
            }
            self.trim(out);
        }
        self.push_summary(out);
    }

    /// Past [`CHART_HISTORY`] and some slack, the oldest buckets leave the page's chart (and
    /// this stream's memory): a page left open for a week stays the size it opened at.
    fn trim(&mut self, out: &mut Events) {
        if let Some(selector) = trim(&mut self.held, &self.product.id, self.granularity) {
            out.push(PatchElements::new_remove(selector).into_datastar_event());
        }
    }

    fn push_summary(&mut self, out: &mut Events) {
        if !self.summary_dirty {
            return;
        }
        self.summary_dirty = false;
        let now = Utc::now();
        let day = self
            .state
            .live
            .day()
            .summary(&self.product.id, now.timestamp());
        let row = Row::new(
            &self.product,
            self.granularity,
            self.newest.as_ref(),
            day.as_ref(),
            now,
        );
        let html = render(&SummaryPartial { row: &row });
        let mut hasher = DefaultHasher::new();
        html.hash(&mut hasher);
        let h = hasher.finish();
        if h == self.summary_sent {
            return;
        }
        self.summary_sent = h;
        out.push(PatchElements::new(html).into_datastar_event());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_past_its_slack_drops_its_oldest_buckets() {
        let mut held: HashMap<i64, Version> = (0..CHART_HISTORY as i64 + TRIM_SLACK as i64)
            .map(|i| (i * 60, Version::default()))
            .collect();
        assert_eq!(trim(&mut held, "1INCH-USD", Granularity::OneMinute), None);
        held.insert(1_000_000, Version::default());
        let selector = trim(&mut held, "1INCH-USD", Granularity::OneMinute).expect("trimmed");
        assert_eq!(held.len(), CHART_HISTORY as usize);
        assert!(
            selector
                .starts_with("[id=\"1INCH-USD-ONE_MINUTE-0\"], [id=\"1INCH-USD-ONE_MINUTE-60\"]")
        );
        assert_eq!(selector.matches("[id=").count(), TRIM_SLACK + 1);
        assert!(!held.contains_key(&0) && held.contains_key(&1_000_000));
    }
}
