//! The askama templates (`templates/`) and what each one is given.
//!
//! In: rows, health figures, the layout's links. Out: HTML. The row, summary and health
//! partials are rendered alone by the page streams and inside the pages, so a patch and a
//! page load produce the same element.

use askama::Template;

use super::view::{ProductInfo, Row};
use crate::model::Granularity;

/// What every page's layout needs.
#[derive(Debug, Clone)]
pub struct Layout {
    pub css: String,
    pub datastar: String,
    pub app: String,
    pub assets_complete: bool,
    pub simulated: bool,
    /// The page's stream; the page adds `?granularity=` from its signal.
    pub stream_path: String,
    /// `&build=<id>` in development (a page of another build reloads), else empty.
    pub build_param: String,
}

/// `/`: the market board.
#[derive(Debug, Template)]
#[template(path = "board.html")]
pub struct BoardPage<'a> {
    pub layout: Layout,
    pub granularity: Granularity,
    pub granularities: &'a [Granularity],
    pub sorts: &'a [(&'static str, &'static str)],
    pub count: usize,
    /// The rendered rows.
    pub rows: String,
    /// The rendered health panel.
    pub health: String,
}

/// `/markets/{product}`: one product's chart.
#[derive(Debug, Template)]
#[template(path = "market.html")]
pub struct MarketPage<'a> {
    pub layout: Layout,
    pub product: &'a ProductInfo,
    pub granularity: Granularity,
    pub granularities: &'a [Granularity],
    /// The price increment as the chart reads it (empty when unknown).
    pub increment: String,
    pub summary: String,
}

/// A board row.
#[derive(Debug, Template)]
#[template(path = "partials/row.html")]
pub struct RowPartial<'a> {
    pub row: &'a Row,
}

/// A market page's header.
#[derive(Debug, Template)]
#[template(path = "partials/summary.html")]
pub struct SummaryPartial<'a> {
    pub row: &'a Row,
}

/// The board's feed health panel.
#[derive(Debug, Clone, PartialEq, Eq, Template)]
#[template(path = "partials/health.html")]
pub struct HealthPartial {
    /// Whether this instance runs a feed.
    pub feed_here: bool,
    pub connected: usize,
    pub connections: usize,
    pub reconnects: u64,
    pub gaps: u64,
    pub stale: usize,
    pub products: usize,
    /// `99.8%`, or `—` before the first comparison.
    pub match_rate: String,
    pub matched: u64,
    pub judged: u64,
}

/// The board's sort keys and their labels.
pub const SORTS: [(&str, &str); 5] = [
    ("product", "Name"),
    ("change", "Candle %"),
    ("volume", "Candle vol"),
    ("change24h", "24h %"),
    ("volume24h", "24h vol"),
];

/// Renders a partial; a template error (a bug, never input) becomes an HTML comment so one
/// row cannot break a page or a stream.
pub fn render(template: &impl Template) -> String {
    template.render().unwrap_or_else(|error| {
        tracing::error!(%error, "a template failed to render");
        "<!-- render error -->".to_owned()
    })
}
