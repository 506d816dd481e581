//! The metrics move consistently: every update written or superseded.

use super::*;

#[tokio::test]
async fn metrics_move_consistently_and_every_update_is_written_or_superseded() {
    let sim = simulator(3, 5.0).await;
    let db = TestDb::new().await;
    let data_dir = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let env = AppEnv::for_sim(&sim, data_dir.path()).database(&db);
    let service = Service::start(&env, &logs.path().join("serve.log")).await;
    let port = service.port;
    // A stream client, so that the end-to-end histogram has updates to time. A 503 (with
    // Retry-After: the product list not readable yet on a loaded machine) is retried, as a
    // client does; any other refusal fails the test.
    let stream = eventually("the stream open", WITHIN, || async {
        let request = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{port}/api/v1/stream?products=BTC-USD,ETH-USD&granularity=1m"
            ))
            .send();
        let response = tokio::time::timeout(WITHIN, request)
            .await
            .expect("the stream answers in time")
            .expect("the stream answers");
        match response.status().as_u16() {
            200 => Some(response),
            503 => None,
            status => panic!(
                "the stream refused with {status}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    })
    .await;
    let mut reader = common::SseReader::new(stream);
    let first = eventually("trades, updates and written rows", WITHIN, || async {
        let s = scrape(port).await?;
        (value(&s, "spot_canvas_feed_trades_total") > 0.0
            && value(&s, "spot_canvas_store_rows_written_total") > 0.0)
            .then_some(s)
    })
    .await;
    // Live events reach the client.
    let mut events = 0;
    while events < 3 {
        let event = reader.next(WITHIN).await.expect("a live event");
        if event.text.contains("<spot-candle") {
            events += 1;
        }
    }
    let second = eventually("the counters to move", WITHIN, || async {
        let s = scrape(port).await?;
        (value(&s, "spot_canvas_feed_trades_total")
            > value(&first, "spot_canvas_feed_trades_total")
            && value(&s, "spot_canvas_end_to_end_seconds_count") > 0.0)
            .then_some(s)
    })
    .await;
    // Counters never go back.
    for (key, before) in &first {
        if key.contains("_total") || key.ends_with("_count") || key.ends_with("_sum") {
            assert!(
                value(&second, key) >= *before,
                "{key} went from {before} to {}",
                value(&second, key)
            );
        }
    }
    for histogram in [
        "spot_canvas_engine_processing_seconds",
        "spot_canvas_store_write_seconds",
        "spot_canvas_end_to_end_seconds",
    ] {
        let count = value(&second, &format!("{histogram}_count"));
        assert!(count > 0.0, "{histogram} has no samples");
        let inf = value(&second, &format!("{histogram}_bucket{{le=\"+Inf\"}}"));
        assert_eq!(
            inf, count,
            "{histogram}: the +Inf bucket holds every sample"
        );
        let sum = value(&second, &format!("{histogram}_sum"));
        assert!(
            sum >= 0.0 && sum / count < 5.0,
            "{histogram}: mean {} s",
            sum / count
        );
    }
    for channel in [
        "feed_events",
        "engine_updates",
        "backfills",
        "writer",
        "publisher",
    ] {
        let key = format!("spot_canvas_channel_capacity{{channel=\"{channel}\"}}");
        assert!(value(&second, &key) > 0.0, "{key} missing");
        let utilization = value(
            &second,
            &format!("spot_canvas_channel_utilization{{channel=\"{channel}\"}}"),
        );
        assert!(
            (0.0..=1.0).contains(&utilization),
            "{channel}: {utilization}"
        );
    }
    assert_eq!(value(&second, "spot_canvas_stream_clients"), 1.0);
    assert_eq!(value(&second, "spot_canvas_role{role=\"both\"}"), 1.0);
    for alarm in [
        "quiet_product",
        "heartbeat",
        "clock_drift",
        "database",
        "nats",
    ] {
        let key = format!("spot_canvas_alarm{{alarm=\"{alarm}\"}}");
        assert_eq!(second.get(&key), Some(&0.0), "{key}");
    }
    // Trading stops: once the writer has flushed, every update the engine produced is a row
    // written or was superseded by a newer update of its candle before the write.
    sim_post(&sim, "/sim/pause", json!({ "paused": true })).await;
    let flushed = eventually(
        "updates produced = rows written + superseded",
        WITHIN,
        || async {
            let s = scrape(port).await?;
            let produced = value(&s, "spot_canvas_engine_updates_total");
            let written = value(&s, "spot_canvas_store_rows_written_total");
            let superseded = value(&s, "spot_canvas_store_updates_superseded_total");
            (produced > 0.0 && produced == written + superseded).then_some(s)
        },
    )
    .await;
    let produced = value(&flushed, "spot_canvas_engine_updates_total");
    assert!(value(&flushed, "spot_canvas_store_rows_written_total") > 0.0);
    assert!(value(&flushed, "spot_canvas_store_batches_total") > 0.0);
    // The same updates went to NATS.
    wait_for("published + superseded = produced", WITHIN, || async {
        scrape(port).await.is_some_and(|s| {
            let published = value(&s, "spot_canvas_bus_published_total")
                + value(&s, "spot_canvas_bus_updates_superseded_total");
            published >= produced && published == value(&s, "spot_canvas_engine_updates_total")
        })
    })
    .await;
    // And PostgreSQL holds the rows the metric counts, at least one per candle written.
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM live_candles")
        .fetch_one(&db.pool)
        .await
        .expect("counts");
    assert!(rows > 0 && rows as f64 <= value(&flushed, "spot_canvas_store_rows_written_total"));
    drop(reader);
    // JSON logs for Cloud Logging: every line an object with a severity; one line per request,
    // with its path and status but never its query; the database's password nowhere.
    let lines = service.log_lines();
    assert!(lines.len() > 10);
    for line in &lines {
        assert!(
            ["DEBUG", "INFO", "WARNING", "ERROR"]
                .contains(&line["severity"].as_str().unwrap_or("")),
            "{line}"
        );
        assert!(
            line["time"].is_string() && line["message"].is_string(),
            "{line}"
        );
    }
    let requests: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request").collect();
    assert!(
        requests
            .iter()
            .any(|l| l["path"] == "/api/v1/stream" && l["status"] == 200 && l["method"] == "GET"),
        "an access line for the stream"
    );
    // Scrapes and probes come every few seconds: at debug, not in an `info` log.
    assert!(
        !requests.iter().any(|l| l["path"] == "/metrics"),
        "no access line for a scrape at info"
    );
    let log = service.log();
    assert!(
        !log.contains("products=BTC-USD"),
        "no query string in the log"
    );
    let password = db.url.expose_secret();
    let password = password
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(user, _)| user.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .expect("the test database's URL holds a password");
    assert!(
        password.len() >= 8 && !log.contains(&password),
        "the password leaked"
    );
    drop(service);
    sim.stop().await;
}
