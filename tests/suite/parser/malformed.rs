//! Malformed input: each error costs only the frame, candle, trade or field it is in, and nothing
//! panics.

use super::*;

#[test]
fn malformed_frames_return_errors_without_panicking() {
    let good = GOOD_TRADE_FRAME;
    assert!(parse_frame(good.as_bytes(), received()).is_ok());
    let cases: &[(&str, String)] = &[
        ("empty", String::new()),
        ("truncated", good[..good.len() / 2].to_owned()),
        ("not json", "hello".to_owned()),
        ("array", "[]".to_owned()),
        ("no channel", r#"{"events":[]}"#.to_owned()),
        (
            "no events",
            r#"{"channel":"market_trades","sequence_num":1}"#.to_owned(),
        ),
        ("no sequence", good.replace(r#""sequence_num":247,"#, "")),
        ("sequence as string", good.replace("247", "\"247\"")),
        ("negative sequence", good.replace("247", "-1")),
        ("oversized sequence", good.replace("247", "1e30")),
        (
            "huge sequence",
            good.replace("247", "184467440737095516160"),
        ),
        (
            "trades not an array",
            good.replace(r#""trades":["#, r#""trades":{"x":["#)
                .replace("}]}]}", "}]}}]}"),
        ),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        ),
    ];
    for (name, input) in cases {
        let result = parse_frame(input.as_bytes(), received());
        assert!(result.is_err(), "{name}: {result:?}");
    }
    // Invalid UTF-8 inside a string.
    let mut bytes = good.as_bytes().to_vec();
    let at = good.find("ETH-USD").expect("product");
    bytes[at] = 0xff;
    assert!(parse_frame(&bytes, received()).is_err());
}

#[test]
fn an_unreadable_envelope_timestamp_costs_only_the_timestamp() {
    // Trades carry their own times: the envelope's is informational and is left out.
    let frame = GOOD_TRADE_FRAME.replace("2026-09-30T02:39:59.551901038Z", "now");
    let parsed = parse_frame(frame.as_bytes(), received()).expect("the trades still count");
    assert_eq!(parsed.timestamp, None);
    assert_eq!(parsed.sequence_num, Some(247));
    let FrameBody::MarketTrades {
        trades, rejected, ..
    } = parsed.body
    else {
        panic!("not trades");
    };
    assert!(rejected.is_empty());
    assert_eq!(trades.len(), 1);
    assert_eq!(trades[0].trade_id, TradeId(846_155_167));

    let hb = HEARTBEAT_FRAME.replace("2026-09-30T02:39:59.551901038Z", "yesterday");
    let parsed = parse_frame(hb.as_bytes(), received()).expect("heartbeat");
    assert_eq!(parsed.timestamp, None);
    assert!(matches!(
        parsed.body,
        FrameBody::Heartbeat { counter: 12, .. }
    ));
}

const HEARTBEAT_FRAME: &str = r#"{"channel":"heartbeats","timestamp":"2026-09-30T02:39:59.551901038Z","sequence_num":31,"events":[{"current_time":"2026-09-30 02:39:59.5 +0000 UTC m=+12.0","heartbeat_counter":12}]}"#;

const GOOD_CANDLE: &str = r#"{"start":"1775521800","high":"68950.00","low":"68850.00","open":"68900.00","close":"68920.50","volume":"42.15000000","product_id":"BTC-USD"}"#;

/// A candles frame of three candles: two good ones (BTC-USD, SOL-USD) around `middle`.
fn candles_around(middle: &str) -> String {
    let after = GOOD_CANDLE.replace("BTC-USD", "SOL-USD");
    format!(
        r#"{{"channel":"candles","timestamp":"2026-09-30T02:39:59.551901038Z","sequence_num":88,"events":[{{"type":"update","candles":[{GOOD_CANDLE},{middle},{after}]}}]}}"#
    )
}

#[test]
fn a_malformed_candle_costs_that_candle_alone() {
    let eth = GOOD_CANDLE.replace("BTC-USD", "ETH-USD");
    let cases: &[(&str, String, &str)] = &[
        ("empty volume", eth.replace("42.15000000", ""), "ETH-USD"),
        ("exponent", eth.replace("68900.00", "1e5"), "ETH-USD"),
        (
            "number instead of a string",
            eth.replace(r#""68950.00""#, "68950.00"),
            "ETH-USD",
        ),
        (
            "missing product_id",
            GOOD_CANDLE.replace(r#","product_id":"BTC-USD""#, ""),
            "",
        ),
        ("not an object", "17".to_owned(), ""),
        ("bad start", eth.replace("1775521800", "soon"), "ETH-USD"),
    ];
    for (name, middle, product) in cases {
        let frame = candles_around(middle);
        let parsed = parse_frame(frame.as_bytes(), received())
            .unwrap_or_else(|e| panic!("{name}: the frame survives: {e}"));
        assert_eq!(parsed.sequence_num, Some(88), "{name}");
        let FrameBody::Candles { candles, rejected } = parsed.body else {
            panic!("{name}: not candles");
        };
        let ids: Vec<&str> = candles.iter().map(|c| c.product_id.as_str()).collect();
        assert_eq!(ids, ["BTC-USD", "SOL-USD"], "{name}");
        assert_eq!(rejected.len(), 1, "{name}");
        assert_eq!(
            rejected[0].product_id.as_deref().unwrap_or(""),
            *product,
            "{name}"
        );
        assert!(!rejected[0].reason.is_empty(), "{name}");
    }
}

#[test]
fn a_refused_frame_still_gives_its_sequence_number() {
    // A bad heartbeat counter fails the frame, but the number it took can still be read, so
    // the connection does not take the next frame for a gap.
    for (name, frame) in [
        (
            "non-numeric counter",
            HEARTBEAT_FRAME.replace(r#""heartbeat_counter":12"#, r#""heartbeat_counter":"x""#),
        ),
        (
            "fractional counter",
            HEARTBEAT_FRAME.replace(r#""heartbeat_counter":12"#, r#""heartbeat_counter":1.5"#),
        ),
        (
            "timestamp not text",
            HEARTBEAT_FRAME.replace(r#""2026-09-30T02:39:59.551901038Z""#, "17"),
        ),
        (
            "candles not an array",
            candles_around(GOOD_CANDLE).replace(r#""candles":["#, r#""candles":7,"x":["#),
        ),
    ] {
        assert!(
            parse_frame(frame.as_bytes(), received()).is_err(),
            "{name}: refused"
        );
        let seq = if frame.contains("heartbeats") { 31 } else { 88 };
        assert_eq!(frame_sequence(frame.as_bytes()), Some(seq), "{name}");
    }
    // A frame whose number cannot be read at all gives none.
    let truncated = &HEARTBEAT_FRAME[..HEARTBEAT_FRAME.len() / 2];
    assert_eq!(frame_sequence(truncated.as_bytes()), None);
    let text_seq = HEARTBEAT_FRAME.replace(r#""sequence_num":31"#, r#""sequence_num":"31""#);
    assert_eq!(frame_sequence(text_seq.as_bytes()), None);
    assert_eq!(frame_sequence(br#"{"type":"error","message":"x"}"#), None);
}

/// One good trade, as production sends it.
const GOOD_TRADE_FRAME: &str = r#"{"channel":"market_trades","timestamp":"2026-09-30T02:39:59.551901038Z","sequence_num":247,"events":[{"type":"update","trades":[{"product_id":"ETH-USD","trade_id":"846155167","price":"2667.2","size":"0.84275842","time":"2026-09-30T02:39:59.4104Z","side":"SELL"}]}]}"#;

const GOOD_TRADE: &str = r#"{"product_id":"ETH-USD","trade_id":"846155167","price":"2667.2","size":"0.84275842","time":"2026-09-30T02:39:59.4104Z","side":"SELL"}"#;

/// A frame of three trades: two good ones around `middle`.
fn frame_around(middle: &str) -> String {
    let before = GOOD_TRADE.replace("846155167", "846155166");
    let after = GOOD_TRADE.replace("846155167", "846155168");
    format!(
        r#"{{"channel":"market_trades","timestamp":"2026-09-30T02:39:59.551901038Z","sequence_num":247,"events":[{{"type":"update","trades":[{before},{middle},{after}]}}]}}"#
    )
}

#[test]
fn a_malformed_trade_costs_that_trade_alone() {
    let cases: &[(&str, String, &str)] = &[
        (
            "price as number",
            GOOD_TRADE.replace(r#""2667.2""#, "2667.2"),
            "price",
        ),
        (
            "oversized price",
            GOOD_TRADE.replace("2667.2", "1e400"),
            "price",
        ),
        (
            "exponent price",
            GOOD_TRADE.replace("2667.2", "1e5"),
            "price",
        ),
        (
            "price beyond decimal range",
            GOOD_TRADE.replace("2667.2", "99999999999999999999999999999999999"),
            "price",
        ),
        (
            "price needing rounding",
            GOOD_TRADE.replace("2667.2", "0.00000000000000000000000000000001"),
            "price",
        ),
        (
            "negative size",
            GOOD_TRADE.replace("0.84275842", "-0.84275842"),
            "size",
        ),
        (
            "zero price",
            GOOD_TRADE.replace("\"2667.2\"", "\"0\""),
            "price",
        ),
        (
            "empty price",
            GOOD_TRADE.replace("\"2667.2\"", "\"\""),
            "price",
        ),
        ("bad side", GOOD_TRADE.replace("SELL", "ASK"), "side"),
        (
            "bad trade id",
            GOOD_TRADE.replace("846155167", "84615516x"),
            "trade_id",
        ),
        (
            "bad time",
            GOOD_TRADE.replace("2026-09-30T02:39:59.4104Z", "yesterday"),
            "time",
        ),
        (
            "missing size",
            GOOD_TRADE.replace(r#""size":"0.84275842","#, ""),
            "size",
        ),
        ("null side", GOOD_TRADE.replace(r#""SELL""#, "null"), "side"),
        (
            "object id",
            GOOD_TRADE.replace(r#""846155167""#, r#"{"id":1}"#),
            "trade_id",
        ),
        ("not an object", "42".to_owned(), "trade"),
        ("an array", "[1,[2]]".to_owned(), "trade"),
    ];
    for (name, middle, field) in cases {
        let frame = frame_around(middle);
        let parsed = parse_frame(frame.as_bytes(), received())
            .unwrap_or_else(|e| panic!("{name}: the frame is kept: {e}"));
        assert_eq!(parsed.sequence_num, Some(247), "{name}");
        let FrameBody::MarketTrades {
            trades, rejected, ..
        } = parsed.body
        else {
            panic!("{name}: not trades");
        };
        let ids: Vec<u64> = trades.iter().map(|t| t.trade_id.0).collect();
        assert_eq!(
            ids,
            vec![846_155_166, 846_155_168],
            "{name}: the neighbours count"
        );
        assert_eq!(rejected.len(), 1, "{name}");
        assert!(
            rejected[0].reason.contains(field),
            "{name}: {:?} names {field}",
            rejected[0]
        );
    }
}

#[test]
fn decimal_errors_name_the_field_and_value() {
    let frame = r#"{"channel":"market_trades","timestamp":"2026-09-30T02:39:59Z","sequence_num":1,"events":[{"type":"update","trades":[{"product_id":"X-USD","trade_id":"1","price":"1.2.3","size":"1","time":"2026-09-30T02:39:59Z","side":"BUY"}]}]}"#;
    let parsed = parse_frame(frame.as_bytes(), received()).expect("the frame parses");
    let FrameBody::MarketTrades { rejected, .. } = parsed.body else {
        panic!("trades");
    };
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].product_id.as_deref(), Some("X-USD"));
    // Quoted and escaped as it is logged.
    assert_eq!(rejected[0].trade_id, "\"1\"");
    assert_eq!(
        rejected[0].reason,
        FrameError::BadDecimal {
            field: "price",
            value: "1.2.3".into()
        }
        .to_string()
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_frame(&bytes, received());
        let _ = parse_products(&bytes);
        let _ = parse_candles(&bytes, &spot_canvas::model::ProductId::from_static("BTC-USD"), Granularity::OneMinute);
    }

    #[test]
    fn truncated_or_mutated_production_frames_never_panic(
        index in 0usize..37,
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let frames = frames(MARKET_DATA);
        let frame = frames[index % frames.len()].as_bytes();
        let _ = parse_frame(&frame[..cut.index(frame.len() + 1)], received());
        let mut mutated = frame.to_vec();
        let at = flip.index(mutated.len());
        mutated[at] = byte;
        let _ = parse_frame(&mutated, received());
    }
}

#[test]
fn an_event_of_more_than_ten_thousand_elements_is_a_malformed_frame() {
    let frame = |n: usize| {
        format!(
            r#"{{"channel":"market_trades","timestamp":"2026-09-30T02:39:59Z","sequence_num":1,"events":[{{"type":"update","trades":[{}]}}]}}"#,
            vec!["{}"; n].join(",")
        )
    };
    let parsed = parse_frame(frame(10_000).as_bytes(), received()).expect("at the bound");
    let FrameBody::MarketTrades { rejected, .. } = parsed.body else {
        panic!("trades");
    };
    assert_eq!(rejected.len(), 10_000);
    let error = parse_frame(frame(10_001).as_bytes(), received()).expect_err("past the bound");
    assert!(
        error.to_string().contains("more than 10000 elements"),
        "{error}"
    );
}
