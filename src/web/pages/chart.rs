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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use chrono::Utc;
use datastar::prelude::{ElementPatchMode, PatchElements, PatchSignals};
use tokio::sync::watch;
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;

use super::pump::{beat, interval, reload_changed};
use super::templates::{SummaryPartial, render};
use super::view::{ProductInfo, Row};
use super::{CHART_HISTORY, dev, query};
use crate::live::element::{ElementId, candle_element, escape};
use crate::live::{Delivery, Filter, LiveEntry, Subscription};
use crate::model::{CandleUpdate, Granularity, ProductId, Version};
use crate::store::StoredCandle;
use crate::web::AppState;
use crate::web::json::error;
use crate::web::serve::Connection;
use crate::web::stream::gate::Permit;
use crate::web::stream::{admit, event_stream, retry_after, stopping};

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
) -> Response {
    if state.streams.stop.is_cancelled() {
        return stopping();
    }
    let query = match query::parse(raw.as_deref()) {
        Ok(query) => query,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let Ok(product_id) = ProductId::from_client(&product_id) else {
        return error(
            StatusCode::NOT_FOUND,
            "no such market; GET /api/v1/products lists them",
        );
    };
    let product = match state.pages.catalog.product(&product_id).await {
        Ok(Some(product)) => product,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "no such market; GET /api/v1/products lists them",
            );
        }
        Err(message) => {
            return retry_after(error(StatusCode::SERVICE_UNAVAILABLE, message), "5");
        }
    };
    let connection = connection.map(|Extension(c)| c);
    let permit = match admit(&state.streams, connection.as_ref(), &headers) {
        Ok(permit) => permit,
        Err(refusal) => return *refusal,
    };
    let granularity = query.granularity;
    let now = Utc::now();
    let span = chrono::Duration::seconds(granularity.seconds() * i64::from(CHART_HISTORY + 2));
    let history = tokio::time::timeout(
        HISTORY_TIMEOUT,
        state.repository.candles(
            &product.id,
            granularity,
            now - span,
            now + chrono::Duration::seconds(granularity.seconds() * 2),
            CHART_HISTORY,
        ),
    )
    .await;
    let history = match history {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::config::redact(&e.to_string()), product = %product.id, "cannot read a chart's history");
            return retry_after(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the history is not available; retry shortly",
                ),
                "2",
            );
        }
        Err(_elapsed) => {
            tracing::warn!(product = %product.id, "a chart's history read timed out");
            return retry_after(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the history read timed out; retry shortly",
                ),
                "2",
            );
        }
    };
    let mut granularities = vec![granularity];
    if granularity != Granularity::OneMinute {
        granularities.push(Granularity::OneMinute);
    }
    let cut_off = connection
        .as_ref()
        .map(|c| c.close.clone())
        .unwrap_or_default();
    let (subscription, initial) = state.live.subscribe(
        Filter::of(std::slice::from_ref(&product.id), &granularities),
        state.streams.page_settings(),
        cut_off,
    );
    let stale_build = state.pages.dev.is_some()
        && query
            .build
            .as_deref()
            .is_some_and(|b| b != state.pages.build);
    let reload = state.pages.dev.as_ref().map(dev::DevReload::subscribe);
    let mut chart = Chart {
        product: Arc::new(product),
        granularity,
        held: HashMap::new(),
        changed: BTreeMap::new(),
        newest: None,
        summary_dirty: false,
        summary_sent: 0,
        pending: VecDeque::new(),
        subscription,
        flush: interval(FLUSH),
        keepalive: interval(state.streams.config.keepalive),
        beats: 0,
        stop: state.streams.stop.clone(),
        reload,
        state,
        _permit: permit,
    };
    chart.open(history, initial, stale_build);
    let events = futures_util::stream::unfold(chart, |mut chart| async move {
        let chunk = chart.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), chart))
    });
    event_stream(Body::from_stream(events))
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

struct Chart {
    state: AppState,
    product: Arc<ProductInfo>,
    granularity: Granularity,
    /// The version of every bucket the page's chart holds, by start.
    held: HashMap<i64, Version>,
    /// Buckets changed since the last flush.
    changed: BTreeMap<i64, CandleUpdate>,
    /// The newest bucket: the header's candle.
    newest: Option<CandleUpdate>,
    summary_dirty: bool,
    summary_sent: u64,
    pending: VecDeque<Bytes>,
    subscription: Subscription,
    flush: Interval,
    keepalive: Interval,
    /// Heartbeats sent.
    beats: u64,
    stop: CancellationToken,
    reload: Option<watch::Receiver<u64>>,
    _permit: Permit,
}

impl Chart {
    fn open(&mut self, history: Vec<StoredCandle>, initial: Vec<Arc<LiveEntry>>, stale: bool) {
        if stale {
            self.pending.push_back(dev::reload_event());
        }
        let signals = PatchSignals::new(r#"{"_link":"live"}"#).into_datastar_event();
        self.pending.push_back(crate::sse::render(signals));
        let mut buckets: BTreeMap<i64, CandleUpdate> = BTreeMap::new();
        for stored in history {
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
        let chart = PatchElements::new(html)
            .mode(ElementPatchMode::Replace)
            .into_datastar_event();
        self.pending.push_back(crate::sse::render(chart));
        self.summary_dirty = true;
        self.push_summary();
    }

    fn note(&mut self, entry: &LiveEntry) {
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

    fn flush(&mut self) {
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
                let event = PatchElements::new(morphs).into_datastar_event();
                self.pending.push_back(crate::sse::render(event));
            }
            if !appends.is_empty() {
                let event = PatchElements::new(appends)
                    .selector("#chart")
                    .mode(ElementPatchMode::Append)
                    .into_datastar_event();
                self.pending.push_back(crate::sse::render(event));
            }
            self.trim();
        }
        self.push_summary();
    }

    /// Past [`CHART_HISTORY`] and some slack, the oldest buckets leave the page's chart (and
    /// this stream's memory): a page left open for a week stays the size it opened at.
    fn trim(&mut self) {
        if let Some(selector) = trim(&mut self.held, &self.product.id, self.granularity) {
            let event = PatchElements::new_remove(selector).into_datastar_event();
            self.pending.push_back(crate::sse::render(event));
        }
    }

    fn push_summary(&mut self) {
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
        let event = PatchElements::new(html).into_datastar_event();
        self.pending.push_back(crate::sse::render(event));
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                changed = reload_changed(&mut self.reload) => {
                    if changed {
                        self.pending.push_back(dev::reload_event());
                    }
                }
                _ = self.flush.tick() => self.flush(),
                _ = self.keepalive.tick() => {
                    self.beats += 1;
                    let every = self.keepalive.period();
                    self.pending.push_back(beat(self.beats, every));
                }
                delivery = self.subscription.next() => match delivery {
                    Delivery::Updates(entries) | Delivery::Resync(entries) => {
                        for entry in &entries {
                            self.note(entry);
                        }
                    }
                    Delivery::CutOff => return None,
                },
            }
        }
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
