//! `GET /board/stream`: the board's rows, live, for one granularity.
//!
//! In: the granularity (a parameter or the page's `granularity` signal), the live state
//! (every product's candle of that granularity, and the one-minute candles behind the rolling
//! day), the stage reports, and what the page rendered (the `page` parameter: see
//! [`super::handoff`]). Out: Datastar events: the connection signal, every row at once (an
//! `inner` patch of `#board-rows`, so a granularity switch or a reconnect replaces the whole
//! board), or, on the page's first connection, only the rows that differ from the page's; then
//! the rows that changed, patched in place by id. Changes are coalesced:
//! each row is sent at most once per [`FLUSH`] and only when its HTML changed, so hundreds of
//! markets trading several times a second cost the browser a few morphs per row per second.
//! The feed health panel follows every [`HEALTH`]. The stream ends at the stop (the page
//! reconnects to another instance) or when the client is cut off for not reading.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use datastar::prelude::{ElementPatchMode, PatchElements};

use super::handoff::Rendered;
use super::rows::RenderedRow;
use super::templates::{HealthPartial, render};
use super::view::ProductInfo;
use super::{health, live, query};
use crate::live::LiveEntry;
use crate::model::{CandleUpdate, Granularity, ProductId};
use crate::web::AppState;
use crate::web::catalog::UNAVAILABLE;
use crate::web::error::ApiError;
use crate::web::serve::Connection;
use crate::web::session::{Events, View};

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
) -> Result<Response, ApiError> {
    state.streams.open()?;
    let query = query::parse(raw.as_deref()).map_err(ApiError::bad_request)?;
    let connection = connection.map(|Extension(c)| c);
    let session = state.streams.admit(connection.as_ref(), &headers)?;
    let products = state
        .products
        .shown()
        .await
        .map_err(|_| ApiError::unavailable(UNAVAILABLE, "5"))?;
    let handed = query
        .page
        .and_then(|token| state.pages.handoffs.take(token))
        .filter(|page| page.shows(query.granularity, &products));
    let board = Board {
        handed,
        index: products
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.clone(), i))
            .collect(),
        products,
        granularity: query.granularity,
        current: HashMap::new(),
        sent: HashMap::new(),
        dirty: HashSet::new(),
        health: None,
        ticks: 0,
        state: state.clone(),
    };
    Ok(live::respond(
        &state, session, &query, None, &headers, board,
    ))
}

/// The board's view: every row, then the rows that changed, and the health panel.
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
    /// What the page rendered, until the stream opens from it.
    handed: Option<Rendered>,
    /// Health ticks so far: every [`RECHECK_TICKS`]th, every row is looked at again (a
    /// product turns stale without an update).
    ticks: u64,
}

impl View for Board {
    /// The opening events: live, every row, the health panel.
    fn open(&mut self, initial: Vec<Arc<LiveEntry>>, out: &mut Events) {
        live::live_signal(out);
        for entry in &initial {
            self.note_one(entry);
        }
        if let Some(page) = self.handed.take() {
            // The page holds these rows: only those that differ now are sent.
            self.sent = self
                .products
                .iter()
                .zip(page.rows)
                .map(|(p, hash)| (p.id.clone(), hash))
                .collect();
            self.dirty = self.products.iter().map(|p| p.id.clone()).collect();
            self.flush(out);
            self.health = Some(page.health);
            self.push_health(out);
            return;
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
        out.push(
            PatchElements::new(rows)
                .selector("#board-rows")
                .mode(ElementPatchMode::Inner)
                .into_datastar_event(),
        );
        out.push(
            PatchElements::new(format!(
                "<span id=\"product-count\">{}</span>",
                self.products.len()
            ))
            .into_datastar_event(),
        );
        self.push_health(out);
    }

    fn note(&mut self, entries: &[Arc<LiveEntry>], _resync: bool, _out: &mut Events) {
        for entry in entries {
            self.note_one(entry);
        }
    }

    fn timers(&self) -> Vec<Duration> {
        vec![FLUSH, HEALTH]
    }

    fn tick(&mut self, timer: usize, out: &mut Events) {
        if timer == 0 {
            return self.flush(out);
        }
        self.ticks += 1;
        if self.ticks.is_multiple_of(RECHECK_TICKS) {
            self.dirty
                .extend(self.products.iter().map(|p| p.id.clone()));
        }
        self.push_health(out);
    }
}

impl Board {
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
    fn note_one(&mut self, entry: &LiveEntry) {
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
    fn flush(&mut self, out: &mut Events) {
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
            out.push(PatchElements::new(html).into_datastar_event());
        }
    }

    fn push_health(&mut self, out: &mut Events) {
        let health = health(&self.state, self.products.len());
        if self.health.as_ref() == Some(&health) {
            return;
        }
        out.push(PatchElements::new(render(&health)).into_datastar_event());
        self.health = Some(health);
    }
}
