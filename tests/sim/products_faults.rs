//! Faults of the trust boundary: the products list (odd ids, a duplicate, control characters, huge
//! and endless lists) and trades of unlisted products.

use super::*;

/// The products list as served, as JSON.
async fn products_json(sim: &Simulator) -> Value {
    let (status, body) = get(format!(
        "{}/market/products?product_type=SPOT",
        sim.rest_url()
    ))
    .await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).expect("a JSON list")
}

/// The ids of a products list, in order.
fn listed_ids(list: &Value) -> Vec<String> {
    list["products"]
        .as_array()
        .expect("products")
        .iter()
        .map(|p| p["product_id"].as_str().expect("id").to_owned())
        .collect()
}

async fn arm_products_fault(sim: &Simulator, fault: Value) {
    let answer = reqwest::Client::new()
        .post(format!("http://{}/sim/products-faults", sim.addr))
        .json(&fault)
        .send()
        .await
        .expect("admin");
    assert_eq!(answer.status(), 201, "{fault}");
}

async fn clear_products_faults(sim: &Simulator) {
    let answer = reqwest::Client::new()
        .delete(format!("http://{}/sim/products-faults", sim.addr))
        .send()
        .await
        .expect("admin");
    assert_eq!(answer.status(), 204);
}

/// Resident memory of this test process (the simulator runs in it), in bytes.
fn own_rss() -> u64 {
    common::footprint::rss_of(std::process::id()).expect("/proc/self/status")
}

#[tokio::test]
async fn products_faults_list_odd_ids_a_duplicate_and_control_characters_until_cleared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = start(SimConfig {
        trade_log: Some(log.clone()),
        ..quick(2)
    })
    .await;
    let normal = products_json(&sim).await;
    let normal_ids = listed_ids(&normal);

    arm_products_fault(&sim, json!({"kind": "odd_ids"})).await;
    arm_products_fault(&sim, json!({"kind": "duplicate", "product_id": "ETH-USD"})).await;
    arm_products_fault(&sim, json!({"kind": "control_chars"})).await;
    let armed: Value = serde_json::from_slice(
        &get(format!("http://{}/sim/products-faults", sim.addr))
            .await
            .1,
    )
    .expect("json");
    assert_eq!(armed.as_array().map(Vec::len), Some(3), "{armed}");

    let list = products_json(&sim).await;
    let ids = listed_ids(&list);
    // The normal list comes first, whole; then the extras.
    assert_eq!(ids[..normal_ids.len()], normal_ids[..]);
    for odd in OddId::ALL {
        assert!(ids.contains(&odd.id()), "{odd:?} listed");
    }
    let long = ids.iter().find(|id| id.len() > 8000).expect("a long id");
    assert!(long.ends_with("-USD"));
    for needle in [
        "\0",
        "/../",
        "#",
        "?",
        " ",
        "TWO-DASH-USD",
        "lower-usd",
        "\u{421}",
    ] {
        assert!(
            ids.iter().any(|id| id.contains(needle)),
            "an id holding {needle:?}"
        );
    }
    assert!(ids.contains(&"-USD".to_owned()) && ids.contains(&"EMPTYQ-".to_owned()));
    assert_eq!(
        ids.iter().filter(|id| *id == "ETH-USD").count(),
        2,
        "listed twice"
    );
    let products = list["products"].as_array().expect("products");
    let ctrl = products
        .iter()
        .find(|p| p["product_id"] == CONTROL_PRODUCT)
        .expect("the control characters product");
    for field in [
        "base_name",
        "quote_name",
        "display_name",
        "base_display_symbol",
    ] {
        let text = ctrl[field].as_str().expect(field);
        assert_eq!(text, CONTROL_TEXT);
        for c in ['\r', '\n', '\u{1}', '\u{7f}'] {
            assert!(text.contains(c), "{field} holds {c:?}");
        }
    }
    // The extras are online spot products, as a service would ingest them.
    for p in products
        .iter()
        .filter(|p| !normal_ids.contains(&p["product_id"].as_str().unwrap_or_default().to_owned()))
    {
        assert_eq!(
            (p["status"].as_str(), p["product_type"].as_str()),
            (Some("online"), Some("SPOT"))
        );
    }
    // Into a normal product's fields, and into the currency ids, on request.
    arm_products_fault(
        &sim,
        json!({"kind": "control_chars", "product_id": "BTC-USD", "currency_ids": true}),
    )
    .await;
    let list = products_json(&sim).await;
    let btc = &list["products"][0];
    assert_eq!(btc["product_id"], "BTC-USD");
    assert_eq!(btc["base_name"], CONTROL_TEXT);
    assert!(
        btc["base_currency_id"]
            .as_str()
            .expect("currency")
            .contains('\r')
    );

    // Listed, never traded: no REST candles; a subscribe naming one is taken, and no trade of
    // it ever comes; the trade log holds only the normal markets.
    let now = Utc::now().timestamp();
    let (status, _) = get(format!(
        "{}/market/products/lower-usd/candles?start={}&end={now}&granularity=ONE_MINUTE",
        sim.rest_url(),
        now - 3600
    ))
    .await;
    assert_eq!(status, 404);
    let mut ws = connect(&sim).await;
    subscribe(
        &mut ws,
        "market_trades",
        &["BTC-USD", "lower-usd", CONTROL_PRODUCT],
    )
    .await;
    let mut acked = false;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let Some(Ok(Message::Text(text))) = next(&mut ws, Duration::from_millis(500)).await else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text).expect("json");
        assert_ne!(frame["type"], "error", "{frame}");
        acked |= frame["channel"] == "subscriptions";
        for event in frame["events"].as_array().into_iter().flatten() {
            for trade in event["trades"].as_array().into_iter().flatten() {
                assert_eq!(trade["product_id"], "BTC-USD", "{trade}");
            }
        }
    }
    assert!(acked, "the subscribe naming listed extras is taken");
    let logged: BTreeSet<String> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["product_id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    assert_eq!(
        logged,
        BTreeSet::from(["BTC-USD".to_owned(), "ETH-USD".to_owned()])
    );

    // Cleared: the normal list again.
    clear_products_faults(&sim).await;
    assert_eq!(listed_ids(&products_json(&sim).await), normal_ids);
    sim.stop().await;
}

