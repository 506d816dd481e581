//! Refusals and the end of streams: bad parameters, full caps, the instance cap, and the stop.

use super::*;

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
