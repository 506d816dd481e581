//! What each role serves, readiness by role, and a stream of a product the feed carries.

use super::*;

#[tokio::test]
async fn readiness_of_the_feed_follows_the_role() {
    use crate::config::Role;
    use crate::ops::readiness::checks;
    let state = state();
    let stages = state.reports.stages.report();
    // Ingesting, with products and no connection up: not ready.
    state
        .reports
        .feed
        .register(0, vec![crate::model::ProductId::from_static("BTC-USD")]);
    state.reports.feed.set_assigned(1);
    let feed = checks(&state.probe(), &stages).await.feed;
    assert!(!feed.ok, "{}", feed.detail);
    // A shard that holds no products needs no connection.
    let empty = AppState::idle(unreachable_repository());
    empty.reports.feed.set_assigned(0);
    let feed = checks(&empty.probe(), &empty.reports.stages.report())
        .await
        .feed;
    assert!(feed.ok, "{}", feed.detail);
    assert!(feed.detail.contains("no products"));
    // Before the shard's products are chosen, it is not ready either.
    let choosing = AppState::idle(unreachable_repository());
    assert!(
        !checks(&choosing.probe(), &choosing.reports.stages.report())
            .await
            .feed
            .ok
    );
    // A web instance does not ingest: the feed is not its business.
    let mut web = AppState::idle(unreachable_repository());
    web.instance.role = Role::Web;
    let feed = checks(&web.probe(), &web.reports.stages.report())
        .await
        .feed;
    assert!(
        feed.ok && feed.detail.contains("does not ingest"),
        "{}",
        feed.detail
    );
}

#[tokio::test]
async fn an_ingest_instance_serves_health_and_metrics_only_and_metrics_can_move_out() {
    use crate::config::Role;
    let mut ingest = state();
    ingest.instance.role = Role::Ingest;
    let get = |router: Router, uri: &'static str| async move {
        send(
            router,
            Request::get(uri).body(Body::empty()).expect("a request"),
        )
        .await
    };
    assert_eq!(
        get(router(ingest.clone()), "/").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(router(ingest.clone()), "/api/v1/stream").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(router(ingest.clone()), "/health/live").await.status,
        StatusCode::OK
    );
    // No recorder in this state: the route is there and says so.
    assert_eq!(
        get(router(ingest.clone()), "/metrics").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let mut separate = ingest;
    separate.exporter.separate = true;
    assert_eq!(
        get(router(separate.clone()), "/metrics").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(metrics_router(separate.clone()), "/metrics")
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(metrics_router(separate), "/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_product_the_feed_carries_streams_before_it_reaches_trading_pairs() {
    let state = AppState {
        products: catalog::Catalog::fixed(vec![crate::model::ProductId::from_static("ETH-USD")]),
        ..state()
    };
    let status = |state: AppState, uri: &'static str| async move {
        let request = Request::get(uri).body(Body::empty()).expect("request");
        let response = router(state).oneshot(request).await.expect("an answer");
        // The status only: a stream's body does not end.
        response.status()
    };
    let uri = "/api/v1/stream?products=BTC-USD&granularity=1m";
    // In neither trading_pairs nor the feed: unknown.
    assert_eq!(status(state.clone(), uri).await, StatusCode::BAD_REQUEST);
    // The feed carries it (its list not yet in trading_pairs): streamed.
    state
        .reports
        .feed
        .register(0, vec![crate::model::ProductId::from_static("BTC-USD")]);
    assert_eq!(status(state.clone(), uri).await, StatusCode::OK);
    // Known from trading_pairs alone, as before.
    assert_eq!(
        status(
            state.clone(),
            "/api/v1/stream?products=ETH-USD&granularity=1m"
        )
        .await,
        StatusCode::OK
    );
    // One product carried, one in neither: unknown.
    assert_eq!(
        status(
            state,
            "/api/v1/stream?products=BTC-USD,SOL-USD&granularity=1m"
        )
        .await,
        StatusCode::BAD_REQUEST
    );
}
