//! The stream end to end: the `spot-canvas` binary fed by the simulator, its candles through
//! the engine, NATS and the live state to an SSE client. Every element matches the trades
//! behind it exactly (the simulator's trade log up to the element's last trade), and a
//! SIGTERM ends open streams within a second.

use crate::common;

use std::time::Duration;

use chrono::DateTime;
use common::{AppEnv, LoggedTrade, Service, SseEvent, SseReader, aggregate, buy_volumes};
use rust_decimal::Decimal;
use spot_canvas::model::Granularity;
use spot_canvas_sim::{SimConfig, Simulator};

fn decimal(event: &SseEvent, name: &str) -> Decimal {
    event
        .attr(name)
        .unwrap_or_else(|| panic!("{name} in {}", event.text))
        .parse()
        .unwrap_or_else(|e| panic!("{name} is a decimal: {e}"))
}

/// The trades an element says it holds: its bucket's trades up to its last trade, by
/// (time, numeric id).
fn trades_behind<'a>(event: &SseEvent, log: &'a [LoggedTrade]) -> Vec<&'a LoggedTrade> {
    let product = event.attr("data-product").expect("product");
    let start: i64 = event
        .attr("data-timestamp")
        .expect("start")
        .parse()
        .expect("secs");
    let last_id: u64 = event
        .attr("data-last-trade-id")
        .expect("id")
        .parse()
        .expect("numeric");
    let last_time =
        DateTime::parse_from_rfc3339(&event.attr("data-last-trade-time").expect("time"))
            .expect("RFC 3339")
            .to_utc();
    log.iter()
        .filter(|t| t.product_id == product)
        .filter(|t| (start..start + 60).contains(&t.time.timestamp()))
        .filter(|t| (t.time, t.trade_id) <= (last_time, last_id))
        .collect()
}

#[tokio::test]
async fn elements_match_the_trades_behind_them_and_sigterm_ends_streams_within_a_second() {
    let logs = tempfile::tempdir().expect("tempdir");
    let trade_log = logs.path().join("trades.jsonl");
    // The minutes from the first whole one after the start are seen live from their start:
    // their candles hold every trade of their bucket.
    let sim = Simulator::start(SimConfig {
        products: 3,
        trades_per_second: 1.0,
        history_minutes: 5,
        trade_log: Some(trade_log.clone()),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let data_dir = common::data_dir();
    let env = AppEnv::for_sim(&sim, data_dir.path())
        .set("BACKFILL_HORIZON_HOURS", "0")
        .set("HISTORY_BUCKETS", "0");
    let first_live_minute = (chrono::Utc::now().timestamp() / 60 + 1) * 60;
    let mut service = Service::start(&env, &logs.path().join("serve.log")).await;
    let url = format!(
        "http://127.0.0.1:{}/stream?products=BTC-USD,ETH-USD&granularity=1m",
        service.port
    );
    // The products list reaches trading_pairs shortly after the start.
    let response = common::eventually("the stream to open", Duration::from_secs(60), || async {
        let response = reqwest::Client::new().get(&url).send().await.ok()?;
        (response.status() == 200).then_some(response)
    })
    .await;
    let mut stream = SseReader::new(response);
    let mut checked = 0;
    let mut ids = Vec::new();
    while checked < 12 {
        let event = stream
            .next(Duration::from_secs(90))
            .await
            .expect("the stream goes on");
        assert_eq!(event.event.as_deref(), Some("datastar-patch-elements"));
        assert_eq!(
            event.attr("data-granularity").as_deref(),
            Some("ONE_MINUTE")
        );
        let product = event.attr("data-product").expect("product");
        assert!(
            ["BTC-USD", "ETH-USD"].contains(&product.as_str()),
            "{product}"
        );
        ids.push(event.id.clone().expect("id"));
        let start: i64 = event
            .attr("data-timestamp")
            .expect("start")
            .parse()
            .expect("secs");
        if start < first_live_minute {
            continue;
        }
        // The log is written before the frame is sent: it holds every trade behind the element.
        let log = common::read_trade_log(&trade_log);
        let behind = trades_behind(&event, &log);
        assert!(!behind.is_empty(), "the trades of {}", event.text);
        let key = (product.clone(), Granularity::OneMinute, start);
        let expected = aggregate(&behind).remove(&key).expect("an aggregate");
        let got = (
            decimal(&event, "data-open"),
            decimal(&event, "data-high"),
            decimal(&event, "data-low"),
            decimal(&event, "data-close"),
            decimal(&event, "data-volume"),
            event
                .attr("data-trades")
                .expect("trades")
                .parse::<u64>()
                .expect("count"),
        );
        assert_eq!(
            got,
            (
                expected.open,
                expected.high,
                expected.low,
                expected.close,
                expected.volume,
                expected.count
            ),
            "{}",
            event.text
        );
        let buy = buy_volumes(&behind).remove(&key).unwrap_or_default();
        assert_eq!(decimal(&event, "data-buy-volume"), buy, "{}", event.text);
        checked += 1;
    }
    let numeric: Vec<u64> = ids.iter().map(|i| i.parse().expect("numeric id")).collect();
    assert!(
        numeric
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            == numeric.len(),
        "no event twice: {ids:?}"
    );

    // A SIGTERM: the open stream ends within a second, then the process exits cleanly.
    service.terminate();
    assert!(
        stream.ends_within(Duration::from_secs(1)).await,
        "the stream outlived the SIGTERM by more than a second"
    );
    let status = service.wait_exit(common::STOP_WITHIN).await;
    assert!(status.success(), "{status}\n{}", service.log());
}
