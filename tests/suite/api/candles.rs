//! Paged candles: start and end without gaps or repeats, decimals exact.

use super::*;

/// Follows `next` from `uri` until it is absent; returns every page's timestamps.
async fn walk(state: &AppState, uri: &str) -> Vec<Vec<i64>> {
    let mut pages = Vec::new();
    let mut uri = uri.to_owned();
    loop {
        let (status, body) = get_json(state, &uri).await;
        assert_eq!(status, 200, "{uri}: {body}");
        let page = timestamps(&body);
        assert!(
            page.windows(2).all(|w| w[0] < w[1]),
            "oldest first: {page:?}"
        );
        pages.push(page.clone());
        assert!(pages.len() < 100, "next never ends");
        match body.get("next") {
            None => return pages,
            Some(next) => {
                assert_eq!(next["end"].as_i64(), page.first().copied(), "{body}");
                uri = next["url"].as_str().expect("url").to_owned();
            }
        }
    }
}

#[tokio::test]
async fn candles_page_through_start_and_end_without_gaps_or_repeats_and_keep_decimals_exact() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    repo.upsert_products(&[product("BTC-USD", Some("0.01")), product("ETH-USD", None)])
        .await
        .expect("products");
    // 300 minutes with holes (every 7th minute missing), in BTC-USD; ETH-USD and a five-minute
    // candle of BTC-USD must never show up.
    let stored: Vec<i64> = (0..300)
        .filter(|i| i % 7 != 3)
        .map(|i| T0 + 60 * i)
        .collect();
    let rows: Vec<CandleUpdate> = stored
        .iter()
        .map(|t| candle("BTC-USD", *t, Decimal::from(*t), dec("2.5")))
        .collect();
    repo.upsert_candles(&rows).await.expect("candles");
    repo.upsert_candle(&candle("ETH-USD", T0 + 60, dec("9"), dec("9")))
        .await
        .expect("eth");
    let mut five = candle("BTC-USD", T0, dec("9"), dec("9"));
    five.candle.granularity = Granularity::FiveMinutes;
    repo.upsert_candle(&five).await.expect("five");
    let state = api_state(&db);
    let base = "/api/v1/candles?product=BTC-USD&granularity=1m";

    // The whole range, 37 a page: the pages join up to exactly what is stored.
    let pages = walk(&state, &format!("{base}&limit=37")).await;
    let all: Vec<i64> = pages.iter().rev().flatten().copied().collect();
    assert_eq!(
        all, stored,
        "pages newest to oldest, each oldest first, no gap or repeat"
    );
    assert!(pages[..pages.len() - 1].iter().all(|p| p.len() == 37));
    assert_eq!(pages.len(), stored.len().div_ceil(37));

    // A range: start inclusive, end exclusive, both on stored candles.
    let (start, end) = (stored[10], stored[200]);
    let pages = walk(&state, &format!("{base}&limit=50&start={start}&end={end}")).await;
    let got: Vec<i64> = pages.iter().rev().flatten().copied().collect();
    let expected: Vec<i64> = stored
        .iter()
        .copied()
        .filter(|t| (start..end).contains(t))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.first(), Some(&start), "start is inclusive");
    assert!(!got.contains(&end), "end is exclusive");
    // The next URL keeps start and limit.
    let (_, body) = get_json(&state, &format!("{base}&limit=50&start={start}&end={end}")).await;
    let url = body["next"]["url"].as_str().expect("next");
    assert!(
        url.contains(&format!("&limit=50&start={start}&end=")),
        "{url}"
    );

    // A range holding exactly two pages: the second is the last (no empty third page).
    let (start, end) = (stored[0], stored[20]);
    let pages = walk(&state, &format!("{base}&limit=10&start={start}&end={end}")).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10]);
    // A range with nothing stored: empty, no next.
    let hole = T0 + 60 * 3;
    let (status, body) = get_json(&state, &format!("{base}&start={hole}&end={}", hole + 60)).await;
    assert_eq!(status, 200);
    assert_eq!(body["candles"], json!([]));
    assert!(body.get("next").is_none(), "{body}");

    // Exact decimals, however small or large.
    let tiny = dec("0.00000001234");
    let huge = dec("1234567890123.123456789012");
    let t = T0 + 60 * 1_000;
    let mut exact = candle("BTC-USD", t, tiny, huge);
    exact.candle.high = dec("98765432109876.5432109876");
    exact.candle.buy_volume = Some(dec("0.000000000000000001"));
    repo.upsert_candle(&exact).await.expect("exact");
    let (status, body) = get_json(&state, &format!("{base}&start={t}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["candles"],
        json!([{
            "timestamp": t, "open": "0.00000001234", "high": "98765432109876.5432109876",
            "low": "0.00000001234", "close": "0.00000001234",
            "volume": "1234567890123.123456789012", "trade_count": 3,
            "buy_volume": "0.000000000000000001", "complete": true, "backfilled": false
        }])
    );

    // An unknown product is a bad parameter, not an empty answer.
    let (status, body) = get_json(&state, "/api/v1/candles?product=DOGE-USD&granularity=1m").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        "unknown product \"DOGE-USD\": a product id listed by GET /api/v1/products"
    );
}