#[tokio::test]
async fn a_products_fault_given_at_start_is_armed() {
    let fault: ProductsFault =
        serde_json::from_str(r#"{"kind":"odd_ids","ids":["nul","dot_dot"]}"#).expect("parses");
    let sim = start(SimConfig {
        products_faults: vec![fault],
        ..quick(1)
    })
    .await;
    let ids = listed_ids(&products_json(&sim).await);
    assert!(ids.contains(&OddId::Nul.id()) && ids.contains(&OddId::DotDot.id()));
    assert!(!ids.contains(&OddId::Lower.id()));
    sim.stop().await;
}

#[tokio::test]
async fn huge_products_list_streams_gigabytes_with_bounded_simulator_memory() {
    let sim = start(quick(2)).await;
    // A small one is a whole, valid list of the given size.
    arm_products_fault(&sim, json!({"kind": "huge", "bytes": 1_000_000})).await;
    let small = products_json(&sim).await;
    assert!(listed_ids(&small).len() > 500);
    clear_products_faults(&sim).await;

    arm_products_fault(&sim, json!({"kind": "huge"})).await;
    let before = own_rss();
    let mut response = reqwest::get(format!("{}/market/products", sim.rest_url()))
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    assert!(response.content_length().is_none(), "streamed, no length");
    let mut read = Vec::new();
    while read.len() < 8 << 20 {
        let chunk = response
            .chunk()
            .await
            .expect("reads")
            .expect("more to come");
        read.extend_from_slice(&chunk);
    }
    assert!(read.starts_with(br#"{"products":[{"#));
    let head = String::from_utf8_lossy(&read[..4096]);
    assert!(head.contains(r#""product_id":"HUGE-USD""#), "{head}");
    let grown = own_rss().saturating_sub(before);
    println!(
        "huge products list: read {} MiB, the process grew {} MiB",
        read.len() >> 20,
        grown >> 20
    );
    assert!(
        grown < 64 << 20,
        "the simulator holds the list whole? grew {grown} bytes"
    );
    drop(response);

    // Announced in the header, on request: 2 GiB or a little more.
    clear_products_faults(&sim).await;
    arm_products_fault(&sim, json!({"kind": "huge", "content_length": true})).await;
    let response = reqwest::get(format!("{}/market/products", sim.rest_url()))
        .await
        .expect("answers");
    let length = response.content_length().expect("a length");
    assert!(
        (2u64 << 30..(2u64 << 30) + (1 << 20)).contains(&length),
        "{length}"
    );
    drop(response);
    sim.stop().await;
}

#[tokio::test]
async fn endless_products_list_never_ends_and_does_not_hold_up_the_stop() {
    let sim = start(quick(1)).await;
    arm_products_fault(&sim, json!({"kind": "endless", "interval_ms": 20})).await;
    let mut response = reqwest::get(format!("{}/market/products", sim.rest_url()))
        .await
        .expect("answers");
    let mut read = Vec::new();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let chunk = timeout(Duration::from_secs(1), response.chunk())
            .await
            .expect("a product every 20 ms")
            .expect("reads")
            .expect("never ends");
        read.extend_from_slice(&chunk);
    }
    assert!(read.starts_with(br#"{"products":["#));
    let products = read.windows(12).filter(|w| w == br#""product_id""#).count();
    assert!(
        (10..=60).contains(&products),
        "{products} products in a second"
    );
    // The simulator stops although a client still reads the list.
    timeout(Duration::from_secs(5), sim.stop())
        .await
        .expect("stops");
    drop(response);
}

#[tokio::test]
async fn unlisted_trade_faults_send_trades_of_products_never_listed_nor_subscribed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = start(SimConfig {
        trade_log: Some(log.clone()),
        ..quick(1)
    })
    .await;
    let mut ws = subscribed(&sim).await;
    let _ = next_json(&mut ws).await;
    let odd = OddId::Nul.id();
    sim.arm(fault(0, FaultKind::UnlistedTrade { product_id: None }));
    sim.arm(fault(
        0,
        FaultKind::UnlistedTrade {
            product_id: Some(odd.clone()),
        },
    ));
    let frame = next_update(&mut ws).await;
    assert_eq!(frame["channel"], "market_trades");
    let trades = frame["events"][0]["trades"].as_array().expect("trades");
    let products: Vec<&str> = trades
        .iter()
        .map(|t| t["product_id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        products.iter().filter(|p| **p == "GHOST-USD").count(),
        1,
        "{products:?}"
    );
    assert_eq!(products.iter().filter(|p| **p == odd).count(), 1);
    assert!(
        products.iter().filter(|p| **p == "BTC-USD").count() >= 1,
        "beside normal trades"
    );
    let listed = listed_ids(&products_json(&sim).await);
    assert!(!listed.contains(&"GHOST-USD".to_owned()) && !listed.contains(&odd));
    let injected = injected(&sim).await;
    assert_eq!(injected.len(), 2);
    assert!(injected.iter().all(|t| t["fault"] == "unlisted_trade"));
    let ids = wait_for_log(&log, trades.len() - 2).await;
    for t in &injected {
        assert!(!ids.contains(t["trade_id"].as_str().expect("id")));
    }
    let logged: BTreeSet<String> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["product_id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    assert_eq!(logged, BTreeSet::from(["BTC-USD".to_owned()]));
    sim.stop().await;
}
