//! Alarms raised and cleared: quiet products, heartbeats, the clock, the database and NATS.

use super::*;

fn raised(health: &Value, alarm: &str) -> bool {
    health["alarms"]["raised"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["kind"] == alarm))
}

fn quiet_products(health: &Value) -> Vec<String> {
    health["alarms"]["quiet_products"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["product_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn quiet_product_heartbeat_and_clock_alarms_are_raised_and_cleared() {
    let sim = simulator(3, 4.0).await;
    let db = TestDb::new().await;
    let data_dir = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let env = AppEnv::for_sim(&sim, data_dir.path())
        .database(&db)
        .set("CLOCK_CHECK_SECS", "1");
    let service = Service::start(&env, &logs.path().join("serve.log")).await;
    let port = service.port;
    let board = format!("http://127.0.0.1:{port}/");
    service
        .wait_for_health("ready, no alarm, a clock reading", WITHIN, |status, h| {
            status == 200
                && h["alarms"]["evaluated_at"].is_string()
                && h["alarms"]["raised"].as_array().is_some_and(Vec::is_empty)
                && h["clock"]["last"]["offset_ms"].is_i64()
        })
        .await;

    // One product stops trading: once it has a rate to judge by (at least ten intervals
    // between its trades), its silence is unusual. The subscribe's snapshots bring 50 trades a
    // product; some 20 s of live trading follow.
    service
        .wait_for_health("enough trades to judge rates by", WITHIN, |_, h| {
            h["engine"]["trades"].as_u64() > Some(150 + 3 * 4 * 20)
        })
        .await;
    let quiet = "ETH-USD";
    let response = reqwest::Client::new()
        .put(format!("{}/sim/products/{quiet}/listing", root(&sim)))
        .json(&json!({ "status": "online", "trading_disabled": true }))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 204);
    let health = service
        .wait_for_health("the quiet-product alarm", WITHIN, |_, h| {
            raised(h, "quiet_product")
        })
        .await;
    assert_eq!(
        quiet_products(&health),
        vec![quiet.to_owned()],
        "only it is quiet"
    );
    let s = scrape(port).await.expect("metrics");
    assert_eq!(value(&s, "spot_canvas_alarm{alarm=\"quiet_product\"}"), 1.0);
    assert_eq!(value(&s, "spot_canvas_quiet_products"), 1.0);
    let (status, page) = get_text(&board).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("data-alarm=\"quiet_product\""),
        "the board shows it"
    );
    assert!(page.contains(quiet));
    // Trading again: the alarm clears.
    let response = reqwest::Client::new()
        .put(format!("{}/sim/products/{quiet}/listing", root(&sim)))
        .json(&json!({ "status": "online", "trading_disabled": false }))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 204);
    service
        .wait_for_health("the quiet-product alarm to clear", WITHIN, |_, h| {
            !raised(h, "quiet_product")
        })
        .await;

    // The connection's heartbeats stop (trades go on) for 25 s.
    sim_post(
        &sim,
        "/sim/faults",
        json!({ "scope": "all", "kind": "mute_heartbeats", "secs": 25 }),
    )
    .await;
    let health = service
        .wait_for_health("the heartbeat alarm", WITHIN, |_, h| raised(h, "heartbeat"))
        .await;
    assert!(
        health["alarms"]["silent_connections"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    );
    assert!(!raised(&health, "quiet_product"), "trades still flow");
    let s = scrape(port).await.expect("metrics");
    assert_eq!(value(&s, "spot_canvas_alarm{alarm=\"heartbeat\"}"), 1.0);
    let (_, page) = get_text(&board).await;
    assert!(page.contains("data-alarm=\"heartbeat\""));
    service
        .wait_for_health("heartbeats again", WITHIN, |_, h| !raised(h, "heartbeat"))
        .await;

    // The exchange's clock runs 5 s ahead of ours.
    sim_post(&sim, "/sim/clock", json!({ "offset_ms": 5_000 })).await;
    let health = service
        .wait_for_health("the clock-drift alarm", WITHIN, |_, h| {
            raised(h, "clock_drift")
        })
        .await;
    let offset = health["alarms"]["clock_offset_ms"]
        .as_i64()
        .expect("an offset");
    assert!((-5_500..=-4_500).contains(&offset), "offset {offset} ms");
    let s = scrape(port).await.expect("metrics");
    assert_eq!(value(&s, "spot_canvas_alarm{alarm=\"clock_drift\"}"), 1.0);
    let seconds = value(&s, "spot_canvas_clock_offset_seconds");
    assert!((-5.5..=-4.5).contains(&seconds), "{seconds} s");
    let (_, page) = get_text(&board).await;
    assert!(page.contains("data-alarm=\"clock_drift\""));
    sim_post(&sim, "/sim/clock", json!({ "offset_ms": 0 })).await;
    service
        .wait_for_health("the clock-drift alarm to clear", WITHIN, |_, h| {
            !raised(h, "clock_drift")
        })
        .await;
    drop(service);
    sim.stop().await;
}

#[tokio::test]
async fn database_and_nats_alarms_follow_their_servers() {
    let sim = simulator(2, 2.0).await;
    let db = TestDb::new().await;
    let (nats, _nats_dir) = nats_server().await;
    let data_dir = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let env = AppEnv::for_sim(&sim, data_dir.path())
        .database(&db)
        .set("NATS_URL", nats.client_url());
    let service = Service::start(&env, &logs.path().join("serve.log")).await;
    let port = service.port;
    service
        .wait_for_health("ready without alarms", WITHIN, |status, h| {
            status == 200 && h["alarms"]["raised"].as_array().is_some_and(Vec::is_empty)
        })
        .await;

    db.pg.stop_with("fast").await.expect("PostgreSQL stops");
    let health = service
        .wait_for_health("the database alarm", WITHIN, |_, h| raised(h, "database"))
        .await;
    let detail = health["alarms"]["raised"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["kind"] == "database"))
        .and_then(|x| x["detail"].as_str())
        .expect("a detail")
        .to_owned();
    assert!(!detail.contains("postgres://"), "no URL in {detail}");
    let s = scrape(port)
        .await
        .expect("metrics answer without the database");
    assert_eq!(value(&s, "spot_canvas_alarm{alarm=\"database\"}"), 1.0);
    let (status, _) = get_text(&format!("http://127.0.0.1:{port}/health/ready")).await;
    assert_eq!(status, 503);
    db.pg.restart().await.expect("PostgreSQL starts again");
    service
        .wait_for_health("the database alarm to clear", WITHIN, |status, h| {
            status == 200 && !raised(h, "database")
        })
        .await;

    nats.stop().await;
    service
        .wait_for_health("the NATS alarm", WITHIN, |status, h| {
            status == 503 && raised(h, "nats")
        })
        .await;
    wait_for("metrics to flag NATS and unreadiness", WITHIN, || async {
        scrape(port).await.is_some_and(|s| {
            value(&s, "spot_canvas_alarm{alarm=\"nats\"}") == 1.0
                && s.get("spot_canvas_ready") == Some(&0.0)
        })
    })
    .await;
    drop(service);
    sim.stop().await;
}
