//! Hostile products lists: odd ids, duplicates, control characters, unlisted trades, huge and
//! endless lists.

use super::*;

/// Resident memory of process `pid` from `/proc/<pid>/status`: `VmRSS` now and `VmHWM`, its
/// peak so far, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process runs");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .expect(name)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn a_products_list_of_2_gib_costs_tens_of_mib_and_is_reported() {
    // The list is 2 GiB (streamed, no length announced) from the service's first fetch on.
    let sim = simulator(3, 4.0).await;
    sim_post(&sim, "/sim/products-faults", json!({ "kind": "huge" })).await;
    let db = TestDb::new().await;
    let data_dir = common::data_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let env = AppEnv::for_sim(&sim, data_dir.path()).database(&db);
    let service = Service::start(&env, &logs.path().join("serve.log")).await;
    let port = service.port;
    let health = service
        .wait_for_health("two refused products lists", WITHIN, |_, h| {
            h["feed"]["discovery"]["too_large"].as_u64() >= Some(2)
        })
        .await;
    let error = health["feed"]["discovery"]["last_error"]
        .as_str()
        .expect("the error in /health");
    assert!(error.contains("body larger than 16777216 bytes"), "{error}");
    let s = scrape(port).await.expect("metrics");
    assert!(
        value(
            &s,
            "spot_canvas_rest_body_too_large_total{answer=\"products\"}"
        ) >= 2.0,
        "counted in /metrics"
    );
    let (_, peak_during_fault) = memory_of(service.pid());

    // The list is normal again: the next attempt reads it, and the markets stream.
    let cleared = reqwest::Client::new()
        .delete(format!("{}/sim/products-faults", root(&sim)))
        .send()
        .await
        .expect("answers");
    assert_eq!(cleared.status(), 204);
    let health = service
        .wait_for_health("the markets streaming", WITHIN, |status, h| {
            status == 200
                && h["feed"]["products"].as_u64() == Some(3)
                && h["feed"]["discovery"]["last_error"].is_null()
                && h["engine"]["trades"].as_u64() > Some(200)
        })
        .await;
    assert_eq!(
        health["feed"]["discovery"]["last_products"]
            .as_u64()
            .map(|n| n > 3),
        Some(true)
    );
    // Normal: a few samples of the settled process, the lowest.
    let mut normal = u64::MAX;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        normal = normal.min(memory_of(service.pid()).0);
    }
    let (_, peak) = memory_of(service.pid());
    println!(
        "peak RSS while the products list was 2 GiB: {} MiB (VmHWM); normal RSS after: {} MiB; \
         peak over the whole run: {} MiB",
        peak_during_fault >> 20,
        normal >> 20,
        peak >> 20
    );
    assert!(
        peak_during_fault <= normal + (64 << 20),
        "peak {} MiB while the list was 2 GiB, normal {} MiB",
        peak_during_fault >> 20,
        normal >> 20
    );
    drop(service);
    sim.stop().await;
}

/// What a hostile exchange sends in one run: products-list faults (armed before the service
/// starts), WebSocket faults (armed once it streams), and the `/health` reading that shows the
/// bad items counted.
struct Hostile {
    products_faults: Vec<Value>,
    ws_faults: Vec<Value>,
    what: &'static str,
    counted: fn(&Value) -> bool,
    /// The products faults are cleared once counted (a list the service cannot take at all).
    cleared_when_counted: bool,
}

/// The normal markets of a simulator of 3 products.
const NORMAL: [&str; 3] = ["BTC-USD", "ETH-USD", "SOL-USD"];

/// Every byte of a stream read for `secs` seconds (the stream goes on: it is cut there).
fn raw_stream(url: String, secs: u64) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut response = reqwest::get(&url).await.expect("the stream answers");
        assert_eq!(response.status(), 200, "{url}");
        let mut bytes = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, response.chunk()).await {
            bytes.extend_from_slice(&chunk);
        }
        bytes
    })
}

