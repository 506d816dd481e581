//! Products: the trading-pair list with its live state, and the directory learning new products.

use super::*;

#[tokio::test]
async fn products_lists_every_trading_pair_with_its_shard_ingestion_and_live_state() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    repo.upsert_products(&[
        product("ETH-USD", Some("0.00000001234")),
        product("BTC-USD", Some("0.01")),
        product("XYZ-EUR", None),
    ])
    .await
    .expect("products");
    let mut state = api_state(&db);
    state.instance.shard_count = 3;
    state.instance.shard_index = 1;
    // This instance's feed carries BTC-USD and ETH-USD.
    state.reports.feed.register(
        0,
        vec![
            spot_canvas::model::ProductId::from_static("BTC-USD"),
            spot_canvas::model::ProductId::from_static("ETH-USD"),
        ],
    );
    // BTC-USD had an update just now; ETH-USD 10 minutes ago (not live any more); XYZ none.
    let now = Utc::now();
    let mut fresh = candle("BTC-USD", T0, dec("1"), dec("1"));
    fresh.last_received = now;
    let mut old = candle("ETH-USD", T0, dec("1"), dec("1"));
    old.last_received = now - chrono::TimeDelta::minutes(10);
    assert!(state.live.apply(fresh));
    assert!(state.live.apply(old.clone()));

    let (status, body) = get_json(&state, "/api/v1/products?ignored=yes").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["schema"], 1);
    assert_eq!(
        (body["shard_index"].as_u64(), body["shard_count"].as_u64()),
        (Some(1), Some(3))
    );
    let shard = |id: &str| spot_canvas::feed::shard::instance_for(id, 3);
    let mut products = body["products"].as_array().expect("products").clone();
    let last_updates: Vec<Value> = products
        .iter_mut()
        .map(|p| {
            p.as_object_mut()
                .expect("object")
                .remove("last_update")
                .expect("last_update")
        })
        .collect();
    assert_eq!(
        Value::Array(products),
        json!([
            {"id": "BTC-USD", "base": "BTC", "quote": "USD", "status": "online",
             "trading_disabled": false, "price_increment": "0.01", "shard": shard("BTC-USD"),
             "ingested": true, "live": true},
            {"id": "ETH-USD", "base": "ETH", "quote": "USD", "status": "online",
             "trading_disabled": false, "price_increment": "0.00000001234",
             "shard": shard("ETH-USD"), "ingested": true, "live": false},
            {"id": "XYZ-EUR", "base": "XYZ", "quote": "EUR", "status": "online",
             "trading_disabled": false, "price_increment": null, "shard": shard("XYZ-EUR"),
             "ingested": false, "live": false},
        ])
    );
    let shown: DateTime<Utc> =
        serde_json::from_value(last_updates[1].clone()).expect("a time for ETH-USD");
    assert_eq!(shown, old.last_received);
    assert!(last_updates[0].is_string());
    assert!(last_updates[2].is_null());
}

#[tokio::test]
async fn the_directory_learns_new_products_within_about_a_second_and_keeps_its_list_while_the_database_is_away()
 {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    repo.upsert_products(&[product("BTC-USD", Some("0.01"))])
        .await
        .expect("products");
    let directory = ProductDirectory::new(Repository::new(spot_canvas::store::api_pool(&db.pool)));
    assert!(
        directory
            .contains(&spot_canvas::model::ProductId::from_static("BTC-USD"))
            .await
            .expect("answers")
    );
    assert!(
        !directory
            .contains(&spot_canvas::model::ProductId::from_static("ETH-USD"))
            .await
            .expect("answers")
    );
    let ids = [
        spot_canvas::model::ProductId::from_static("BTC-USD"),
        spot_canvas::model::ProductId::from_static("ETH-USD"),
        spot_canvas::model::ProductId::from_static("NOPE-USD"),
    ];
    assert_eq!(
        directory.unknown(&ids).await.expect("answers"),
        vec!["ETH-USD", "NOPE-USD"]
    );
    // A product inserted now is known after the next miss-read (at most a second away: the
    // unit tests in src/web/directory.rs pin the timing); the deadline is generous for a loaded
    // machine.
    repo.upsert_products(&[product("ETH-USD", None)])
        .await
        .expect("products");
    wait_for("ETH-USD to be known", Duration::from_secs(20), || async {
        directory
            .contains(&spot_canvas::model::ProductId::from_static("ETH-USD"))
            .await
            .expect("answers")
    })
    .await;
    assert_eq!(
        directory.unknown(&ids).await.expect("answers"),
        vec!["NOPE-USD"]
    );

    // The database goes away: the list read before keeps answering (a miss cannot refresh it),
    // while a directory that never read one answers an error (the handlers' 503).
    db.pg.stop_with("fast").await.expect("stop");
    let fresh = ProductDirectory::new(Repository::new(spot_canvas::store::api_pool(&db.pool)));
    let error = fresh
        .contains(&spot_canvas::model::ProductId::from_static("BTC-USD"))
        .await
        .expect_err("no list yet");
    assert!(error.to_string().contains("not available"), "{error}");
    assert!(
        directory
            .contains(&spot_canvas::model::ProductId::from_static("BTC-USD"))
            .await
            .expect("the cached list")
    );
    assert_eq!(
        directory.unknown(&ids).await.expect("the cached list"),
        vec!["NOPE-USD"]
    );
    db.pg.restart().await.expect("start again");
    common::eventually(
        "a list once the database is back",
        Duration::from_secs(60),
        || async {
            fresh
                .contains(&spot_canvas::model::ProductId::from_static("BTC-USD"))
                .await
                .ok()
                .filter(|known| *known)
        },
    )
    .await;
}
