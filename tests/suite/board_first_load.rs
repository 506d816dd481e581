//! The board's first load sends the board once, and its stream travels gzip-encoded.
//!
//! The page renders every row and names its rendering in the stream's URL (`&page=`); the
//! stream's first events then carry only the rows that changed since the page was rendered, an
//! update between the page and the stream included. A reconnect (the rendering taken) gets the
//! whole board again. A page stream asked with `Accept-Encoding: gzip` is gzip-encoded, each
//! chunk decodable on arrival; the candle stream never is.

use std::io::Write;

use flate2::write::GzDecoder;
use spot_canvas::model::Granularity;

use crate::common::{SseEvent, SseReader};
use crate::pages::{SOON, Setup, setup, this_minute, update};

/// The board stream's path as the page at `/` writes it (one minute).
async fn page_and_stream_path(s: &Setup) -> String {
    let html = s
        .get("/?granularity=1m")
        .await
        .text()
        .await
        .expect("the page");
    // In the stream's URL, in an attribute: `&#38;page=<16 hex digits>`.
    let token = html
        .match_indices("page=")
        .map(|(at, _)| {
            html[at + "page=".len()..]
                .chars()
                .take(16)
                .collect::<String>()
        })
        .find(|t| t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .expect("the page names its rendering");
    format!("/board/stream?granularity=ONE_MINUTE&page={token}")
}

/// The board rows an event carries.
fn rows(event: &SseEvent) -> usize {
    event.text.matches("class=\"board-row").count()
}

/// The events up to and including the first that holds `row`.
async fn events_until(stream: &mut SseReader, row: &str) -> Vec<SseEvent> {
    let mut seen = Vec::new();
    loop {
        let event = stream.next(SOON).await.expect("the stream goes on");
        let done = event.text.contains(&format!("id=\"{row}\""));
        seen.push(event);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn the_first_stream_of_a_page_sends_only_the_rows_changed_since_the_page() {
    let s = setup().await;
    let start = this_minute();
    for product in ["BTC-USD", "ETH-USD"] {
        assert!(
            s.live
                .apply(update(product, Granularity::OneMinute, start, 1))
        );
    }
    let path = page_and_stream_path(&s).await;
    // Between the page and its stream: not lost.
    assert!(
        s.live
            .apply(update("ETH-USD", Granularity::OneMinute, start, 9))
    );
    let mut board = s.open(&path).await;
    let opening = events_until(&mut board, "row-ETH-USD").await;
    assert!(
        opening[0].text.contains(r#""_link":"live""#),
        "{}",
        opening[0].text
    );
    assert!(
        opening.iter().all(|e| !e.text.contains("#board-rows")),
        "no whole board"
    );
    assert_eq!(
        opening.iter().map(rows).sum::<usize>(),
        1,
        "only the changed row"
    );
    let eth = opening.last().expect("the row");
    assert!(eth.text.contains("data-trades=\"9\""), "{}", eth.text);
    assert!(
        eth.data.iter().all(|d| !d.starts_with("selector")),
        "a morph by id"
    );
}

#[tokio::test]
async fn an_unchanged_board_is_not_sent_again_and_a_reconnect_gets_it_whole() {
    let s = setup().await;
    let start = this_minute();
    assert!(
        s.live
            .apply(update("BTC-USD", Granularity::OneMinute, start, 1))
    );
    let path = page_and_stream_path(&s).await;
    let mut board = s.open(&path).await;
    let live = board.next(SOON).await.expect("the live signal");
    assert!(live.text.contains(r#""_link":"live""#));
    assert!(
        s.live
            .apply(update("SHIB-USD", Granularity::OneMinute, start, 2))
    );
    let until = events_until(&mut board, "row-SHIB-USD").await;
    assert_eq!(
        until.iter().map(rows).sum::<usize>(),
        1,
        "nothing but the row that changed: {:?}",
        until.iter().map(|e| &e.text).collect::<Vec<_>>()
    );
    drop(board);

    // The same URL again (Datastar's retry): the rendering was taken, the whole board comes.
    let mut again = s.open(&path).await;
    let whole = events_until(&mut again, "row-BTC-USD").await;
    let rows_event = whole.last().expect("the board");
    assert!(rows_event.data.contains(&"selector #board-rows".to_owned()));
    assert!(rows_event.data.contains(&"mode inner".to_owned()));
    assert_eq!(rows(rows_event), 3);
}

#[tokio::test]
async fn a_page_stream_is_gzip_encoded_when_asked_and_the_candle_stream_never() {
    let s = setup().await;
    let start = this_minute();
    assert!(
        s.live
            .apply(update("BTC-USD", Granularity::OneMinute, start, 1))
    );
    let client = reqwest::Client::new();
    let mut response = client
        .get(s.url("/board/stream?granularity=1m"))
        .header("accept-encoding", "gzip, deflate")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.headers()["vary"], "accept-encoding");
    // Each chunk decodes on arrival: the board is readable before the stream ends.
    let mut decoded = GzDecoder::new(Vec::new());
    while !String::from_utf8_lossy(decoded.get_ref()).contains("id=\"row-SHIB-USD\"") {
        let chunk = tokio::time::timeout(SOON, response.chunk())
            .await
            .expect("in time")
            .expect("reads")
            .expect("more");
        decoded.write_all(&chunk).expect("gzip");
        decoded.flush().expect("gzip");
    }
    let text = String::from_utf8_lossy(decoded.get_ref()).into_owned();
    assert!(text.contains(r#""_link":"live""#));
    assert!(text.contains("<spot-candle id=\"BTC-USD-ONE_MINUTE\""));
    drop(response);

    let plain = s.get("/board/stream?granularity=1m").await;
    assert!(plain.headers().get("content-encoding").is_none());
    let candles = client
        .get(s.url("/stream?products=BTC-USD"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("answers");
    assert_eq!(candles.status(), 200);
    assert!(candles.headers().get("content-encoding").is_none());
}