/// Asserts a stream's raw bytes hold events and no control character but the line feeds of
/// the format: no CR, no NUL, no other C0 code, no DEL, no C1 code.
fn assert_no_control_characters(name: &str, bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).expect("UTF-8");
    assert!(
        text.contains("event: datastar-patch-elements"),
        "{name}: events were read"
    );
    let bad: Vec<(usize, char)> = text
        .char_indices()
        .filter(|(_, c)| c.is_control() && *c != '\n')
        .take(5)
        .collect();
    assert!(bad.is_empty(), "{name}: control characters {bad:?}");
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let field = line.split(':').next().unwrap_or_default();
        assert!(
            matches!(field, "" | "event" | "id" | "data" | "retry"),
            "{name}: a line of no SSE field: {line:?}"
        );
        if field == "retry" {
            panic!("{name}: no stream sets the reconnect delay: {line:?}");
        }
    }
}

/// Runs the service against a simulator doing `hostile`, reads the raw bytes of every stream
/// meanwhile, stops it, and shows the normal markets untouched: on the board, their candles
/// stored and exact against the trade log, and the streams free of control characters.
async fn normal_markets_stay_exact_beside(hostile: Hostile) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Simulator::start(SimConfig {
        products: 3,
        trades_per_second: 8.0,
        history_minutes: 3,
        trade_log: Some(dir.path().join("trades.jsonl")),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    for fault in &hostile.products_faults {
        sim_post(&sim, "/sim/products-faults", fault.clone()).await;
    }
    let db = TestDb::new().await;
    let data_dir = common::data_dir();
    // Only what the feed delivers: the stored trade counts tell each product's window.
    let env = AppEnv::for_sim(&sim, data_dir.path())
        .database(&db)
        .set("BACKFILL_HORIZON_HOURS", "0");
    let mut service = Service::start(&env, &dir.path().join("serve.log")).await;
    let port = service.port;
    if hostile.cleared_when_counted {
        service
            .wait_for_health(hostile.what, WITHIN, |_, h| (hostile.counted)(h))
            .await;
        let cleared = reqwest::Client::new()
            .delete(format!("{}/sim/products-faults", root(&sim)))
            .send()
            .await
            .expect("answers");
        assert_eq!(cleared.status(), 204);
    }
    service
        .wait_for_health(
            "ready, the normal markets subscribed",
            WITHIN,
            |status, h| status == 200 && h["feed"]["products"].as_u64() == Some(3),
        )
        .await;
    for fault in &hostile.ws_faults {
        sim_post(&sim, "/sim/faults", fault.clone()).await;
    }
    let base = format!("http://127.0.0.1:{port}");
    let streams = [
        (
            "/board/stream",
            raw_stream(format!("{base}/board/stream"), 12),
        ),
        (
            "/markets/BTC-USD/stream",
            raw_stream(format!("{base}/markets/BTC-USD/stream"), 12),
        ),
        (
            "/stream",
            raw_stream(format!("{base}/stream?products={}", NORMAL.join(",")), 12),
        ),
    ];
    let health = service
        .wait_for_health(hostile.what, WITHIN, |_, h| {
            (hostile.counted)(h)
                && h["engine"]["trades"].as_u64() > Some(100)
                && h["store"]["writer"]["written_rows"].as_u64() > Some(0)
        })
        .await;
    assert_eq!(health["feed"]["products"], 3, "{}", health["feed"]);
    // The board lists the normal markets, and nothing else.
    let (status, page) = get_text(&format!("{base}/")).await;
    assert_eq!(status, 200);
    let rows = page.matches("id=\"row-").count();
    assert_eq!(rows, 3, "three rows on the board");
    for id in NORMAL {
        assert!(
            page.contains(&format!("id=\"row-{id}\"")),
            "{id} on the board"
        );
    }
    for (name, stream) in streams {
        let bytes = stream.await.expect("the reader");
        assert_no_control_characters(name, &bytes);
    }
    service.terminate();
    let exit = service.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit}\n{}", service.log());
    sim.stop().await;
    // What is stored is exactly the trade log's normal trades.
    let log = read_trade_log(&dir.path().join("trades.jsonl"));
    let (windows, stored) = common::stored_windows(&db.pool, &log).await;
    assert_eq!(
        windows.keys().map(String::as_str).collect::<Vec<_>>(),
        NORMAL,
        "only the normal markets are stored"
    );
    assert!(stored > 100, "{stored} trades stored");
    common::assert_table_matches_log(&db.pool, &log, &windows).await;
    let pairs: Vec<String> =
        sqlx::query_scalar("SELECT product_id FROM trading_pairs ORDER BY product_id")
            .fetch_all(&db.pool)
            .await
            .expect("trading pairs");
    assert!(
        NORMAL.iter().all(|id| pairs.iter().any(|p| p == id)),
        "the normal markets are listed: {pairs:?}"
    );
    assert!(
        pairs
            .iter()
            .all(|p| spot_canvas::model::ProductId::parse(p).is_ok()),
        "only ids of the grammar are stored: {pairs:?}"
    );
}

