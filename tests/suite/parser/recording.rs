//! The production recording: every frame, its trades, snapshots, heartbeats and subscription acks.

use super::*;

const STREAM: &str = include_str!("../../fixtures/coinbase/production-stream-2026-09-30.jsonl");

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
