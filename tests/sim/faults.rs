//! The connection faults: closes, drops, stalls, sequence gaps and rewinds, malformed, oversized
//! and duplicate frames, late trades.

use super::*;

fn frame_time(frame: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(frame["timestamp"].as_str().expect("timestamp"))
        .expect("time")
        .with_timezone(&Utc)
}

#[tokio::test]
async fn close_faults_close_with_the_given_code_after_n_frames() {
    for code in [1000u16, 1001] {
        let sim = start(quick(1)).await;
        sim.arm(fault(5, FaultKind::Close { code }));
        let mut ws = subscribed(&sim).await;
        let (frames, got, closed) = until_close(&mut ws, Duration::from_secs(10)).await;
        assert!(closed);
        assert_eq!(got, Some(code));
        assert_eq!(frames.len(), 5, "closed after exactly 5 frames");
        sim.stop().await;
    }
}

#[tokio::test]
async fn drop_fault_ends_the_connection_without_a_close_frame() {
    let sim = start(quick(1)).await;
    sim.arm(fault(3, FaultKind::Drop));
    let mut ws = subscribed(&sim).await;
    let (frames, code, closed) = until_close(&mut ws, Duration::from_secs(10)).await;
    assert!(!closed, "no close frame (the client sees 1006)");
    assert_eq!(code, None);
    assert_eq!(frames.len(), 3);
    sim.stop().await;
}

