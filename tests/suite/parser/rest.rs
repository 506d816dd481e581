//! The REST answers: documented examples, malformed products and misaligned candles.

use super::*;

#[test]
fn rest_examples_parse() {
    let list = parse_products(include_bytes!(
        "../../fixtures/coinbase/example-http-products.json"
    ))
    .expect("ok");
    assert!(
        list.skipped.is_empty() && list.degraded.is_empty(),
        "{list:?}"
    );
    let products = list.products;
    assert!(!products.is_empty());
    let btc = products
        .iter()
        .find(|p| p.product_id == "BTC-USD")
        .expect("BTC-USD");
    assert_eq!((btc.base.as_str(), btc.quote.as_str()), ("BTC", "USD"));
    assert!(btc.is_ingestible());
    assert_eq!(
        btc.price_increment.map(|d| d.to_string()).as_deref(),
        Some("0.01")
    );
    if let Some(alias) = products.iter().find(|p| p.product_id == "BTC-USDC") {
        assert!(!alias.is_ingestible(), "aliases are not ingested");
    }

    let product = parse_product(include_bytes!(
        "../../fixtures/coinbase/rest-product-btc-usd.json"
    ))
    .expect("ok");
    assert_eq!(product.product_id, "BTC-USD");
    assert_eq!(
        product.base_max_size.map(|d| d.to_string()).as_deref(),
        Some("3400")
    );

    let candles = parse_candles(
        include_bytes!("../../fixtures/coinbase/example-http-candles.json"),
        &spot_canvas::model::ProductId::from_static("BTC-USD"),
        Granularity::OneHour,
    )
    .expect("ok");
    assert_eq!(candles.len(), 2);
    assert!(candles[0].start > candles[1].start, "newest first");
    assert_eq!(candles[0].open.to_string(), "66312.4");
    assert_eq!(candles[0].trade_count, None);

    let err = parse_error(br#"{"error":"INVALID_ARGUMENT","message":"number of candles requested should be less than 350"}"#)
        .expect("an error answer");
    assert_eq!(err.error, "INVALID_ARGUMENT");
}

const GOOD_PRODUCT: &str = r#"{"product_id":"BTC-USD","base_currency_id":"BTC","quote_currency_id":"USD","status":"online","product_type":"SPOT","trading_disabled":false,"base_min_size":"0.00000001","base_max_size":"3400","base_increment":"0.00000001","price_increment":"0.01","alias":"","alias_to":["BTC-USDC"]}"#;

fn products_around(middle: &str) -> String {
    let after = GOOD_PRODUCT
        .replace("BTC-USD", "SOL-USD")
        .replace(r#""BTC""#, r#""SOL""#);
    format!(r#"{{"products":[{GOOD_PRODUCT},{middle},{after}],"num_products":3}}"#)
}

#[test]
fn a_malformed_product_costs_that_product_alone() {
    let eth = GOOD_PRODUCT
        .replace("BTC-USD", "ETH-USD")
        .replace(r#""BTC""#, r#""ETH""#);
    // Skipped: a product the service cannot select safely.
    for (name, middle, id) in [
        ("product_id a number", eth.replace(r#""ETH-USD""#, "7"), ""),
        (
            "no product_id",
            eth.replace(r#""product_id":"ETH-USD","#, ""),
            "",
        ),
        ("not an object", "[]".to_owned(), ""),
        (
            "status a number",
            eth.replace(r#""online""#, "1"),
            "ETH-USD",
        ),
        (
            "trading_disabled a string",
            eth.replace(r#""trading_disabled":false"#, r#""trading_disabled":"no""#),
            "ETH-USD",
        ),
        (
            "alias_to of numbers",
            eth.replace(r#"["ETH-USDC"]"#, "[1]"),
            "ETH-USD",
        ),
    ] {
        let list = parse_products(products_around(&middle).as_bytes())
            .unwrap_or_else(|e| panic!("{name}: the list survives: {e}"));
        let ids: Vec<&str> = list
            .products
            .iter()
            .map(|p| p.product_id.as_str())
            .collect();
        assert_eq!(ids, ["BTC-USD", "SOL-USD"], "{name}");
        assert_eq!(list.skipped.len(), 1, "{name}: {list:?}");
        assert_eq!(
            list.skipped[0].product_id.trim_matches('"'),
            id,
            "{name}: quoted as logged"
        );
        assert!(list.degraded.is_empty(), "{name}");
    }
    // Kept: an optional field that cannot be read is left out, and reported.
    for (name, middle, field) in [
        (
            "exponent max size",
            eth.replace(r#""3400""#, r#""1e10""#),
            "base_max_size",
        ),
        (
            "increment as a number",
            eth.replace(r#""price_increment":"0.01""#, r#""price_increment":0.01"#),
            "price_increment",
        ),
    ] {
        let list = parse_products(products_around(&middle).as_bytes()).expect(name);
        let ids: Vec<&str> = list
            .products
            .iter()
            .map(|p| p.product_id.as_str())
            .collect();
        assert_eq!(ids, ["BTC-USD", "ETH-USD", "SOL-USD"], "{name}");
        assert!(list.skipped.is_empty(), "{name}");
        assert_eq!(list.degraded.len(), 1, "{name}");
        assert_eq!(
            list.degraded[0].product_id, "\"ETH-USD\"",
            "{name}: quoted as logged"
        );
        assert!(list.degraded[0].reason.contains(field), "{name}: {list:?}");
        let eth = &list.products[1];
        assert!(eth.is_ingestible(), "{name}");
        match field {
            "base_max_size" => assert_eq!(eth.base_max_size, None),
            _ => assert_eq!(eth.price_increment, None),
        }
        assert_eq!(
            eth.base_min_size.map(|d| d.to_string()).as_deref(),
            Some("0.00000001")
        );
    }
    // `trading_disabled: null` reads as absent: not disabled.
    let list = parse_products(
        products_around(&eth.replace(r#""trading_disabled":false"#, r#""trading_disabled":null"#))
            .as_bytes(),
    )
    .expect("null");
    assert_eq!(list.products.len(), 3);
    assert!(!list.products[1].trading_disabled);
    assert!(list.skipped.is_empty() && list.degraded.is_empty());
    // A body that is not a products list at all is still an error.
    assert!(parse_products(br#"{"products":7}"#).is_err());
}

#[test]
fn rest_candles_not_aligned_to_their_granularity_are_rejected() {
    let body = br#"{"candles":[{"start":"1712192401","low":"1","high":"1","open":"1","close":"1","volume":"1"}]}"#;
    assert!(
        parse_candles(
            body,
            &spot_canvas::model::ProductId::from_static("BTC-USD"),
            Granularity::OneMinute
        )
        .is_err()
    );
}
