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
    /// `&page=<token>` on the board: the stream skips the rows the page holds already.
    pub page_param: String,
    /// The stream's heartbeat period: the page presumes it dead after three without one.
    pub keepalive_secs: u64,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Template)]
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
    /// The raised alarms: (name, what is wrong).
    pub alarms: Vec<(&'static str, String)>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::day::DaySummary;
    use crate::model::{Candle, CandleUpdate, TradeId};
    use chrono::{DateTime, Utc};

    fn product(id: &str) -> ProductInfo {
        ProductInfo {
            id: id.parse().expect("an id"),
            base: id
                .split('-')
                .next()
                .unwrap_or_default()
                .parse()
                .expect("a code"),
            quote: crate::model::Currency::from_static("USD"),
            price_increment: Some("0.01".parse().expect("decimal")),
        }
    }

    fn update(product: &str, start: i64) -> CandleUpdate {
        let time = DateTime::from_timestamp(start, 0).expect("time");
        CandleUpdate {
            candle: Candle {
                product_id: product.parse().expect("an id"),
                granularity: Granularity::OneMinute,
                start: time,
                open: "100".parse().expect("d"),
                high: "101".parse().expect("d"),
                low: "99.5".parse().expect("d"),
                close: "100.5".parse().expect("d"),
                volume: "2.5".parse().expect("d"),
                buy_volume: None,
                trade_count: Some(4),
            },
            complete: false,
            revision: 0,
            counted_trades: 4,
            last_trade_id: TradeId(9),
            last_trade_time: time,
            last_received: time,
        }
    }

    fn layout() -> Layout {
        Layout {
            css: "/static/app.css?v=1".into(),
            datastar: "/static/datastar.js?v=2".into(),
            app: "/static/app.js?v=3".into(),
            assets_complete: true,
            simulated: false,
            stream_path: "/board/stream".into(),
            build_param: String::new(),
            page_param: String::new(),
            keepalive_secs: 15,
        }
    }

    #[test]
    fn a_row_carries_the_ids_and_attributes_the_board_stream_and_elements_use() {
        let now = Utc::now();
        let start = now.timestamp() / 60 * 60;
        let u = update("BTC-USD", start);
        let day = DaySummary {
            open: "50".parse().expect("d"),
            last: "100.5".parse().expect("d"),
            change: Some("50.5".parse().expect("d")),
            volume: Some("1234.5".parse().expect("d")),
            since: start - 3600,
            minutes: 61,
        };
        let row = Row::new(
            &product("BTC-USD"),
            Granularity::OneMinute,
            Some(&u),
            Some(&day),
            now,
        );
        let html = render(&RowPartial { row: &row });
        for needle in [
            "id=\"row-BTC-USD\"",
            "data-product=\"BTC-USD\"",
            "data-preserve-attr=\"style hidden\"",
            "data-sort-change=\"0.5\"",
            "data-sort-change24h=\"101\"",
            "data-field=\"last\"",
            ">100.50<",
            "+0.50%",
            "+101.00%",
            "<spot-countdown data-close=",
            "<spot-candle id=\"BTC-USD-ONE_MINUTE\" data-product=\"BTC-USD\"",
            "href=\"/markets/BTC-USD?granularity=ONE_MINUTE\"",
        ] {
            assert!(html.contains(needle), "{needle} in {html}");
        }
        // The element is the stream's, byte for byte.
        assert!(html.contains(&crate::live::element::candle_element(
            &u,
            crate::live::element::ElementId::Series
        )));
        // No candle yet: the row is there, saying so.
        let empty = Row::new(&product("ETH-USD"), Granularity::OneMinute, None, None, now);
        let html = render(&RowPartial { row: &empty });
        assert!(html.contains("id=\"row-ETH-USD\""));
        assert!(html.contains("no trades yet"));
        assert!(!html.contains("<spot-candle"));
    }

    #[test]
    fn the_board_page_has_the_controls_signals_and_stream_of_the_design() {
        let page = BoardPage {
            layout: layout(),
            granularity: Granularity::FiveMinutes,
            granularities: &Granularity::ALL,
            sorts: &SORTS,
            count: 2,
            rows: "<div id=\"row-A-B\" class=\"board-row\"></div>".into(),
            health: "<div id=\"feed-health\"></div>".into(),
        };
        let html = page.render().expect("renders");
        for needle in [
            "<div id=\"board-rows\" class=\"board-rows\"><div id=\"row-A-B\"",
            "granularity: 'FIVE_MINUTES'",
            "id=\"filter\"",
            "data-bind:_filter",
            "data-attr:sort=\"$_sort\"",
            "data-attr:filter=\"$_filter\"",
            "<spot-board id=\"board\"",
            "id=\"board-empty\"",
            "id=\"connection\"",
            "id=\"offline-banner\"",
            "<div id=\"feed-health\"></div>",
            "@get('/board/stream?granularity=' + $granularity + '',",
            "retry: 'always', retryMaxCount: Infinity",
            "src=\"/static/datastar.js?v=2\"",
        ] {
            assert!(html.contains(needle), "{needle} in the board page");
        }
        for g in Granularity::ALL {
            assert!(html.contains(&format!("data-granularity=\"{}\"", g.as_str())));
        }
        for (key, _) in SORTS {
            assert!(html.contains(&format!("data-sort=\"{key}\"")));
        }
        assert!(!html.contains("SIMULATED FEED"), "Coinbase: no badge");
    }

    #[test]
    fn the_market_page_holds_the_chart_the_stream_replaces() {
        let p = product("SHIB-USD");
        let row = Row::new(&p, Granularity::OneHour, None, None, Utc::now());
        let page = MarketPage {
            layout: Layout {
                simulated: true,
                stream_path: "/markets/SHIB-USD/stream".into(),
                build_param: "&build=abc".into(),
                ..layout()
            },
            product: &p,
            granularity: Granularity::OneHour,
            granularities: &Granularity::ALL,
            increment: "0.00000001".into(),
            summary: render(&SummaryPartial { row: &row }),
        };
        let html = page.render().expect("renders");
        for needle in [
            "<spot-chart id=\"chart\" data-product=\"SHIB-USD\" data-granularity=\"ONE_HOUR\"",
            "data-price-increment=\"0.00000001\"",
            "id=\"market-summary\"",
            // `&` as an HTML attribute holds it (the browser decodes it back).
            "@get('/markets/SHIB-USD/stream?granularity=' + $granularity + '&#38;build=abc',",
            "id=\"simulated-badge\"",
        ] {
            assert!(html.contains(needle), "{needle} in the market page");
        }
    }

    #[test]
    fn text_from_outside_cannot_reach_a_row_unchecked() {
        // A row's texts are checked codes: markup cannot be one.
        assert!(crate::model::Currency::parse("<script>alert(1)</script>").is_err());
        assert!(crate::model::ProductId::parse("X-<b>").is_err());
        let row = Row::new(
            &product("X-USD"),
            Granularity::OneMinute,
            None,
            None,
            Utc::now(),
        );
        let html = render(&RowPartial { row: &row });
        assert!(html.contains("X-USD"), "{html}");
    }

    #[test]
    fn the_row_cache_forgets_products_no_longer_listed() {
        let cache = super::super::rows::RowCache::default();
        let (a, b) = (product("A-USD"), product("B-USD"));
        let now = Utc::now();
        for p in [&a, &b] {
            cache.row(p, Granularity::OneMinute, None, None, now);
        }
        assert_eq!(cache.len(), 2);
        cache.keep_only(std::slice::from_ref(&b));
        assert_eq!(cache.len(), 1);
    }
}
