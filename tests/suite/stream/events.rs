//! What a stream sends: the exact events, the current state first, filters, and a client back with
//! Last-Event-ID.

use super::*;

#[tokio::test]
async fn a_known_candle_is_sent_as_the_exact_designed_event() {
    let s = setup(StreamConfig::default()).await;
    let u = update("BTC-USD", Granularity::OneMinute, 7);
    s.live.apply(u.clone());
    let mut stream = s
        .open_with(
            "/api/v1/stream?product=BTC-USD&granularity=ONE_MINUTE",
            &[("accept-encoding", "gzip, br")],
        )
        .await;
    let event = stream.next(SOON).await.expect("the current candle");
    let version = event.attr("data-version").expect("a version");
    assert_eq!(version.len(), 58, "29 bytes in hex");
    assert_eq!(
        event.text,
        format!(
            "event: datastar-patch-elements\nid: 1\ndata: elements <spot-candle id=\"BTC-USD-ONE_MINUTE\" \
             data-product=\"BTC-USD\" data-granularity=\"ONE_MINUTE\" data-timestamp=\"{T0}\" \
             data-open=\"0.0000123456789\" data-high=\"42500.0000000000\" \
             data-low=\"0.0000000100\" data-close=\"0.7000000000\" \
             data-volume=\"1234567890123.123456789012\" data-complete=\"false\" data-trades=\"7\" \
             data-buy-volume=\"0.5000000000\" data-revision=\"0\" data-version=\"{version}\" \
             data-last-trade-id=\"1007\" data-last-trade-time=\"2026-09-21T14:14:01.500Z\" \
             data-received=\"2026-09-21T14:14:01.600Z\"></spot-candle>\n\n"
        )
    );
}

#[tokio::test]
async fn the_current_state_comes_first_then_the_live_changes_in_order() {
    let s = setup(StreamConfig::default()).await;
    s.live.apply(update("BTC-USD", Granularity::OneMinute, 1));
    s.live.apply(update("ETH-USD", Granularity::OneMinute, 1));
    s.live.apply(update("BTC-USD", Granularity::FiveMinutes, 1));
    let mut stream = s
        .open("/stream?products=BTC-USD,ETH-USD&granularities=1m")
        .await;
    let mut initial = [
        stream.next(SOON).await.expect("first"),
        stream.next(SOON).await.expect("second"),
    ];
    initial.sort_by_key(|e| e.attr("id"));
    let ids: Vec<_> = initial.iter().map(|e| e.attr("id")).collect();
    assert_eq!(
        ids,
        [
            Some("BTC-USD-ONE_MINUTE".to_owned()),
            Some("ETH-USD-ONE_MINUTE".to_owned())
        ]
    );
    for count in 2..=50 {
        s.live
            .apply(update("BTC-USD", Granularity::OneMinute, count));
        // Not subscribed: never sent.
        s.live
            .apply(update("BTC-USD", Granularity::FiveMinutes, count));
        s.live
            .apply(update("SOL-USD", Granularity::OneMinute, count));
    }
    let mut ids = Vec::new();
    for count in 2..=50u64 {
        let event = stream.next(SOON).await.expect("a live change");
        assert_eq!(event.attr("id").as_deref(), Some("BTC-USD-ONE_MINUTE"));
        assert_eq!(event.attr("data-trades"), Some(count.to_string()));
        ids.push(event.id.expect("an id").parse::<u64>().expect("numeric id"));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    // An older version never reaches the client.
    s.live.apply(update("BTC-USD", Granularity::OneMinute, 10));
    s.live.apply(update("ETH-USD", Granularity::OneMinute, 2));
    let next = stream.next(SOON).await.expect("the next change");
    assert_eq!(next.attr("id").as_deref(), Some("ETH-USD-ONE_MINUTE"));
}

#[tokio::test]
async fn filters_select_products_and_granularities() {
    let s = setup(StreamConfig::default()).await;
    for p in ["BTC-USD", "ETH-USD", "SOL-USD"] {
        for g in Granularity::ALL {
            s.live.apply(update(p, g, 1));
        }
    }
    let collect = |mut stream: SseReader, n: usize| async move {
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(
                stream
                    .next(SOON)
                    .await
                    .expect("event")
                    .attr("id")
                    .expect("id"),
            );
        }
        ids.sort();
        (ids, stream)
    };
    // Every product, one granularity.
    let (ids, mut every) = collect(s.open("/stream?granularity=FIVE_MINUTE").await, 3).await;
    assert_eq!(
        ids,
        [
            "BTC-USD-FIVE_MINUTES",
            "ETH-USD-FIVE_MINUTES",
            "SOL-USD-FIVE_MINUTES"
        ]
    );
    // One product (lower case is fine), every granularity.
    let (ids, _one) = collect(s.open("/stream?product=eth-usd").await, 8).await;
    assert_eq!(ids.len(), 8);
    assert!(ids.iter().all(|id| id.starts_with("ETH-USD-")), "{ids:?}");
    // Two products, repeated parameters, two granularities.
    let (ids, _two) = collect(
        s.open("/api/v1/stream?product=BTC-USD&product=SOL-USD&granularity=1h&granularity=ONE_DAY")
            .await,
        4,
    )
    .await;
    assert_eq!(
        ids,
        [
            "BTC-USD-ONE_DAY",
            "BTC-USD-ONE_HOUR",
            "SOL-USD-ONE_DAY",
            "SOL-USD-ONE_HOUR"
        ]
    );
    // Live: the every-product client hears a new product's 5m candle, not its 1m.
    s.live.apply(update("SOL-USD", Granularity::OneMinute, 2));
    s.live.apply(update("SOL-USD", Granularity::FiveMinutes, 2));
    let next = every.next(SOON).await.expect("live");
    assert_eq!(next.attr("id").as_deref(), Some("SOL-USD-FIVE_MINUTES"));
    assert_eq!(next.attr("data-trades").as_deref(), Some("2"));
}

