//! Readiness: 503 while the database is stopped, 200 when it is back.

use super::*;

/// `GET path` on the service's port over a real socket: status and JSON.
async fn fetch(port: u16, path: &str) -> Option<(u16, Value)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

#[tokio::test]
async fn readiness_is_503_while_the_database_is_stopped_and_200_when_it_is_back() {
    let sim = Simulator::start(SimConfig {
        products: 2,
        trades_per_second: 5.0,
        history_minutes: 5,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let db = TestDb::migrated().await;
    let data_dir = common::data_dir();
    let env = AppEnv::for_sim(&sim, data_dir.path()).database(&db);
    let app = TestApp::start(&env, |_| {}).await;
    let port = app.port;
    const WAIT: Duration = Duration::from_secs(90);

    let ready = common::eventually("ready", WAIT, || async {
        fetch(port, "/health/ready")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await
    .1;
    assert_eq!(ready["status"], "ok");
    for check in ["feed", "nats", "database", "stages"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{check}: {ready}");
    }
    let (status, live) = fetch(port, "/health/live").await.expect("live");
    assert_eq!((status, live), (200, json!({"schema": 1, "status": "ok"})));
    // The simulator's products are listed: the two it trades ingested here and live once
    // trades flow, the halted and the delisted one neither.
    let products = common::eventually("live products", WAIT, || async {
        let (status, body) = fetch(port, "/api/v1/products").await?;
        let list = body["products"].as_array()?.clone();
        let flags = |p: &Value| (p["ingested"].as_bool(), p["live"].as_bool());
        let traded = list
            .iter()
            .filter(|p| flags(p) == (Some(true), Some(true)))
            .count();
        (status == 200 && traded == 2).then_some(list)
    })
    .await;
    let summary: Vec<(&str, bool, bool, u64)> = products
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id"),
                p["ingested"] == true,
                p["live"] == true,
                p["shard"].as_u64().expect("shard"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("BTC-USD", true, true, 0),
            ("ETH-USD", true, true, 0),
            ("HALT-USD", false, false, 0),
            ("OLD-USD", false, false, 0),
        ]
    );

    db.pg.stop_with("fast").await.expect("PostgreSQL stops");
    let (_, down) = common::eventually("503 while the database is stopped", WAIT, || async {
        fetch(port, "/health/ready")
            .await
            .filter(|(status, _)| *status == 503)
    })
    .await;
    assert_eq!(down["status"], "degraded");
    assert_eq!(down["checks"]["database"]["ok"], false, "{down}");
    let detail = down["checks"]["database"]["detail"]
        .as_str()
        .expect("detail");
    assert!(detail.starts_with("SELECT 1 "), "{detail}");
    let (status, health) = fetch(port, "/health").await.expect("/health answers");
    assert_eq!(status, 503);
    assert_eq!(health["checks"]["database"]["ok"], false);
    assert!(
        health["engine"].is_object(),
        "/health keeps its fields: {health}"
    );
    // The process itself is fine.
    let (status, _) = fetch(port, "/health/live").await.expect("live");
    assert_eq!(status, 200);

    db.pg.restart().await.expect("PostgreSQL starts again");
    // The pool reconnects by itself.
    let (_, back) = common::eventually("200 once the database is back", WAIT, || async {
        fetch(port, "/health/ready")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    assert_eq!(back["checks"]["database"]["ok"], true, "{back}");
    app.stop().await.expect("stops cleanly");
    sim.stop().await;
}
