//! The frame and REST parsers against the production recording, the documented examples and
//! malformed input.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::Value;
use spot_canvas::coinbase::rest::{parse_candles, parse_error, parse_product, parse_products};
use spot_canvas::coinbase::{FrameBody, FrameError, frame_sequence, parse_frame};
use spot_canvas::model::{Granularity, Side, Trade, TradeId};

const STREAM: &str = include_str!("../fixtures/coinbase/production-stream-2026-09-30.jsonl");
const MARKET_DATA: &str =
    include_str!("../fixtures/coinbase/production-market-data-2026-09-30.jsonl");

fn received() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-09-30T02:40:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

/// Frames of a recording: each line is `<receive ns>\t<frame JSON>`.
fn frames(recording: &str) -> Vec<&str> {
    recording
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_once('\t').map_or(l, |(_, frame)| frame))
        .collect()
}

fn trades_of(recording: &str) -> Vec<Trade> {
    let mut trades = Vec::new();
    for frame in frames(recording) {
        let parsed = parse_frame(frame.as_bytes(), received()).expect(frame);
        if let FrameBody::MarketTrades { trades: t, .. } = parsed.body {
            trades.extend(t);
        }
    }
    trades
}

#[test]
fn every_frame_of_the_production_stream_parses_and_l2_data_is_skipped() {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sequence = Vec::new();
    for frame in frames(STREAM) {
        let parsed = parse_frame(frame.as_bytes(), received()).expect(frame);
        sequence.push(
            parsed
                .sequence_num
                .expect("every production frame has a sequence"),
        );
        let kind = match &parsed.body {
            FrameBody::MarketTrades { .. } => "market_trades",
            FrameBody::Heartbeat { .. } => "heartbeats",
            FrameBody::Subscriptions { .. } => "subscriptions",
            FrameBody::Skipped { channel } => {
                assert_eq!(channel, "l2_data");
                "skipped"
            }
            other => panic!("unexpected frame {other:?}"),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    assert_eq!(kinds["skipped"], 213);
    assert_eq!(kinds["market_trades"], 28);
    assert_eq!(kinds["heartbeats"], 6);
    assert_eq!(kinds["subscriptions"], 3);
    assert_eq!(
        sequence,
        (0..250).collect::<Vec<u64>>(),
        "sequence_num runs 0-249"
    );
}

#[test]
fn all_307_trades_of_the_recording_come_out_with_exact_values() {
    let trades = trades_of(MARKET_DATA);
    assert_eq!(trades.len(), 307);
    assert_eq!(
        trades_of(STREAM),
        trades,
        "the full stream holds the same trades"
    );

    // Compare each trade with an independent reading of the JSON: decimals keep every digit
    // and their scale, times are exact to the microsecond.
    let mut expected = Vec::new();
    for frame in frames(MARKET_DATA) {
        let v: Value = serde_json::from_str(frame).expect("json");
        if v["channel"] != "market_trades" {
            continue;
        }
        for event in v["events"].as_array().expect("events") {
            for t in event["trades"].as_array().expect("trades") {
                expected.push(t.clone());
            }
        }
    }
    assert_eq!(expected.len(), 307);
    for (trade, raw) in trades.iter().zip(&expected) {
        assert_eq!(trade.product_id, raw["product_id"].as_str().expect("id"));
        assert_eq!(
            trade.trade_id.to_string(),
            raw["trade_id"].as_str().expect("tid")
        );
        assert_eq!(
            trade.price.to_string(),
            raw["price"].as_str().expect("price")
        );
        assert_eq!(trade.size.to_string(), raw["size"].as_str().expect("size"));
        assert_eq!(trade.side.as_str(), raw["side"].as_str().expect("side"));
        let time = raw["time"].as_str().expect("time");
        assert_eq!(
            trade
                .time
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            DateTime::parse_from_rfc3339(time)
                .expect("time")
                .with_timezone(&Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        );
        assert_eq!(trade.received, received());
    }

    // Trade ids are contiguous per product, as recorded.
    let ids = |product: &str| -> BTreeSet<u64> {
        trades
            .iter()
            .filter(|t| t.product_id == product)
            .map(|t| t.trade_id.0)
            .collect()
    };
    assert_eq!(ids("BTC-USD"), (1_100_253_388..=1_100_253_573).collect());
    assert_eq!(ids("ETH-USD"), (846_155_047..=846_155_167).collect());

    let first = &trades[0];
    assert_eq!(first.trade_id, TradeId(1_100_253_487));
    assert_eq!(first.price.to_string(), "83277.25");
    assert_eq!(first.size.to_string(), "0.00000029");
    assert_eq!(first.side, Side::Buy);
    assert_eq!(first.time.to_rfc3339(), "2026-09-30T02:39:53.354654+00:00");
}

#[test]
fn snapshots_hold_the_last_100_trades_newest_first() {
    for frame in frames(MARKET_DATA) {
        let parsed = parse_frame(frame.as_bytes(), received()).expect("parses");
        if let FrameBody::MarketTrades {
            snapshot: true,
            trades,
            rejected,
        } = parsed.body
        {
            assert!(rejected.is_empty());
            assert_eq!(trades.len(), 100);
            assert!(
                trades.windows(2).all(|w| w[0].trade_id > w[1].trade_id),
                "newest first"
            );
        }
    }
}

#[test]
fn production_heartbeats_have_numeric_counters_and_go_time_text() {
    let hb = frames(MARKET_DATA)
        .into_iter()
        .find(|f| f.contains(r#""channel":"heartbeats""#))
        .expect("a heartbeat");
    let parsed = parse_frame(hb.as_bytes(), received()).expect("parses");
    let FrameBody::Heartbeat {
        counter,
        current_time,
    } = parsed.body
    else {
        panic!("not a heartbeat: {parsed:?}");
    };
    assert!(counter > 0);
    assert!(current_time.contains(" +0000 UTC"), "{current_time}");
}

#[test]
fn subscriptions_acks_list_cumulative_subscriptions() {
    let acks: Vec<_> = frames(STREAM)
        .into_iter()
        .filter(|f| f.contains("\"subscriptions\""))
        .map(|f| parse_frame(f.as_bytes(), received()).expect("parses").body)
        .collect();
    let FrameBody::Subscriptions { subscriptions } = acks.last().expect("acks") else {
        panic!("not an ack");
    };
    assert_eq!(subscriptions["heartbeats"], vec!["heartbeats"]);
    assert_eq!(subscriptions["market_trades"], vec!["BTC-USD", "ETH-USD"]);
}

#[test]
fn documented_examples_parse_with_client_id_present() {
    let trades = include_str!("../fixtures/coinbase/example-ws-market-trades.json");
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

    let candles = include_str!("../fixtures/coinbase/example-ws-candles.json");
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

    let hb = include_str!("../fixtures/coinbase/example-ws-heartbeats.json");
    let FrameBody::Heartbeat { counter, .. } =
        parse_frame(hb.as_bytes(), received()).expect("hb").body
    else {
        panic!("not a heartbeat");
    };
    assert_eq!(counter, 42);

    let subs = include_str!("../fixtures/coinbase/example-ws-subscriptions.json");
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

#[test]
fn rest_examples_parse() {
    let list = parse_products(include_bytes!(
        "../fixtures/coinbase/example-http-products.json"
    ))
    .expect("ok");
    assert!(
        list.skipped.is_empty() && list.degraded.is_empty(),
        "{list:?}"
    );
    let products = list.products;
    assert!(!products.is_empty());
    let btc = products
        .iter()
        .find(|p| p.product_id == "BTC-USD")
        .expect("BTC-USD");
    assert_eq!((btc.base.as_str(), btc.quote.as_str()), ("BTC", "USD"));
    assert!(btc.is_ingestible());
    assert_eq!(
        btc.price_increment.map(|d| d.to_string()).as_deref(),
        Some("0.01")
    );
    if let Some(alias) = products.iter().find(|p| p.product_id == "BTC-USDC") {
        assert!(!alias.is_ingestible(), "aliases are not ingested");
    }

    let product = parse_product(include_bytes!(
        "../fixtures/coinbase/rest-product-btc-usd.json"
    ))
    .expect("ok");
    assert_eq!(product.product_id, "BTC-USD");
    assert_eq!(
        product.base_max_size.map(|d| d.to_string()).as_deref(),
        Some("3400")
    );

    let candles = parse_candles(
        include_bytes!("../fixtures/coinbase/example-http-candles.json"),
        &spot_canvas::model::ProductId::from_static("BTC-USD"),
        Granularity::OneHour,
    )
    .expect("ok");
    assert_eq!(candles.len(), 2);
    assert!(candles[0].start > candles[1].start, "newest first");
    assert_eq!(candles[0].open.to_string(), "66312.4");
    assert_eq!(candles[0].trade_count, None);

    let err = parse_error(br#"{"error":"INVALID_ARGUMENT","message":"number of candles requested should be less than 350"}"#)
        .expect("an error answer");
    assert_eq!(err.error, "INVALID_ARGUMENT");
}

const GOOD_PRODUCT: &str = r#"{"product_id":"BTC-USD","base_currency_id":"BTC","quote_currency_id":"USD","status":"online","product_type":"SPOT","trading_disabled":false,"base_min_size":"0.00000001","base_max_size":"3400","base_increment":"0.00000001","price_increment":"0.01","alias":"","alias_to":["BTC-USDC"]}"#;

fn products_around(middle: &str) -> String {
    let after = GOOD_PRODUCT
        .replace("BTC-USD", "SOL-USD")
        .replace(r#""BTC""#, r#""SOL""#);
    format!(r#"{{"products":[{GOOD_PRODUCT},{middle},{after}],"num_products":3}}"#)
}

#[test]
fn a_malformed_product_costs_that_product_alone() {
    let eth = GOOD_PRODUCT
        .replace("BTC-USD", "ETH-USD")
        .replace(r#""BTC""#, r#""ETH""#);
    // Skipped: a product the service cannot select safely.
    for (name, middle, id) in [
        ("product_id a number", eth.replace(r#""ETH-USD""#, "7"), ""),
        (
            "no product_id",
            eth.replace(r#""product_id":"ETH-USD","#, ""),
            "",
        ),
        ("not an object", "[]".to_owned(), ""),
        (
            "status a number",
            eth.replace(r#""online""#, "1"),
            "ETH-USD",
        ),
        (
            "trading_disabled a string",
            eth.replace(r#""trading_disabled":false"#, r#""trading_disabled":"no""#),
            "ETH-USD",
        ),
        (
            "alias_to of numbers",
            eth.replace(r#"["ETH-USDC"]"#, "[1]"),
            "ETH-USD",
        ),
    ] {
        let list = parse_products(products_around(&middle).as_bytes())
            .unwrap_or_else(|e| panic!("{name}: the list survives: {e}"));
        let ids: Vec<&str> = list
            .products
            .iter()
            .map(|p| p.product_id.as_str())
            .collect();
        assert_eq!(ids, ["BTC-USD", "SOL-USD"], "{name}");
        assert_eq!(list.skipped.len(), 1, "{name}: {list:?}");
        assert_eq!(
            list.skipped[0].product_id.trim_matches('"'),
            id,
            "{name}: quoted as logged"
        );
        assert!(list.degraded.is_empty(), "{name}");
    }
    // Kept: an optional field that cannot be read is left out, and reported.
    for (name, middle, field) in [
        (
            "exponent max size",
            eth.replace(r#""3400""#, r#""1e10""#),
            "base_max_size",
        ),
        (
            "increment as a number",
            eth.replace(r#""price_increment":"0.01""#, r#""price_increment":0.01"#),
            "price_increment",
        ),
    ] {
        let list = parse_products(products_around(&middle).as_bytes()).expect(name);
        let ids: Vec<&str> = list
            .products
            .iter()
            .map(|p| p.product_id.as_str())
            .collect();
        assert_eq!(ids, ["BTC-USD", "ETH-USD", "SOL-USD"], "{name}");
        assert!(list.skipped.is_empty(), "{name}");
        assert_eq!(list.degraded.len(), 1, "{name}");
        assert_eq!(
            list.degraded[0].product_id, "\"ETH-USD\"",
            "{name}: quoted as logged"
        );
        assert!(list.degraded[0].reason.contains(field), "{name}: {list:?}");
        let eth = &list.products[1];
        assert!(eth.is_ingestible(), "{name}");
        match field {
            "base_max_size" => assert_eq!(eth.base_max_size, None),
            _ => assert_eq!(eth.price_increment, None),
        }
        assert_eq!(
            eth.base_min_size.map(|d| d.to_string()).as_deref(),
            Some("0.00000001")
        );
    }
    // `trading_disabled: null` reads as absent: not disabled.
    let list = parse_products(
        products_around(&eth.replace(r#""trading_disabled":false"#, r#""trading_disabled":null"#))
            .as_bytes(),
    )
    .expect("null");
    assert_eq!(list.products.len(), 3);
    assert!(!list.products[1].trading_disabled);
    assert!(list.skipped.is_empty() && list.degraded.is_empty());
    // A body that is not a products list at all is still an error.
    assert!(parse_products(br#"{"products":7}"#).is_err());
}

#[test]
fn rest_candles_not_aligned_to_their_granularity_are_rejected() {
    let body = br#"{"candles":[{"start":"1712192401","low":"1","high":"1","open":"1","close":"1","volume":"1"}]}"#;
    assert!(
        parse_candles(
            body,
            &spot_canvas::model::ProductId::from_static("BTC-USD"),
            Granularity::OneMinute
        )
        .is_err()
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