#[tokio::test]
async fn stall_fault_stops_sending_while_the_socket_stays_open() {
    let sim = start(quick(1)).await;
    sim.arm(fault(3, FaultKind::Stall { secs: Some(3) }));
    let mut ws = subscribed(&sim).await;
    let mut seqs = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..3 {
        let frame = next_json(&mut ws).await;
        seqs.push(frame["sequence_num"].as_u64().expect("seq"));
        sent.push(frame_time(&frame));
    }
    // Heartbeats would come every second: nothing comes while stalled, then it resumes, and
    // the sequence numbers show the frames lost meanwhile.
    let resumed = next_json_within(&mut ws, Duration::from_secs(10)).await;
    let after = resumed["sequence_num"].as_u64().expect("seq");
    // Measured by the simulator's own send times: the stall began after the third frame was
    // built, so the next one was built at least the stall's length later.
    let silent = frame_time(&resumed) - sent[2];
    assert!(
        silent >= chrono::TimeDelta::seconds(3),
        "stalled only {silent}"
    );
    assert!(
        after > seqs[2] + 1,
        "a gap after the stall: {seqs:?} then {after}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn skip_sequence_fault_leaves_a_gap() {
    let sim = start(quick(1)).await;
    sim.arm(fault(4, FaultKind::SkipSequence { count: 7 }));
    let mut ws = subscribed(&sim).await;
    let mut seqs = Vec::new();
    for _ in 0..6 {
        seqs.push(
            next_json(&mut ws).await["sequence_num"]
                .as_u64()
                .expect("seq"),
        );
    }
    assert_eq!(&seqs[..4], &[0, 1, 2, 3]);
    assert_eq!(seqs[4], 11, "7 numbers skipped: {seqs:?}");
    assert_eq!(seqs[5], 12);
    sim.stop().await;
}

#[tokio::test]
async fn malformed_fault_sends_one_frame_the_parser_rejects() {
    let sim = start(quick(1)).await;
    sim.arm(fault(2, FaultKind::Malformed));
    let mut ws = subscribed(&sim).await;
    let mut bad = 0;
    for _ in 0..6 {
        match next(&mut ws, Duration::from_secs(5)).await {
            Some(Ok(Message::Text(t))) => {
                if parse_frame(t.as_bytes(), Utc::now()).is_err() {
                    bad += 1;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(bad, 1);
    sim.stop().await;
}

#[tokio::test]
async fn bad_heartbeat_fault_sends_one_refused_frame_that_takes_a_sequence_number() {
    let sim = start(quick(1)).await;
    sim.arm(fault(3, FaultKind::BadHeartbeat));
    let mut ws = subscribed(&sim).await;
    let mut seqs = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..6 {
        match next(&mut ws, Duration::from_secs(5)).await {
            Some(Ok(Message::Text(t))) => {
                let value: Value = serde_json::from_str(&t).expect("well-formed JSON");
                let seq = value["sequence_num"].as_u64().expect("sequenced");
                seqs.push(seq);
                if parse_frame(t.as_bytes(), Utc::now()).is_err() {
                    refused.push(seq);
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seqs, (0..6).collect::<Vec<u64>>(), "no number skipped");
    assert_eq!(refused.len(), 1, "{refused:?}");
    sim.stop().await;
}

#[tokio::test]
async fn oversized_fault_sends_one_frame_of_the_given_size() {
    let sim = start(quick(1)).await;
    sim.arm(fault(2, FaultKind::Oversized { bytes: 2 << 20 }));
    let mut ws = subscribed(&sim).await;
    let mut sizes = Vec::new();
    for _ in 0..4 {
        if let Some(Ok(Message::Text(t))) = next(&mut ws, Duration::from_secs(5)).await {
            sizes.push(t.len());
        }
    }
    assert_eq!(
        sizes.iter().filter(|&&s| s >= 2 << 20).count(),
        1,
        "{sizes:?}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn duplicate_fault_repeats_a_trades_update_with_the_same_ids() {
    let sim = start(quick(1)).await;
    sim.arm(fault(0, FaultKind::Duplicate));
    let mut ws = subscribed(&sim).await;
    let mut updates: Vec<Value> = Vec::new();
    while updates.len() < 2 {
        let frame = next_json(&mut ws).await;
        if frame_kind(&frame) == "market_trades/update" {
            updates.push(frame);
        }
    }
    assert_eq!(
        updates[0]["events"][0]["trades"], updates[1]["events"][0]["trades"],
        "the same trades twice"
    );
    assert_eq!(
        updates[1]["sequence_num"].as_u64(),
        updates[0]["sequence_num"].as_u64().map(|s| s + 1),
        "as a new frame"
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_fault_can_target_one_connection() {
    let sim = start(quick(1)).await;
    let mut first = subscribed(&sim).await;
    let mut second = subscribed(&sim).await;
    let _ = next_json(&mut first).await;
    let _ = next_json(&mut second).await;
    sim.arm(FaultRequest {
        scope: Scope::Connection(2),
        after_frames: 0,
        kind: FaultKind::Close { code: 1001 },
    });
    let (_, code, _) = until_close(&mut second, Duration::from_secs(5)).await;
    assert_eq!(code, Some(1001));
    // The first connection keeps receiving.
    for _ in 0..3 {
        let _ = next_json(&mut first).await;
    }
    sim.stop().await;
}

#[tokio::test]
async fn late_trades_carry_a_time_in_an_earlier_complete_minute() {
    let sim = start(quick(1)).await;
    let mut ws = subscribed(&sim).await;
    let client = reqwest::Client::new();
    let status = client
        .post(format!("http://{}/sim/late-trades", sim.addr))
        .json(&json!({"product_id": "BTC-USD", "count": 2}))
        .send()
        .await
        .expect("admin")
        .status();
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut late = 0;
    while Instant::now() < deadline && late < 2 {
        let frame = next_json(&mut ws).await;
        if frame_kind(&frame) != "market_trades/update" {
            continue;
        }
        let sent = DateTime::parse_from_rfc3339(frame["timestamp"].as_str().expect("ts"))
            .expect("time")
            .with_timezone(&Utc);
        let current_minute = sent.timestamp().div_euclid(60) * 60;
        for t in frame["events"][0]["trades"].as_array().expect("trades") {
            let time = DateTime::parse_from_rfc3339(t["time"].as_str().expect("t"))
                .expect("time")
                .with_timezone(&Utc);
            if time.timestamp() < current_minute - 60 {
                late += 1;
            }
        }
    }
    assert_eq!(late, 2, "two trades from an earlier, complete minute");
    sim.stop().await;
}

#[tokio::test]
async fn rewind_sequence_fault_sends_a_lower_number() {
    let sim = start(quick(1)).await;
    sim.arm(fault(4, FaultKind::RewindSequence { count: 3 }));
    let mut ws = subscribed(&sim).await;
    let mut seqs = Vec::new();
    for _ in 0..6 {
        seqs.push(
            next_json(&mut ws).await["sequence_num"]
                .as_u64()
                .expect("seq"),
        );
    }
    assert_eq!(seqs, vec![0, 1, 2, 3, 1, 2], "back by 3 after frame 4");
    sim.stop().await;
}
