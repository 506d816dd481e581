//! The pools and the history API: statement timeouts, the separate API pool, limits and 503.

use super::*;

#[tokio::test]
async fn pools_have_a_statement_timeout_and_the_api_pool_is_small_and_separate() {
    let db = TestDb::migrated().await;
    let service = spot_canvas::store::connect(&db.url)
        .await
        .expect("connects");
    let show = |pool: sqlx::PgPool, name: &'static str| async move {
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("SHOW {name}")))
            .fetch_one(&pool)
            .await
            .expect("show")
    };
    assert_eq!(show(service.clone(), "statement_timeout").await, "1min");
    assert_eq!(show(service.clone(), "tcp_keepalives_idle").await, "30");
    let api = spot_canvas::store::api_pool(&service);
    assert_eq!(show(api.clone(), "statement_timeout").await, "5s");
    assert_eq!(api.options().get_max_connections(), 3);
    // Every API connection busy: the API waits at most its acquire timeout and the writer's
    // pool is untouched.
    let mut busy = Vec::new();
    for _ in 0..3 {
        let api = api.clone();
        busy.push(tokio::spawn(async move {
            sqlx::query("SELECT pg_sleep(3)").execute(&api).await
        }));
    }
    wait_for(
        "three API reads running",
        Duration::from_secs(20),
        || async {
            let sleeping: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(3)' \
             AND state = 'active'",
            )
            .fetch_one(&db.pool)
            .await
            .expect("activity");
            sleeping == 3
        },
    )
    .await;
    let starved = sqlx::query("SELECT 1").execute(&api).await;
    assert!(
        matches!(starved, Err(sqlx::Error::PoolTimedOut)),
        "the fourth API read gives up: {starved:?}"
    );
    let repo = Repository::new(service.clone());
    assert_eq!(
        repo.upsert_candles(&[update("BTC-USD", T0, 0, 1, "1")])
            .await
            .expect("the writer's pool still writes"),
        1
    );
    for read in busy {
        read.await.expect("join").expect("the long reads end");
    }
}

/// The service's HTTP state around `repository` (the rest idle).
fn app_state(repository: Repository) -> spot_canvas::web::AppState {
    spot_canvas::web::AppState::idle(repository)
}

#[tokio::test]
async fn the_history_api_honours_end_and_caps_limit_and_answers_503_while_the_database_is_away() {
    let db = TestDb::migrated().await;
    let repo = Repository::new(db.pool.clone());
    // 1,200 one-minute candles, and one five-minute candle that a minute query never returns.
    let rows: Vec<CandleUpdate> = (0..1_200)
        .map(|i| update("BTC-USD", T0 + 60 * i, 0, 1 + i as u64, "5"))
        .collect();
    repo.upsert_candles(&rows).await.expect("insert");
    let mut five = update("BTC-USD", T0, 0, 1, "9");
    five.candle.granularity = Granularity::FiveMinutes;
    repo.upsert_candle(&five).await.expect("insert");
    // The API answers for known products only (those in trading_pairs).
    repo.upsert_products(&[common::product("BTC-USD", None)])
        .await
        .expect("insert the product");
    let state = app_state(Repository::new(spot_canvas::store::api_pool(&db.pool)));

    // `end` is exclusive; the newest `limit` before it come back oldest first.
    let end = T0 + 60 * 10;
    let (status, body) = common::get_json(
        &state,
        &format!("/api/v1/candles?product=BTC-USD&granularity=1m&limit=3&end={end}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["granularity"], "ONE_MINUTE");
    assert_eq!(
        common::timestamps(&body),
        vec![T0 + 420, T0 + 480, T0 + 540]
    );
    assert_eq!(body["candles"][0]["close"], "5");
    assert_eq!(body["candles"][0]["trade_count"], 8);

    // The default limit is 300, the cap 1,000 (of the 1,200 stored: the newest).
    let (_, body) = common::get_json(
        &state,
        "/api/v1/candles?product=BTC-USD&granularity=ONE_MINUTE",
    )
    .await;
    assert_eq!(common::timestamps(&body).len(), 300);
    let (status, body) = common::get_json(
        &state,
        "/api/v1/candles?product=BTC-USD&granularity=ONE_MINUTE&limit=1000",
    )
    .await;
    assert_eq!(status, 200);
    let got = common::timestamps(&body);
    assert_eq!(got.len(), 1_000);
    assert_eq!(got.first(), Some(&(T0 + 60 * 200)));
    assert_eq!(got.last(), Some(&(T0 + 60 * 1_199)));
    let (status, body) = common::get_json(
        &state,
        "/api/v1/candles?product=BTC-USD&granularity=ONE_MINUTE&limit=1001",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().expect("error").contains("limit"));
    let (_, body) =
        common::get_json(&state, "/api/v1/candles?product=BTC-USD&granularity=5m").await;
    assert_eq!(body["granularity"], "FIVE_MINUTES");
    assert_eq!(common::timestamps(&body), vec![T0]);

    // The database goes away: 503 with a message that names no connection detail.
    db.pg.stop_with("immediate").await.expect("stop");
    let (status, body) =
        common::get_json(&state, "/api/v1/candles?product=BTC-USD&granularity=1m").await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("not available"), "{error}");
    assert!(!error.contains("postgres://"), "{error}");
    // And back.
    db.pg.restart().await.expect("start again");
    common::eventually("200 again", Duration::from_secs(30), || async {
        let (status, _) =
            common::get_json(&state, "/api/v1/candles?product=BTC-USD&granularity=1m").await;
        (status == 200).then_some(())
    })
    .await;
}
