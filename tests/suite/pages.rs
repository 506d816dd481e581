//! The dashboard's pages and their streams over real sockets, with a real PostgreSQL holding
//! the products and the chart's history, and a live state the test feeds: the board page and
//! its stream (every row at once, then coalesced changes by row id), the chart stream (history
//! in a `<spot-chart>`, then morphs of held buckets and appends of new ones), the answers to
//! bad requests, and the development reload.

use crate::common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{SseEvent, SseReader, TestDb, app_state, serve};
use rust_decimal::Decimal;
use spot_canvas::config::StreamConfig;
use spot_canvas::live::LiveState;
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId};
use spot_canvas::store::Repository;
use spot_canvas::web::AppState;
use spot_canvas::web::pages::Pages;
use spot_canvas::web::pages::dev::DevReload;

/// Generous for a loaded CI: an event that is due arrives well within it.
pub(crate) const SOON: Duration = Duration::from_secs(10);

/// The current minute's start.
pub(crate) fn this_minute() -> i64 {
    Utc::now().timestamp() / 60 * 60
}

pub(crate) fn update(product: &str, g: Granularity, start: i64, count: u64) -> CandleUpdate {
    let time = DateTime::from_timestamp(start, 0).expect("time");
    CandleUpdate {
        candle: Candle {
            product_id: product.parse().expect("an id"),
            granularity: g,
            start: time,
            open: "100".parse().expect("d"),
            high: "110".parse().expect("d"),
            low: "90".parse().expect("d"),
            close: Decimal::new(1000 + count as i64, 1),
            volume: Decimal::new(count as i64, 2),
            buy_volume: Some(Decimal::ZERO),
            trade_count: Some(count),
        },
        complete: false,
        revision: 0,
        counted_trades: count,
        last_trade_id: TradeId(count),
        last_trade_time: time + chrono::TimeDelta::seconds(1),
        last_received: Utc::now(),
    }
}

pub(crate) struct Setup {
    pub(crate) live: LiveState,
    repository: Repository,
    served: common::Served,
    _db: TestDb,
}

async fn setup_with(tweak: impl FnOnce(&mut AppState)) -> Setup {
    let db = TestDb::migrated().await;
    let repository = Repository::new(db.pool.clone());
    repository
        .upsert_products(&[
            common::product("BTC-USD", Some("0.01")),
            common::product("ETH-USD", Some("0.01")),
            common::product("SHIB-USD", Some("0.00000001")),
        ])
        .await
        .expect("products");
    let live = LiveState::new();
    let mut state = app_state(repository.clone(), live.clone(), StreamConfig::default());
    tweak(&mut state);
    let served = serve(state, Duration::from_secs(1)).await;
    Setup {
        live,
        repository,
        served,
        _db: db,
    }
}

pub(crate) async fn setup() -> Setup {
    setup_with(|_| {}).await
}

impl Setup {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.served.port)
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        tokio::time::timeout(SOON, reqwest::Client::new().get(self.url(path)).send())
            .await
            .expect("answers in time")
            .expect("answers")
    }

    pub(crate) async fn open(&self, path: &str) -> SseReader {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseReader::new(response)
    }
}

/// The next event whose text contains `needle` (others skipped).
pub(crate) async fn next_with(stream: &mut SseReader, needle: &str) -> SseEvent {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = stream
            .next(left)
            .await
            .unwrap_or_else(|| panic!("the stream ended before {needle:?}"));
        if event.text.contains(needle) {
            return event;
        }
    }
}

#[tokio::test]
async fn the_board_page_holds_a_row_per_market_with_its_candle() {
    let s = setup().await;
    let start = this_minute();
    assert!(
        s.live
            .apply(update("BTC-USD", Granularity::OneMinute, start, 3))
    );
    let response = s.get("/?granularity=1m").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = response.text().await.expect("body");
    for id in ["row-BTC-USD", "row-ETH-USD", "row-SHIB-USD"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id} in the board");
    }
    assert!(html.contains(&format!(
        "<spot-candle id=\"BTC-USD-ONE_MINUTE\" data-product=\"BTC-USD\" data-granularity=\"ONE_MINUTE\" data-timestamp=\"{start}\""
    )));
    // The last price with the product's increment (0.01), exactly.
    assert!(html.contains(">100.30<"), "the close 100.3 shown as 100.30");
    assert!(html.contains("id=\"feed-health\""));
    assert!(html.contains("SIMULATED FEED"));
    assert!(html.contains("@get('/board/stream?granularity=' + $granularity"));
    // Not a page on the API's JSON shape for errors.
    let bad = s.get("/?granularity=2m").await;
    assert_eq!(bad.status(), 400);
    assert!(
        bad.text()
            .await
            .expect("body")
            .contains("unknown granularity")
    );
}

