//! `GET /board/stream`: the board's rows, live, for one granularity.
//!
//! In: the granularity (a parameter or the page's `granularity` signal), the live state
//! (every product's candle of that granularity, and the one-minute candles behind the rolling
//! day), the stage reports. Out: Datastar events: the connection signal, every row at once
//! (an `inner` patch of `#board-rows`, so a granularity switch or a reconnect replaces the
//! whole board), then the rows that changed, patched in place by id. Changes are coalesced:
//! each row is sent at most once per [`FLUSH`] and only when its HTML changed, so hundreds of
//! markets trading several times a second cost the browser a few morphs per row per second.
//! The feed health panel follows every [`HEALTH`]. The stream ends at the stop (the page
//! reconnects to another instance) or when the client is cut off for not reading.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use chrono::Utc;
use datastar::prelude::{ElementPatchMode, PatchElements, PatchSignals};
use tokio::sync::watch;
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;

use super::pump::{beat, interval, reload_changed};
use super::rows::RenderedRow;
use super::templates::{HealthPartial, render};
use super::view::ProductInfo;
use super::{dev, health, query};
use crate::live::{Delivery, Filter, LiveEntry, Subscription};
use crate::model::{CandleUpdate, Granularity, ProductId};
use crate::web::AppState;
use crate::web::json::error;
use crate::web::serve::Connection;
use crate::web::stream::gate::Permit;
use crate::web::stream::{admit, event_stream, retry_after, stopping};

/// Longest a changed row waits before it is sent.
pub const FLUSH: Duration = Duration::from_secs(1);
/// How often the health panel is looked at.
pub const HEALTH: Duration = Duration::from_secs(2);
/// Every this many health ticks, every row is looked at again.
const RECHECK_TICKS: u64 = 15;

/// The handler.
pub async fn board_stream(
    State(state): State<AppState>,
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
    let connection = connection.map(|Extension(c)| c);
    let permit = match admit(&state.streams, connection.as_ref(), &headers) {
        Ok(permit) => permit,
        Err(refusal) => return *refusal,
    };
    let products = match state.pages.catalog.products().await {
        Ok(products) => products,
        Err(message) => {
            return retry_after(error(StatusCode::SERVICE_UNAVAILABLE, message), "5");
        }
    };
    let granularity = query.granularity;
    let mut granularities = vec![granularity];
    if granularity != Granularity::OneMinute {
        // The rolling day moves with the one-minute candles.
        granularities.push(Granularity::OneMinute);
    }
    let cut_off = connection
        .as_ref()
        .map(|c| c.close.clone())
        .unwrap_or_default();
    let (subscription, initial) = state.live.subscribe(
        Filter {
            products: None,
            granularities,
        },
        state.streams.page_settings(),
        cut_off,
    );
    let stale_build = state.pages.dev.is_some()
        && query
            .build
            .as_deref()
            .is_some_and(|b| b != state.pages.build);
    let reload = state.pages.dev.as_ref().map(dev::DevReload::subscribe);
    let mut board = Board {
        index: products
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.clone(), i))
            .collect(),
        products,
        granularity,
        current: HashMap::new(),
        sent: HashMap::new(),
        dirty: HashSet::new(),
        health: None,
        ticks: 0,
        pending: VecDeque::new(),
        subscription,
        flush: interval(FLUSH),
        health_tick: interval(HEALTH),
        keepalive: interval(state.streams.config.keepalive),
        beats: 0,
        stop: state.streams.stop.clone(),
        reload,
        state,
        _permit: permit,
    };
    board.open(initial, stale_build);
    let events = futures_util::stream::unfold(board, |mut board| async move {
        let chunk = board.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), board))
    });
    event_stream(Body::from_stream(events))
}

