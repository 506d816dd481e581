//! The dashboard: `/`, the market board, and `/markets/{product}`, one product's chart.
//! askama pages styled with Tailwind and DaisyUI, kept live by one Datastar stream each.
//!
//! In: the [`AppState`] (live state, rolling day, stage reports, the product catalog). Out: the pages,
//! their streams (`/board/stream`, `/markets/{product}/stream`, see [`board`] and [`chart`]),
//! and `/static/*` ([`assets`]). A page renders its current state at once; its stream then
//! patches rows, headers and candles in place by id (Datastar morphs), coalesced so that the
//! browser keeps up with hundreds of markets, and reconnects forever.

pub mod assets;
pub mod board;
pub mod chart;
pub mod dev;
pub mod handoff;
mod live;
pub mod query;
pub mod rows;
pub mod templates;
pub mod view;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;

use super::AppState;
use super::catalog::UNAVAILABLE;
use super::error::{ApiError, PageError};
use crate::model::{Granularity, ProductId};
use assets::Assets;
use dev::DevReload;
use templates::{BoardPage, HealthPartial, Layout, MarketPage, SORTS, SummaryPartial, render};
use view::{ProductInfo, Row, STALE_SECS};

pub use board::board_stream;
pub use chart::chart_stream;

/// Candles of history a chart starts with.
pub const CHART_HISTORY: u32 = 300;

/// What the pages share.
#[derive(Debug, Clone)]
pub struct Pages {
    pub assets: Arc<Assets>,
    /// Development reload (`DEV_RELOAD`).
    pub dev: Option<DevReload>,
    /// This process's build id: a page from another one reloads in development.
    pub build: String,
    /// Board rows rendered once for all the boards showing them.
    pub rows: Arc<rows::RowCache>,
    /// What board pages rendered, until their streams open.
    pub handoffs: Arc<handoff::Handoffs>,
    /// The health panel's figures, shared by every board for [`HEALTH_MAX_AGE`].
    health: Arc<std::sync::Mutex<Option<(tokio::time::Instant, HealthPartial)>>>,
}

/// How long the health panel's figures are reused. Working them out scans the live state under
/// its lock (the lock the ingest path takes for every update): once a second in all, not once
/// per board every two seconds.
const HEALTH_MAX_AGE: Duration = Duration::from_secs(1);

impl Pages {
    pub fn new(static_dir: &Path, dev: Option<DevReload>) -> Pages {
        Pages {
            assets: Arc::new(Assets::load(static_dir, dev.is_some())),
            dev,
            build: format!("{:016x}", rand::random::<u64>()),
            rows: Arc::default(),
            handoffs: Arc::default(),
            health: Arc::default(),
        }
    }

    fn layout(&self, simulated: bool, stream_path: &str, keepalive: Duration) -> Layout {
        let build_param = if self.dev.is_some() {
            format!("&build={}", self.build)
        } else {
            String::new()
        };
        Layout {
            css: self.assets.url("app.css"),
            datastar: self.assets.url("datastar.js"),
            app: self.assets.url("app.js"),
            assets_complete: self.assets.complete(),
            simulated,
            stream_path: stream_path.to_owned(),
            build_param,
            page_param: String::new(),
            keepalive_secs: keepalive.as_secs().max(1),
        }
    }

    /// The pages' Content-Security-Policy: everything from this origin; Datastar evaluates
    /// its attribute expressions (`unsafe-eval`), and in development runs the reload script
    /// it patches in (`unsafe-inline`).
    fn csp(&self) -> &'static str {
        if self.dev.is_some() {
            "default-src 'self'; script-src 'self' 'unsafe-eval' 'unsafe-inline'; \
             style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        } else {
            "default-src 'self'; script-src 'self' 'unsafe-eval'; \
             style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        }
    }

    /// A rendered page (`what` names it in the log when it failed to render).
    fn page(&self, html: askama::Result<String>, what: &str) -> Result<Response, PageError> {
        let html = html.map_err(|error| {
            tracing::error!(%error, "{what} failed to render");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
        })?;
        let mut response = Html(html).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(self.csp()),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(response)
    }
}