#[tokio::test]
async fn the_board_stream_sends_every_row_then_coalesced_changes_by_row() {
    let s = setup().await;
    let start = this_minute();
    assert!(
        s.live
            .apply(update("ETH-USD", Granularity::OneMinute, start, 1))
    );
    let mut board = s.open("/board/stream?granularity=ONE_MINUTE").await;
    let signals = board.next(SOON).await.expect("signals");
    assert_eq!(signals.event.as_deref(), Some("datastar-patch-signals"));
    assert!(signals.text.contains(r#""_link":"live""#));
    let rows = board.next(SOON).await.expect("rows");
    assert!(rows.data.contains(&"selector #board-rows".to_owned()));
    assert!(rows.data.contains(&"mode inner".to_owned()));
    for id in ["row-BTC-USD", "row-ETH-USD", "row-SHIB-USD"] {
        assert!(rows.text.contains(&format!("id=\"{id}\"")), "{id}");
    }
    assert!(rows.text.contains("<spot-candle id=\"ETH-USD-ONE_MINUTE\""));

    // A burst of 50 updates of one market reaches the page as a few patches of its row, the
    // last with the last update.
    for count in 1..=50 {
        assert!(
            s.live
                .apply(update("BTC-USD", Granularity::OneMinute, start, count))
        );
    }
    // Another granularity's candle is not the board's.
    assert!(s.live.apply(update(
        "SHIB-USD",
        Granularity::OneHour,
        start / 3600 * 3600,
        7
    )));
    let mut patches = 0;
    loop {
        let event = next_with(&mut board, "id=\"row-BTC-USD\"").await;
        patches += 1;
        assert!(!event.text.contains("row-SHIB-USD"), "{}", event.text);
        assert!(
            event.data.iter().all(|d| !d.starts_with("selector")),
            "morph by id"
        );
        if event.text.contains("data-trades=\"50\"") {
            break;
        }
    }
    assert!(patches <= 5, "{patches} patches for a burst of 50 updates");
}

#[tokio::test]
async fn the_chart_stream_starts_with_history_then_morphs_and_appends() {
    let s = setup().await;
    let now = this_minute();
    let history: Vec<CandleUpdate> = (1..=3)
        .map(|i| {
            let mut u = update("BTC-USD", Granularity::OneMinute, now - 60 * i, 10);
            u.complete = true;
            u
        })
        .collect();
    s.repository
        .upsert_candles(&history)
        .await
        .expect("history");
    assert!(
        s.live
            .apply(update("BTC-USD", Granularity::OneMinute, now, 1))
    );

    let mut chart = s.open("/markets/BTC-USD/stream?granularity=1m").await;
    let opening = next_with(&mut chart, "<spot-chart").await;
    assert!(opening.data.contains(&"mode replace".to_owned()));
    assert!(opening.text.contains(
        "<spot-chart id=\"chart\" data-product=\"BTC-USD\" data-granularity=\"ONE_MINUTE\" data-price-increment=\"0.01\">"
    ));
    for start in [now - 180, now - 120, now - 60, now] {
        assert!(
            opening
                .text
                .contains(&format!("id=\"BTC-USD-ONE_MINUTE-{start}\"")),
            "bucket {start} in the history"
        );
    }
    let summary = next_with(&mut chart, "id=\"market-summary\"").await;
    assert!(summary.text.contains(">100.10<"), "{}", summary.text);

    // The forming bucket moves: a morph of the element the chart holds.
    assert!(
        s.live
            .apply(update("BTC-USD", Granularity::OneMinute, now, 2))
    );
    let morph = next_with(&mut chart, &format!("BTC-USD-ONE_MINUTE-{now}")).await;
    assert!(morph.data.iter().all(|d| !d.starts_with("selector")));
    assert!(morph.text.contains("data-trades=\"2\""));
    // A new bucket is appended to the chart.
    let next = now + 60;
    assert!(
        s.live
            .apply(update("BTC-USD", Granularity::OneMinute, next, 1))
    );
    let append = next_with(&mut chart, &format!("BTC-USD-ONE_MINUTE-{next}")).await;
    assert!(append.data.contains(&"selector #chart".to_owned()));
    assert!(append.data.contains(&"mode append".to_owned()));
}

#[tokio::test]
async fn unknown_markets_and_bad_parameters_are_refused_clearly() {
    let s = setup().await;
    let page = s.get("/markets/NOPE-USD").await;
    assert_eq!(page.status(), 404);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    let stream = s.get("/markets/NOPE-USD/stream").await;
    assert_eq!(stream.status(), 404);
    let bad = s.get("/board/stream?granularity=7m").await;
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .expect("message")
            .contains("accepted"),
        "{body}"
    );
    let signals = s
        .get("/markets/BTC-USD/stream?datastar=%7B%22granularity%22%3A1%7D")
        .await;
    assert_eq!(signals.status(), 400);
    let page = s.get("/markets/BTC-USD?granularity=6h").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("body");
    assert!(html.contains("data-price-increment=\"0.01\""));
    assert!(html.contains("granularity: 'SIX_HOURS'"));
}

#[tokio::test]
async fn in_development_pages_reload_on_a_new_build_and_on_asset_changes() {
    let assets = tempfile::tempdir().expect("dir");
    std::fs::write(assets.path().join("app.css"), "a{}").expect("write");
    let stop = tokio_util::sync::CancellationToken::new();
    let dev = DevReload::start(assets.path().to_owned(), stop.clone()).await;
    let mut build = String::new();
    let s = setup_with(|state| {
        state.pages = Pages::new(assets.path(), Some(dev));
        build = state.pages.build.clone();
    })
    .await;
    // A page of another build (the server restarted) reloads at once.
    let mut stale = s.open("/board/stream?build=0000").await;
    let first = stale.next(SOON).await.expect("event");
    assert!(
        first.text.contains("window.location.reload()"),
        "{}",
        first.text
    );
    // A page of this build reloads when an asset changes.
    let mut current = s.open(&format!("/board/stream?build={build}")).await;
    let first = current.next(SOON).await.expect("event");
    assert!(!first.text.contains("window.location.reload()"));
    std::fs::write(assets.path().join("app.css"), "a{color:red}").expect("write");
    next_with(&mut current, "window.location.reload()").await;
    stop.cancel();
}

#[tokio::test]
async fn the_rolling_day_is_seeded_from_the_stored_minutes_of_the_products_asked() {
    let db = TestDb::migrated().await;
    let repository = Repository::new(db.pool.clone());
    let now = this_minute();
    let with_volume = |product: &str, g: Granularity, start: i64, volume: &str| {
        let mut u = update(product, g, start, 1);
        u.candle.volume = volume.parse().expect("decimal");
        u
    };
    let rows = vec![
        with_volume("BTC-USD", Granularity::OneMinute, now - 60, "1.5"),
        with_volume("BTC-USD", Granularity::OneMinute, now - 120, "2.25"),
        with_volume(
            "BTC-USD",
            Granularity::OneMinute,
            now - 3600,
            "0.0000000001",
        ),
        // Older than a day, another granularity, another product: not in BTC-USD's day.
        with_volume("BTC-USD", Granularity::OneMinute, now - 86_400 - 60, "1000"),
        with_volume("BTC-USD", Granularity::FiveMinutes, now / 300 * 300, "500"),
        with_volume("ETH-USD", Granularity::OneMinute, now - 60, "7"),
    ];
    repository.upsert_candles(&rows).await.expect("rows");
    let day = spot_canvas::live::day::DayStats::new();
    let (taken, bad) = day
        .seed(
            &repository,
            &[spot_canvas::model::ProductId::from_static("BTC-USD")],
            Utc::now(),
        )
        .await
        .expect("seeds");
    assert_eq!((taken, bad), (3, 0));
    let summary = day.summary("BTC-USD", now + 30).expect("a day");
    assert_eq!(summary.volume, Some("3.7500000001".parse().expect("d")));
    assert_eq!(summary.since, now - 3600);
    assert_eq!(summary.minutes, 3);
    assert!(day.summary("ETH-USD", now + 30).is_none(), "not asked for");
    // A live update of a seeded minute replaces it (newer version); a stale copy does not.
    let mut newer = with_volume("BTC-USD", Granularity::OneMinute, now - 60, "2");
    newer.counted_trades = 5;
    assert!(day.record(&newer, now + 30));
    assert!(!day.record(&rows[0], now + 30));
    let summary = day.summary("BTC-USD", now + 30).expect("a day");
    assert_eq!(summary.volume, Some("4.2500000001".parse().expect("d")));
}
