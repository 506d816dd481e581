//! The REST answers: the products list and candles equal to an aggregation of the logged trades,
//! with Coinbase's window limits.

use super::*;

#[tokio::test]
async fn products_list_parses_with_the_service_parser_and_has_entries_to_filter() {
    let sim = start(quick(3)).await;
    let (status, body) = get(format!("{}/market/products", sim.rest_url())).await;
    assert_eq!(status, 200);
    let list = parse_products(&body).expect("the service parses it");
    assert!(
        list.skipped.is_empty() && list.degraded.is_empty(),
        "{list:?}"
    );
    let products = list.products;
    let ingestible: BTreeSet<&str> = products
        .iter()
        .filter(|p| p.is_ingestible())
        .map(|p| p.product_id.as_str())
        .collect();
    assert_eq!(
        ingestible,
        BTreeSet::from(["BTC-USD", "ETH-USD", "SOL-USD"])
    );
    let find = |id: &str| -> &Product { products.iter().find(|p| p.product_id == id).expect(id) };
    assert_eq!(
        find("BTC-USDC").alias,
        Some(spot_canvas::model::ProductId::from_static("BTC-USD"))
    );
    assert_eq!(find("OLD-USD").status, "delisted");
    assert!(find("HALT-USD").trading_disabled);
    // The future's id is of another grammar: left out as not spot, not as malformed.
    assert!(products.iter().all(|p| p.product_id != "BIP-20DEC30-CDE"));
    assert_eq!(list.not_spot, 1);

    // A product added later appears; a delisted one stops being ingestible.
    let client = reqwest::Client::new();
    let added = client
        .post(format!("http://{}/sim/products", sim.addr))
        .json(&json!({"product_id": "NEW-USD", "price": 2.5}))
        .send()
        .await
        .expect("admin");
    assert_eq!(added.status(), 201);
    let delisted = client
        .put(format!("http://{}/sim/products/ETH-USD/listing", sim.addr))
        .json(&json!({"status": "delisted", "trading_disabled": true}))
        .send()
        .await
        .expect("admin");
    assert_eq!(delisted.status(), 204);
    let (_, body) = get(format!("{}/market/products", sim.rest_url())).await;
    let products = parse_products(&body).expect("parses").products;
    let ingestible: BTreeSet<&str> = products
        .iter()
        .filter(|p| p.is_ingestible())
        .map(|p| p.product_id.as_str())
        .collect();
    assert_eq!(
        ingestible,
        BTreeSet::from(["BTC-USD", "NEW-USD", "SOL-USD"])
    );
    sim.stop().await;
}

#[tokio::test]
async fn rest_candles_equal_an_aggregation_of_the_logged_trades() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("trades.jsonl");
    let sim = start(SimConfig {
        products: 2,
        trades_per_second: 3.0,
        history_minutes: 90,
        trade_log: Some(log_path.clone()),
        ..SimConfig::default()
    })
    .await;
    let now = Utc::now().timestamp();
    for (granularity, width) in [
        (Granularity::OneMinute, 60),
        (Granularity::FiveMinutes, 300),
        (Granularity::OneHour, 3600),
    ] {
        let end = now - now.rem_euclid(width);
        let start = (end - 90 * 60).max(end - 299 * width);
        let url = format!(
            "{}/market/products/ETH-USD/candles?start={start}&end={end}&granularity={}",
            sim.rest_url(),
            granularity.rest_name()
        );
        let (status, body) = get(url).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let candles = parse_candles(
            &body,
            &spot_canvas::model::ProductId::from_static("ETH-USD"),
            granularity,
        )
        .expect("parses");
        assert!(!candles.is_empty());
        assert!(
            candles.windows(2).all(|w| w[0].start > w[1].start),
            "newest first"
        );
        // The shared test aggregation (tests/common), written apart from the simulator's.
        let log = common::read_trade_log(&log_path);
        let eth: Vec<&common::LoggedTrade> =
            log.iter().filter(|t| t.product_id == "ETH-USD").collect();
        let expected: BTreeMap<i64, common::Ohlcv> = common::aggregate(&eth)
            .into_iter()
            .filter(|((_, g, _), _)| *g == granularity)
            .map(|((_, _, bucket), ohlcv)| (bucket, ohlcv))
            .collect();
        assert_eq!(common::width(granularity), width);
        let mut compared = 0;
        for c in &candles {
            let bucket = c.start.timestamp();
            assert!(bucket >= start && bucket < end);
            let e = expected
                .get(&bucket)
                .unwrap_or_else(|| panic!("no trades at {bucket}"));
            let got = common::Ohlcv {
                open: c.open,
                high: c.high,
                low: c.low,
                close: c.close,
                volume: c.volume,
                // REST candles carry no trade count.
                count: e.count,
            };
            assert_eq!(&got, e, "{granularity} bucket {bucket}");
            compared += 1;
        }
        let in_window = expected.range(start..end).count();
        // A bucket partly before the history's first trade has trades in both sources alike.
        assert_eq!(
            compared, in_window,
            "{granularity}: every bucket with trades"
        );
    }
    sim.stop().await;
}

#[tokio::test]
async fn rest_candles_refuse_windows_of_350_buckets_and_cap_answers_at_300() {
    let sim = start(SimConfig {
        products: 1,
        trades_per_second: 2.0,
        history_minutes: 400,
        ..SimConfig::default()
    })
    .await;
    let now = Utc::now().timestamp();
    let end = now - now.rem_euclid(60);
    let url = |start: i64, g: &str| {
        format!(
            "{}/market/products/BTC-USD/candles?start={start}&end={end}&granularity={g}",
            sim.rest_url()
        )
    };
    let (status, body) = get(url(end - 350 * 60, "ONE_MINUTE")).await;
    assert_eq!(status, 400);
    let err: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(err["error"], "INVALID_ARGUMENT");
    assert!(
        err["message"]
            .as_str()
            .expect("m")
            .contains("less than 350")
    );

    let (status, body) = get(url(end - 349 * 60, "ONE_MINUTE")).await;
    assert_eq!(status, 200);
    let candles = parse_candles(
        &body,
        &spot_canvas::model::ProductId::from_static("BTC-USD"),
        Granularity::OneMinute,
    )
    .expect("parses");
    assert_eq!(candles.len(), 300, "at most 300 per answer, the newest");
    assert_eq!(candles[0].start.timestamp(), end - 60);

    let (status, _) = get(url(end - 60, "FIVE_MINUTES")).await;
    assert_eq!(
        status, 400,
        "plural names are the service's, not Coinbase's"
    );
    for g in Granularity::ALL {
        let (status, _) = get(url(end - 10 * g.seconds(), g.rest_name())).await;
        assert_eq!(status, 200, "{}", g.rest_name());
    }
    sim.stop().await;
}
