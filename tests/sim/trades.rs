//! Trade faults: malformed, absurd and future trades among good ones, and refused products.

use super::*;

#[tokio::test]
async fn bad_trade_faults_put_malformed_trades_among_good_ones_and_out_of_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = start(SimConfig {
        trade_log: Some(log.clone()),
        ..quick(1)
    })
    .await;
    let mut ws = subscribed(&sim).await;
    // Armed after the snapshot, so the faults land in an update frame.
    let _ = next_json(&mut ws).await;
    for defect in TradeDefect::ALL {
        sim.arm(fault(0, FaultKind::BadTrade { defect }));
    }
    let frame = next_update(&mut ws).await;
    let trades = frame["events"][0]["trades"].as_array().expect("trades");
    let injected = injected(&sim).await;
    assert_eq!(injected.len(), 6, "{injected:?}");
    let bad_ids: BTreeSet<&str> = injected
        .iter()
        .map(|t| t["trade_id"].as_str().expect("id"))
        .collect();
    let (bad, good): (Vec<&Value>, Vec<&Value>) = trades
        .iter()
        .partition(|t| bad_ids.contains(t["trade_id"].as_str().expect("id")));
    assert_eq!(bad.len(), 6);
    assert!(!good.is_empty(), "good trades beside the bad ones");
    let position = |t: &Value| trades.iter().position(|x| x == t).expect("in frame");
    assert!(
        bad.iter().all(|t| position(t) > 0) || good.len() == 1,
        "bad trades sit between good ones"
    );
    let faults: BTreeSet<&str> = injected
        .iter()
        .map(|t| t["fault"].as_str().expect("fault"))
        .collect();
    assert_eq!(faults.len(), 6, "{faults:?}");
    for t in &bad {
        let fault = injected
            .iter()
            .find(|i| i["trade_id"] == t["trade_id"])
            .expect("recorded")["fault"]
            .as_str()
            .expect("fault");
        match fault {
            "bad_trade:zero_price" => assert_eq!(t["price"], "0"),
            "bad_trade:negative_size" => {
                assert!(t["size"].as_str().expect("size").starts_with('-'));
            }
            "bad_trade:exponent" => assert_eq!(t["price"], "1e5"),
            "bad_trade:unknown_side" => assert_eq!(t["side"], "HOLD"),
            "bad_trade:non_numeric_id" => {
                assert!(t["trade_id"].as_str().expect("id").starts_with('x'));
            }
            "bad_trade:empty_price" => assert_eq!(t["price"], ""),
            other => panic!("unexpected fault {other}"),
        }
    }
    // The trade log holds the good trades of the frame and none of the bad.
    let ids = wait_for_log(&log, good.len()).await;
    for t in &good {
        assert!(ids.contains(t["trade_id"].as_str().expect("id")));
    }
    for id in &bad_ids {
        assert!(!ids.contains(*id), "injected trade {id} in the log");
    }
    sim.stop().await;
}

#[tokio::test]
async fn absurd_and_future_trades_come_beside_normal_trades() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("trades.jsonl");
    let sim = start(SimConfig {
        trade_log: Some(log.clone()),
        ..quick(1)
    })
    .await;
    let mut ws = subscribed(&sim).await;
    let _ = next_json(&mut ws).await;
    sim.arm(fault(0, FaultKind::AbsurdSize { size: None }));
    sim.arm(fault(0, FaultKind::FutureTrade { time: None }));
    let frame = next_update(&mut ws).await;
    let trades = frame["events"][0]["trades"].as_array().expect("trades");
    let absurd: Vec<_> = trades
        .iter()
        .filter(|t| t["size"] == "79228162514264337593543950335")
        .collect();
    let future: Vec<_> = trades
        .iter()
        .filter(|t| t["time"] == "2100-01-01T00:00:00Z")
        .collect();
    assert_eq!((absurd.len(), future.len()), (1, 1), "{trades:?}");
    assert!(trades.len() >= 3, "normal trades beside them");
    // Both are well-formed: the service's parser takes the frame whole.
    let parsed = parse_frame(frame.to_string().as_bytes(), Utc::now()).expect("parses");
    let FrameBody::MarketTrades { trades: parsed, .. } = parsed.body else {
        panic!("trades frame");
    };
    assert_eq!(parsed.len(), trades.len());
    let injected = injected(&sim).await;
    assert_eq!(injected.len(), 2);
    let ids = wait_for_log(&log, trades.len() - 2).await;
    for t in injected {
        assert!(!ids.contains(t["trade_id"].as_str().expect("id")));
    }
    sim.stop().await;
}

#[tokio::test]
async fn a_refused_product_fails_its_subscribes_and_the_others_subscribe() {
    let sim = start(quick(2)).await;
    sim.arm(fault(
        0,
        FaultKind::RefuseSubscribe {
            product_id: "ETH-USD".into(),
        },
    ));
    let mut ws = connect(&sim).await;
    subscribe(&mut ws, "market_trades", &["BTC-USD", "ETH-USD"]).await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert!(
        err["message"]
            .as_str()
            .expect("message")
            .contains("ETH-USD"),
        "{err}"
    );
    assert!(err.get("sequence_num").is_none());
    subscribe(&mut ws, "market_trades", &["BTC-USD"]).await;
    let ack = loop {
        let frame = next_json(&mut ws).await;
        if frame["channel"] == "subscriptions" {
            break frame;
        }
    };
    assert_eq!(
        ack["events"][0]["subscriptions"],
        json!({"market_trades": ["BTC-USD"]})
    );
    assert_eq!(sim.state.stats.refused_subscribes.get(), 1);
    sim.stop().await;
}