#[tokio::test]
async fn a_client_back_with_last_event_id_gets_a_full_consistent_snapshot() {
    let s = setup(StreamConfig::default()).await;
    s.live.apply(update("BTC-USD", Granularity::OneMinute, 1));
    s.live.apply(update("ETH-USD", Granularity::OneMinute, 1));
    let query = "/stream?products=BTC-USD,ETH-USD&granularity=1m";
    let mut stream = s.open(query).await;
    stream.next(SOON).await.expect("first");
    stream.next(SOON).await.expect("second");
    s.live.apply(update("BTC-USD", Granularity::OneMinute, 2));
    let last = stream.next(SOON).await.expect("a change");
    let last_id = last.id.expect("an id");
    drop(stream);
    // While it is away, both series change (one twice).
    s.live.apply(update("BTC-USD", Granularity::OneMinute, 3));
    s.live.apply(update("ETH-USD", Granularity::OneMinute, 2));
    s.live.apply(update("ETH-USD", Granularity::OneMinute, 3));
    let mut back = s.open_with(query, &[("last-event-id", &last_id)]).await;
    let mut snapshot = [
        back.next(SOON).await.expect("first"),
        back.next(SOON).await.expect("second"),
    ];
    assert!(
        back.comments
            .iter()
            .any(|c| c == &format!("resumed after event {last_id}: full snapshot follows")),
        "{:?}",
        back.comments
    );
    snapshot.sort_by_key(|e| e.attr("id"));
    let state: Vec<(String, String)> = snapshot
        .iter()
        .map(|e| {
            (
                e.attr("id").expect("id"),
                e.attr("data-trades").expect("trades"),
            )
        })
        .collect();
    assert_eq!(
        state,
        [
            ("BTC-USD-ONE_MINUTE".to_owned(), "3".to_owned()),
            ("ETH-USD-ONE_MINUTE".to_owned(), "3".to_owned())
        ],
        "the latest of every series, nothing older"
    );
    // Then the live changes, as for any client.
    s.live.apply(update("ETH-USD", Granularity::OneMinute, 4));
    let next = back.next(SOON).await.expect("live");
    assert_eq!(next.attr("data-trades").as_deref(), Some("4"));
    // A garbage id is no reason to refuse: a full snapshot as well.
    let mut odd = s
        .open_with(query, &[("last-event-id", "not-an-id\t;")])
        .await;
    odd.next(SOON).await.expect("snapshot");
}