struct Board {
    state: AppState,
    products: Arc<Vec<ProductInfo>>,
    /// Product id → position in `products`.
    index: HashMap<ProductId, usize>,
    granularity: Granularity,
    /// The newest candle of each product in the board's granularity.
    current: HashMap<ProductId, CandleUpdate>,
    /// Hash of the row last sent, per product.
    sent: HashMap<ProductId, u64>,
    /// Products whose row may have changed since the last flush.
    dirty: HashSet<ProductId>,
    health: Option<HealthPartial>,
    /// Health ticks so far: every [`RECHECK_TICKS`]th, every row is looked at again (a
    /// product turns stale without an update).
    ticks: u64,
    pending: VecDeque<Bytes>,
    subscription: Subscription,
    flush: Interval,
    health_tick: Interval,
    keepalive: Interval,
    /// Heartbeats sent.
    beats: u64,
    stop: CancellationToken,
    reload: Option<watch::Receiver<u64>>,
    _permit: Permit,
}

impl Board {
    /// The opening events: live, every row, the health panel.
    fn open(&mut self, initial: Vec<Arc<LiveEntry>>, stale_build: bool) {
        if stale_build {
            self.pending.push_back(dev::reload_event());
        }
        let signals = PatchSignals::new(r#"{"_link":"live"}"#).into_datastar_event();
        self.pending.push_back(crate::sse::render(signals));
        for entry in &initial {
            self.note(entry);
        }
        self.dirty.clear();
        let now = Utc::now();
        let mut rows = String::with_capacity(self.products.len() * 1500);
        for product in self.products.iter() {
            let row = self.row(product, now);
            self.sent.insert(product.id.clone(), row.hash);
            rows.push_str(&row.html);
            rows.push('\n');
        }
        let rows = PatchElements::new(rows)
            .selector("#board-rows")
            .mode(ElementPatchMode::Inner)
            .into_datastar_event();
        self.pending.push_back(crate::sse::render(rows));
        let count = PatchElements::new(format!(
            "<span id=\"product-count\">{}</span>",
            self.products.len()
        ))
        .into_datastar_event();
        self.pending.push_back(crate::sse::render(count));
        self.push_health();
    }

    /// The product's row, from the cache shared by every board.
    fn row(&self, product: &ProductInfo, now: chrono::DateTime<Utc>) -> RenderedRow {
        let day = self.state.live.day().summary(&product.id, now.timestamp());
        self.state.pages.rows.row(
            product,
            self.granularity,
            self.current.get(&product.id),
            day,
            now,
        )
    }

    /// Takes an update into the board's state.
    fn note(&mut self, entry: &LiveEntry) {
        let update = &entry.update;
        let product = &update.candle.product_id;
        if !self.index.contains_key(product) {
            return;
        }
        if update.candle.granularity == self.granularity {
            let newer = self.current.get(product).is_none_or(|held| {
                held.candle.start < update.candle.start
                    || (held.candle.start == update.candle.start
                        && held.version() < update.version())
            });
            if newer {
                self.current.insert(product.clone(), update.clone());
                self.dirty.insert(product.clone());
            }
        }
        if update.candle.granularity == Granularity::OneMinute {
            // The rolling day (recorded by the live state) moved.
            self.dirty.insert(product.clone());
        }
    }

    /// One event with every changed row.
    fn flush(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let now = Utc::now();
        let mut dirty: Vec<usize> = self
            .dirty
            .drain()
            .filter_map(|p| self.index.get(&p).copied())
            .collect();
        dirty.sort_unstable();
        let products = self.products.clone();
        let mut html = String::new();
        for i in dirty {
            let product = &products[i];
            let row = self.row(product, now);
            if self.sent.get(&product.id) == Some(&row.hash) {
                continue;
            }
            self.sent.insert(product.id.clone(), row.hash);
            html.push_str(&row.html);
            html.push('\n');
        }
        if !html.is_empty() {
            let event = PatchElements::new(html).into_datastar_event();
            self.pending.push_back(crate::sse::render(event));
        }
    }

    fn push_health(&mut self) {
        let health = health(&self.state, self.products.len());
        if self.health.as_ref() == Some(&health) {
            return;
        }
        let event = PatchElements::new(render(&health)).into_datastar_event();
        self.pending.push_back(crate::sse::render(event));
        self.health = Some(health);
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
                _ = self.health_tick.tick() => {
                    self.ticks += 1;
                    if self.ticks.is_multiple_of(RECHECK_TICKS) {
                        self.dirty.extend(self.products.iter().map(|p| p.id.clone()));
                    }
                    self.push_health();
                }
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