/// The board's rows for `granularity` (from the cache every board shares), and the hash of
/// each.
fn rows_html(
    state: &AppState,
    products: &[ProductInfo],
    granularity: Granularity,
) -> (String, Vec<u64>) {
    let now = Utc::now();
    let day = state.live.day();
    let mut html = String::with_capacity(products.len() * 1500);
    let mut hashes = Vec::with_capacity(products.len());
    for product in products {
        let current = state.live.current(&product.id, granularity);
        let summary = day.summary(&product.id, now.timestamp());
        let row = state
            .pages
            .rows
            .row(product, granularity, current.as_ref(), summary, now);
        html.push_str(&row.html);
        html.push('\n');
        hashes.push(row.hash);
    }
    state.pages.rows.keep_only(products);
    (html, hashes)
}

/// The figures of the board's feed health panel, worked out at most once per
/// [`HEALTH_MAX_AGE`] for all the boards.
pub fn health(state: &AppState, products: usize) -> HealthPartial {
    // Figures are replaced whole: a panic elsewhere cannot leave them half-written.
    let mut cached = state.pages.health.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, figures)) = cached.as_ref()
        && at.elapsed() < HEALTH_MAX_AGE
        && figures.products == products
    {
        return figures.clone();
    }
    let figures = health_now(state, products);
    *cached = Some((tokio::time::Instant::now(), figures.clone()));
    figures
}

fn health_now(state: &AppState, products: usize) -> HealthPartial {
    let feed = state.reports.feed.report();
    let check = state.reports.reconcile.report().crosscheck_rest_1m;
    let now = Utc::now();
    let stale = state
        .live
        .product_activity()
        .values()
        .filter(|at| (now - **at).num_seconds() > STALE_SECS)
        .count();
    HealthPartial {
        feed_here: !feed.connections.is_empty() || feed.products > 0,
        connected: feed.connected,
        connections: feed.connections.len(),
        reconnects: feed.connections.iter().map(|c| c.reconnects).sum(),
        gaps: feed.connections.iter().map(|c| c.gaps).sum(),
        stale,
        products,
        match_rate: check
            .match_rate
            .map(|r| format!("{:.1}%", r * 100.0))
            .unwrap_or_else(|| "—".to_owned()),
        matched: check.matched,
        judged: check.matched + check.mismatched,
        alarms: state
            .reports
            .alarms
            .report()
            .raised
            .into_iter()
            .map(|a| (a.kind.as_str(), a.detail))
            .collect(),
    }
}

/// `GET /`.
pub async fn board_page(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let query = query::parse(query.as_deref()).map_err(ApiError::bad_request)?;
    let products = state
        .products
        .shown()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE))?;
    let (rows, hashes) = rows_html(&state, &products, query.granularity);
    let health = health(&state, products.len());
    let mut layout = state.pages.layout(
        state.instance.simulated,
        "/board/stream",
        state.streams.config.keepalive,
    );
    let token = state.pages.handoffs.put(handoff::Rendered {
        granularity: query.granularity,
        products: products.clone(),
        rows: hashes,
        health: health.clone(),
    });
    layout.page_param = format!("&page={token}");
    let page = BoardPage {
        layout,
        granularity: query.granularity,
        granularities: &Granularity::ALL,
        sorts: &SORTS,
        count: products.len(),
        rows,
        health: render(&health),
    };
    state.pages.page(page.render(), "the board")
}

/// `GET /markets/{product}`.
pub async fn market_page(
    State(state): State<AppState>,
    UrlPath(product_id): UrlPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let query = query::parse(query.as_deref()).map_err(ApiError::bad_request)?;
    let found = match ProductId::from_client(&product_id) {
        Ok(id) => state.products.product(&id).await,
        Err(_) => Ok(None),
    };
    let product = found
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE))?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no market {}: the board lists every market",
                crate::model::shown(&product_id)
            ))
        })?;
    let now = Utc::now();
    let current = state.live.current(&product.id, query.granularity);
    let day = state.live.day().summary(&product.id, now.timestamp());
    let row = Row::new(
        &product,
        query.granularity,
        current.as_ref(),
        day.as_ref(),
        now,
    );
    let stream = format!("/markets/{}/stream", product.id);
    let page = MarketPage {
        layout: state.pages.layout(
            state.instance.simulated,
            &stream,
            state.streams.config.keepalive,
        ),
        product: &product,
        granularity: query.granularity,
        granularities: &Granularity::ALL,
        increment: product
            .price_increment
            .map(|i| i.normalize().to_string())
            .unwrap_or_default(),
        summary: render(&SummaryPartial { row: &row }),
    };
    state.pages.page(page.render(), "the market page")
}