#[tokio::test]
async fn odd_product_ids_in_the_list_cost_only_themselves() {
    normal_markets_stay_exact_beside(Hostile {
        products_faults: vec![json!({ "kind": "odd_ids" })],
        ws_faults: vec![],
        what: "the eleven odd ids counted as skipped",
        counted: |h| h["feed"]["skipped_products"]["last_list"].as_u64() >= Some(11),
        cleared_when_counted: false,
    })
    .await;
}

#[tokio::test]
async fn a_product_listed_twice_is_taken_once() {
    normal_markets_stay_exact_beside(Hostile {
        products_faults: vec![json!({ "kind": "duplicate", "product_id": "ETH-USD" })],
        ws_faults: vec![],
        what: "the second listing counted as skipped",
        counted: |h| h["feed"]["skipped_products"]["last_list"].as_u64() == Some(1),
        cleared_when_counted: false,
    })
    .await;
}

#[tokio::test]
async fn control_characters_in_names_reach_no_stream() {
    normal_markets_stay_exact_beside(Hostile {
        // In a normal product's name fields (never used), and in an extra product's currency
        // codes (refused at the edge).
        products_faults: vec![
            json!({ "kind": "control_chars", "product_id": "BTC-USD" }),
            json!({ "kind": "control_chars", "currency_ids": true }),
        ],
        ws_faults: vec![],
        what: "the product with control characters in its codes counted as skipped",
        counted: |h| h["feed"]["skipped_products"]["last_list"].as_u64() == Some(1),
        cleared_when_counted: false,
    })
    .await;
}

#[tokio::test]
async fn trades_of_products_never_listed_are_counted_and_dropped() {
    normal_markets_stay_exact_beside(Hostile {
        products_faults: vec![],
        // One of a product never listed (a valid id), one of an id that is no product id.
        ws_faults: vec![
            json!({ "scope": "all", "kind": "unlisted_trade" }),
            json!({ "scope": "all", "kind": "unlisted_trade", "product_id": "BAD\r\nevent: x-USD" }),
        ],
        what: "the unlisted trade dropped and the malformed one rejected",
        counted: |h| {
            h["feed"]["unlisted_trades"].as_u64() >= Some(1)
                && h["feed"]["rejected_trades"].as_u64() >= Some(1)
        },
        cleared_when_counted: false,
    })
    .await;
}

#[tokio::test]
async fn a_products_list_too_large_is_refused_and_the_next_one_taken() {
    normal_markets_stay_exact_beside(Hostile {
        // 64 MiB, four times the cap, with no length announced: read until the cap.
        products_faults: vec![json!({ "kind": "huge", "bytes": 64u64 << 20 })],
        ws_faults: vec![],
        what: "a list refused as too large",
        counted: |h| h["feed"]["discovery"]["too_large"].as_u64() >= Some(1),
        cleared_when_counted: true,
    })
    .await;
}

#[tokio::test]
async fn a_products_list_that_never_ends_is_cut_and_the_next_one_taken() {
    normal_markets_stay_exact_beside(Hostile {
        products_faults: vec![json!({ "kind": "endless", "interval_ms": 50 })],
        ws_faults: vec![],
        what: "a list cut by the request timeout",
        counted: |h| h["feed"]["discovery"]["failures"].as_u64() >= Some(1),
        cleared_when_counted: true,
    })
    .await;
}
