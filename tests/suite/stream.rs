//! The SSE stream over real sockets, served by the service's own accept loop around a live
//! state the test feeds directly (and a real PostgreSQL holding the known products): the exact
//! event text, initial state then live changes, filters, bad parameters, caps, reconnects with
//! `Last-Event-ID`, and the stop.

use crate::common;

use std::time::Duration;

use chrono::DateTime;
use common::{SseReader, TestDb, app_state, serve};
use rust_decimal::Decimal;
use spot_canvas::config::StreamConfig;
use spot_canvas::live::LiveState;
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId};
use spot_canvas::store::Repository;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T0: i64 = 1_790_000_040;
/// Generous for a loaded CI: an event that is due arrives well within it.
const SOON: Duration = Duration::from_secs(10);

fn update(product: &str, g: Granularity, count: u64) -> CandleUpdate {
    let time = DateTime::from_timestamp(g.bucket_start_secs(T0), 0).expect("time");
    CandleUpdate {
        candle: Candle {
            product_id: product.parse().expect("an id"),
            granularity: g,
            start: time,
            open: "0.0000123456789".parse().expect("d"),
            high: "42500".parse().expect("d"),
            low: "0.00000001".parse().expect("d"),
            close: Decimal::new(count as i64, 1),
            volume: "1234567890123.123456789012".parse().expect("d"),
            buy_volume: Some("0.5".parse().expect("d")),
            trade_count: Some(count),
        },
        complete: false,
        revision: 0,
        counted_trades: count,
        last_trade_id: TradeId(1_000 + count),
        last_trade_time: time + chrono::TimeDelta::milliseconds(1_500),
        last_received: time + chrono::TimeDelta::milliseconds(1_600),
    }
}

/// A served router with a live state and a database knowing BTC-USD, ETH-USD and SOL-USD.
struct Setup {
    live: LiveState,
    served: common::Served,
    streams_stop: tokio_util::sync::CancellationToken,
    _db: TestDb,
}

async fn setup(config: StreamConfig) -> Setup {
    let db = TestDb::migrated().await;
    let repository = Repository::new(db.pool.clone());
    repository
        .upsert_products(&[
            common::product("BTC-USD", Some("0.01")),
            common::product("ETH-USD", Some("0.01")),
            common::product("SOL-USD", Some("0.01")),
        ])
        .await
        .expect("products");
    let live = LiveState::new();
    let state = app_state(repository, live.clone(), config);
    let streams_stop = state.streams.stop.clone();
    let served = serve(state, Duration::from_secs(1)).await;
    Setup {
        live,
        served,
        streams_stop,
        _db: db,
    }
}

impl Setup {
    fn url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{path_and_query}", self.served.port)
    }

    async fn open(&self, path_and_query: &str) -> SseReader {
        self.open_with(path_and_query, &[]).await
    }

    async fn open_with(&self, path_and_query: &str, headers: &[(&str, &str)]) -> SseReader {
        let mut request = reqwest::Client::new().get(self.url(path_and_query));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = tokio::time::timeout(SOON, request.send())
            .await
            .expect("answers in time")
            .expect("answers");
        assert_eq!(response.status(), 200, "{path_and_query}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{path_and_query}"
        );
        // Never compressed, whatever the client accepts.
        assert!(
            response.headers().get("content-encoding").is_none(),
            "{path_and_query}"
        );
        SseReader::new(response)
    }

    async fn status_and_error(&self, path_and_query: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .get(self.url(path_and_query))
            .timeout(SOON)
            .send()
            .await
            .expect("answers");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("a JSON error");
        (
            status,
            body["error"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

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
async fn bad_parameters_and_full_caps_are_refused_with_a_message() {
    let s = setup(StreamConfig {
        max_series: 4,
        max_per_address: 2,
        ..StreamConfig::default()
    })
    .await;
    let cases = [
        (
            "/stream?granularity=7m",
            "unknown granularity \"7m\"; accepted: ONE_MINUTE",
        ),
        ("/stream?products=BTC%20USD", "invalid product"),
        (
            "/stream?products=BTC-USD,DOGE-USD&granularity=1m",
            "unknown product(s): DOGE-USD; accepted:",
        ),
        (
            "/stream?products=BTC-USD,ETH-USD,SOL-USD&granularities=1m,5m",
            "subscription over the cap",
        ),
    ];
    for (query, expected) in cases {
        let (status, error) = s.status_and_error(query).await;
        assert_eq!(status, 400, "{query}: {error}");
        assert!(error.contains(expected), "{query}: {error}");
    }
    // The per-address cap: a third stream from 127.0.0.1 gets 429 until one closes.
    let first = s.open("/stream?granularity=1m").await;
    let _second = s.open("/stream?granularity=1m").await;
    let (status, error) = s.status_and_error("/stream?granularity=1m").await;
    assert_eq!(status, 429, "{error}");
    assert!(error.contains("at most 2 concurrent streams"), "{error}");
    assert_eq!(s.live.report().clients, 2);
    drop(first);
    common::wait_for("the closed stream's subscription to go", SOON, || async {
        s.live.report().clients == 1
    })
    .await;
    common::wait_for("the closed stream's place to come back", SOON, || async {
        reqwest::Client::new()
            .get(s.url("/stream?granularity=1m"))
            .timeout(SOON)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test]
async fn the_instance_cap_answers_503() {
    let s = setup(StreamConfig {
        max_clients: 1,
        ..StreamConfig::default()
    })
    .await;
    let _only = s.open("/stream").await;
    let refused = reqwest::get(s.url("/stream")).await.expect("answers");
    assert_eq!(refused.headers()["retry-after"], "5");
    let (status, error) = s.status_and_error("/stream").await;
    assert_eq!(status, 503, "{error}");
    assert!(error.contains("maximum of 1 streams"), "{error}");
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

#[tokio::test]
async fn the_stop_ends_open_streams_within_a_second_even_for_a_client_that_never_reads() {
    let s = setup(StreamConfig::default()).await;
    s.live.apply(update("BTC-USD", Granularity::OneMinute, 1));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut stream = s.open("/stream").await;
        stream.next(SOON).await.expect("the current candle");
        readers.push(stream);
    }
    // A client that sent its request and never reads a byte of the answer, with a tiny
    // receive buffer: its socket fills, so its response can never be finished.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut silent = socket
        .connect(([127, 0, 0, 1], s.served.port).into())
        .await
        .expect("connects");
    silent
        .write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    common::wait_for("four open streams", SOON, || async {
        s.live.report().clients == 4
    })
    .await;
    // Enough events to fill the silent client's socket and the server's buffers.
    for count in 2..=3_000 {
        s.live
            .apply(update("BTC-USD", Granularity::OneMinute, count));
    }
    // The service's stop: streams first, then the HTTP server.
    let stopped_at = tokio::time::Instant::now();
    s.streams_stop.cancel();
    s.served.stop.cancel();
    for mut stream in readers {
        assert!(
            stream.ends_within(Duration::from_secs(1)).await,
            "a stream still open a second after the stop"
        );
    }
    let served = tokio::time::timeout(Duration::from_secs(3), s.served.task)
        .await
        .expect("the server ends within its grace and a second")
        .expect("join");
    served.expect("served");
    assert!(stopped_at.elapsed() < Duration::from_secs(3));
    assert_eq!(s.live.report().clients, 0, "every subscription is gone");
    // The silent client's connection was dropped: what was on its way, then the end.
    let closed = tokio::time::timeout(SOON, async {
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            match silent.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent client's connection is closed");
}
