//! Coinbase's documented examples and the variations the documentation allows.

use super::*;

#[test]
fn documented_examples_parse_with_client_id_present() {
    let trades = include_str!("../../fixtures/coinbase/example-ws-market-trades.json");
    let parsed = parse_frame(trades.as_bytes(), received()).expect("trades");
    assert_eq!(parsed.sequence_num, Some(5));
    let FrameBody::MarketTrades {
        snapshot,
        trades,
        rejected,
    } = parsed.body
    else {
        panic!("not trades");
    };
    assert!(rejected.is_empty());
    assert!(!snapshot);
    assert_eq!(trades.len(), 2);
    assert_eq!(trades[0].price.to_string(), "68900.50");
    assert_eq!(trades[1].size.to_string(), "0.05000000");
    assert_eq!(trades[1].side, Side::Sell);

    let candles = include_str!("../../fixtures/coinbase/example-ws-candles.json");
    let FrameBody::Candles { candles, rejected } = parse_frame(candles.as_bytes(), received())
        .expect("candles")
        .body
    else {
        panic!("not candles");
    };
    assert!(rejected.is_empty());
    assert_eq!(candles.len(), 1);
    let c = &candles[0];
    assert_eq!(c.granularity, Granularity::FiveMinutes);
    assert_eq!(c.start.timestamp(), 1_775_521_800);
    assert_eq!(
        [c.open, c.high, c.low, c.close, c.volume].map(|d| d.to_string()),
        [
            "68900.00",
            "68950.00",
            "68850.00",
            "68920.50",
            "42.15000000"
        ]
    );

    let hb = include_str!("../../fixtures/coinbase/example-ws-heartbeats.json");
    let FrameBody::Heartbeat { counter, .. } =
        parse_frame(hb.as_bytes(), received()).expect("hb").body
    else {
        panic!("not a heartbeat");
    };
    assert_eq!(counter, 42);

    let subs = include_str!("../../fixtures/coinbase/example-ws-subscriptions.json");
    let FrameBody::Subscriptions { subscriptions } =
        parse_frame(subs.as_bytes(), received()).expect("subs").body
    else {
        panic!("not subscriptions");
    };
    assert_eq!(subscriptions["level2"], vec!["BTC-USD"]);
}

#[test]
fn heartbeat_counter_may_be_a_string_as_in_the_docs() {
    let frame = r#"{"channel":"heartbeats","client_id":"","timestamp":"2023-06-23T20:31:26.122969572Z","sequence_num":0,"events":[{"current_time":"2023-06-23 20:31:56.121961769 +0000 UTC m=+91717.525857105","heartbeat_counter":"3049"}]}"#;
    let FrameBody::Heartbeat { counter, .. } = parse_frame(frame.as_bytes(), received())
        .expect("parses")
        .body
    else {
        panic!("not a heartbeat");
    };
    assert_eq!(counter, 3049);
}

#[test]
fn events_before_channel_parse_the_same() {
    let channel_first = r#"{"channel":"market_trades","timestamp":"2026-09-30T02:39:59Z","sequence_num":1,"events":[{"type":"update","trades":[{"product_id":"BTC-USD","trade_id":"7","price":"1.5","size":"2","time":"2026-09-30T02:39:59Z","side":"BUY"}]}]}"#;
    let events_first = r#"{"events":[{"type":"update","trades":[{"product_id":"BTC-USD","trade_id":"7","price":"1.5","size":"2","time":"2026-09-30T02:39:59Z","side":"BUY"}]}],"sequence_num":1,"timestamp":"2026-09-30T02:39:59Z","channel":"market_trades"}"#;
    assert_eq!(
        parse_frame(channel_first.as_bytes(), received()).expect("parses"),
        parse_frame(events_first.as_bytes(), received()).expect("parses")
    );
}

#[test]
fn error_frames_have_no_envelope() {
    let parsed = parse_frame(
        br#"{"type":"error","message":"authentication failure"}"#,
        received(),
    )
    .expect("parses");
    assert_eq!(
        parsed.body,
        FrameBody::Error {
            message: "authentication failure".into()
        }
    );
    assert_eq!(parsed.sequence_num, None);
}

#[test]
fn unknown_channels_and_event_types_are_skipped_not_errors() {
    let unknown_channel = br#"{"channel":"ticker_batch","timestamp":"2026-09-30T02:39:53Z","sequence_num":4,"events":[{"type":"snapshot","tickers":[]}]}"#;
    assert!(matches!(
        parse_frame(unknown_channel, received())
            .expect("parses")
            .body,
        FrameBody::Skipped { .. }
    ));
    let unknown_event = br#"{"channel":"market_trades","timestamp":"2026-09-30T02:39:53Z","sequence_num":4,"events":[{"type":"brand_new","whatever":1},{"type":"update","trades":[{"product_id":"BTC-USD","trade_id":"7","price":"1.5","size":"2","time":"2026-09-30T02:39:53Z","side":"BUY"}]}]}"#;
    let FrameBody::MarketTrades { trades, .. } =
        parse_frame(unknown_event, received()).expect("parses").body
    else {
        panic!("not trades");
    };
    assert_eq!(trades.len(), 1);
}

#[test]
fn meme_coin_prices_and_huge_volumes_stay_exact() {
    let frame = r#"{"channel":"market_trades","timestamp":"2026-09-30T02:39:59Z","sequence_num":1,"events":[{"type":"update","trades":[{"product_id":"PEPE-USD","trade_id":"1","price":"0.0000123456789012","size":"12345678901234.123456789","time":"2026-09-30T02:39:59Z","side":"BUY"}]}]}"#;
    let FrameBody::MarketTrades { trades, .. } = parse_frame(frame.as_bytes(), received())
        .expect("parses")
        .body
    else {
        panic!("not trades");
    };
    assert_eq!(trades[0].price.to_string(), "0.0000123456789012");
    assert_eq!(trades[0].size.to_string(), "12345678901234.123456789");
}
