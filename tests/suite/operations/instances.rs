//! Instances: a web instance fed by an ingest one through NATS, and the embedded NATS's token.

use super::*;

#[tokio::test]
async fn a_web_instance_serves_streams_an_ingest_instance_feeds_through_nats() {
    let sim = simulator(2, 5.0).await;
    let db = TestDb::new().await;
    let (nats, _nats_dir) = nats_server().await;
    let logs = tempfile::tempdir().expect("tempdir");
    let ingest_dir = common::data_dir();
    let mut ingest = Service::start(
        &AppEnv::for_sim(&sim, ingest_dir.path())
            .database(&db)
            .set("NATS_URL", nats.client_url())
            .set("ROLE", "ingest"),
        &logs.path().join("ingest.log"),
    )
    .await;
    // The web role has no feed: it needs neither the exchange nor a Coinbase key.
    let web_dir = common::data_dir();
    let metrics_port = free_port();
    let mut web = Service::start(
        &AppEnv::new()
            .set("METRICS_PORT", metrics_port.to_string())
            .set("DATA_DIR", web_dir.path().display().to_string())
            .database(&db)
            .set("NATS_URL", nats.client_url())
            .set("COINBASE_WS_URL", "ws://127.0.0.1:1")
            .set("COINBASE_REST_URL", "http://127.0.0.1:1")
            .set("ROLE", "web"),
        &logs.path().join("web.log"),
    )
    .await;
    let ingest_health = ingest
        .wait_for_health("the ingest instance ready", WITHIN, |status, h| {
            status == 200 && h["role"] == "ingest"
        })
        .await;
    assert!(ingest_health["feed"]["connected"].as_u64() > Some(0));
    let web_health = web
        .wait_for_health("the web instance ready", WITHIN, |status, h| {
            status == 200 && h["role"] == "web"
        })
        .await;
    assert_eq!(web_health["checks"]["feed"]["ok"], true);
    assert!(
        web_health["checks"]["feed"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("does not ingest"))
    );
    assert_eq!(web_health["feed"]["connections"], json!([]));

    // The web instance streams candles it never built.
    let stream = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/api/v1/stream?products=BTC-USD&granularity=1m",
            web.port
        ))
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(stream.status(), 200);
    let mut reader = common::SseReader::new(stream);
    let mut live = 0;
    while live < 3 {
        let event = reader.next(WITHIN).await.expect("an event");
        if event.text.contains("<spot-candle") && event.text.contains("BTC-USD") {
            live += 1;
        }
    }
    let (status, page) = get_text(&format!("http://127.0.0.1:{}/", web.port)).await;
    assert_eq!(status, 200);
    assert!(page.contains("BTC-USD"));
    // `METRICS_PORT`: the web instance's metrics are there, not on its public port.
    let (status, _) = get_text(&format!("http://127.0.0.1:{}/metrics", web.port)).await;
    assert_eq!(status, 404);
    // Events keep coming; their latency, from the ingest instance's receipt to this one's
    // write, is timed.
    let deadline = tokio::time::Instant::now() + WITHIN;
    let web_metrics = loop {
        // Keep reading, so that the stream keeps flowing.
        reader.next(WITHIN).await.expect("the stream goes on");
        if let Some(s) = scrape(metrics_port).await
            && value(&s, "spot_canvas_end_to_end_seconds_count") > 0.0
        {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no end-to-end sample on the web instance"
        );
    };
    assert_eq!(value(&web_metrics, "spot_canvas_role{role=\"web\"}"), 1.0);
    assert!(
        web_metrics
            .keys()
            .all(|k| !k.starts_with("spot_canvas_feed_trades_total")),
        "the web instance receives no trade"
    );

    // The ingest instance serves health and metrics, not the dashboard or the API.
    let (status, _) = get_text(&format!("http://127.0.0.1:{}/", ingest.port)).await;
    assert_eq!(status, 404);
    let (status, _) = get_text(&format!(
        "http://127.0.0.1:{}/api/v1/stream?products=BTC-USD",
        ingest.port
    ))
    .await;
    assert_eq!(status, 404);
    let ingest_metrics = scrape(ingest.port).await.expect("metrics");
    assert!(value(&ingest_metrics, "spot_canvas_feed_trades_total") > 0.0);
    assert_eq!(
        value(&ingest_metrics, "spot_canvas_role{role=\"ingest\"}"),
        1.0
    );
    drop(reader);
    // Each stops within Cloud Run's 10 s after SIGTERM, cleanly.
    for service in [&mut web, &mut ingest] {
        service.terminate();
        let status = service.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "{status}\n{}", service.log());
    }
    nats.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn the_embedded_nats_refuses_clients_without_the_token_made_at_start() {
    use std::os::unix::fs::PermissionsExt;

    let sim = simulator(2, 4.0).await;
    let db = TestDb::new().await;
    let data_dir = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    // No NATS_URL: the service starts its own nats-server.
    let env = AppEnv::for_sim(&sim, data_dir.path()).database(&db);
    let log = logs.path().join("serve.log");
    let service = Service::start(&env, &log).await;
    service
        .wait_for_health("ready on the embedded NATS", WITHIN, |status, h| {
            status == 200 && h["checks"]["nats"]["ok"] == true
        })
        .await;
    let store = data_dir.path().join("nats");
    let config = store.join("nats-server.conf");
    let mode = std::fs::metadata(&config)
        .expect("the config file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let text = std::fs::read_to_string(&config).expect("readable");
    let token = text
        .split('"')
        .nth(1)
        .filter(|t| t.len() >= 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .expect("a token of 32 random bytes, hex")
        .to_owned();
    // The server's address, from its ports file.
    let ports = std::fs::read_dir(store.join("ports"))
        .expect("ports dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))
        .expect("a ports file");
    let ports: Value =
        serde_json::from_str(&std::fs::read_to_string(ports.path()).expect("read")).expect("json");
    let url = ports["nats"][0].as_str().expect("a client URL").to_owned();

    // Without the token, or with another: refused.
    let refused = async_nats::ConnectOptions::new()
        .connect(url.as_str())
        .await
        .expect_err("no token: refused");
    assert!(
        refused.to_string().to_lowercase().contains("authorization"),
        "{refused}"
    );
    let wrong = async_nats::ConnectOptions::with_token("0".repeat(64))
        .connect(url.as_str())
        .await
        .expect_err("a wrong token: refused");
    assert!(
        wrong.to_string().to_lowercase().contains("authorization"),
        "{wrong}"
    );
    // With it: taken.
    let client = async_nats::ConnectOptions::with_token(token.clone())
        .connect(url.as_str())
        .await
        .expect("the token is taken");
    client.flush().await.expect("flush");

    // The token is in no argv, no environment and no log line; the service works.
    for pid in std::iter::once(service.pid()).chain(service.descendants()) {
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&argv).contains(&token),
            "the token in the argv of {pid}"
        );
        assert!(
            !common::environment_of(pid)
                .iter()
                .any(|e| e.contains(&token)),
            "the token in the environment of {pid}"
        );
    }
    service
        .wait_for_health("candles flowing through NATS", WITHIN, |status, h| {
            let live = &h["bus"]["live"];
            status == 200
                && (live["messages"].as_u64() > Some(0) || live["own_skipped"].as_u64() > Some(0))
        })
        .await;
    let nats_log = std::fs::read_to_string(store.join("nats-server.log")).unwrap_or_default();
    assert!(
        !service.log().contains(&token),
        "the token in the service's log"
    );
    assert!(!nats_log.contains(&token), "the token in nats-server's log");
    drop(client);
    drop(service);
    sim.stop().await;
}

/// A port free on loopback now (the service binds it moments later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
