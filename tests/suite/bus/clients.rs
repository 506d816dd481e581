//! Subscribers of the live state: current candle then every update, overflow, older buckets,
//! sweeping and forgetting.

use super::*;

fn settings(capacity: usize) -> ClientSettings {
    ClientSettings {
        capacity,
        ..ClientSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_the_current_candle_then_every_newer_update_without_gap_or_duplicate() {
    let live = LiveState::new();
    const N: u64 = 20_000;
    let producer = {
        let live = live.clone();
        tokio::spawn(async move {
            for count in 1..=N {
                // Out of order now and then: older versions must never reach anyone.
                if count % 97 == 0 {
                    live.apply(update("BTC-USD", 0, count - 5));
                }
                live.apply(update("BTC-USD", 0, count));
                if count % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut clients = Vec::new();
    for i in 0..8u64 {
        let live = live.clone();
        clients.push(tokio::spawn(async move {
            // Time is the subject: clients join at staggered moments while updates flow.
            tokio::time::sleep(Duration::from_micros(300 * i)).await;
            let (mut sub, initial) = live.subscribe(
                Filter::of(
                    &[spot_canvas::model::ProductId::from_static("BTC-USD")],
                    &[Granularity::OneMinute],
                ),
                settings(N as usize),
                CancellationToken::new(),
            );
            let mut seen: Vec<u64> = initial
                .iter()
                .map(|e| e.update.version().trade_count)
                .collect();
            // One overall deadline, generous for a loaded CI: the stream must reach N.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while seen.last() != Some(&N) {
                match tokio::time::timeout_at(deadline, sub.next()).await {
                    Ok(Delivery::Updates(entries)) => {
                        seen.extend(entries.iter().map(|e| e.update.version().trade_count));
                    }
                    Ok(other) => panic!("no resync or cut-off expected: {other:?}"),
                    Err(_) => break,
                }
            }
            seen
        }));
    }
    producer.await.expect("producer");
    for client in clients {
        let seen = client.await.expect("client");
        assert_eq!(seen.last(), Some(&N), "reaches the end");
        let first = seen[0];
        let expected: Vec<u64> = (first..=N).collect();
        assert_eq!(
            seen, expected,
            "contiguous from the initial state, no duplicate"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_overflows_is_resynced_then_cut_off_when_it_stays_behind() {
    let live = LiveState::new();
    let slow_cut = CancellationToken::new();
    let (mut slow, _) = live.subscribe(
        Filter::all(),
        ClientSettings {
            capacity: 4,
            stall: Duration::from_millis(200),
            ..ClientSettings::default()
        },
        slow_cut.clone(),
    );
    let (mut fast, _) = live.subscribe(Filter::all(), settings(1_000), CancellationToken::new());
    // Another series' client costs nothing and gets nothing.
    let (mut other, _) = live.subscribe(
        Filter::of(
            &[spot_canvas::model::ProductId::from_static("ETH-USD")],
            &[Granularity::OneMinute],
        ),
        settings(1_000),
        CancellationToken::new(),
    );
    for count in 1..=100 {
        live.apply(update("SOL-USD", 0, count));
    }
    live.apply(update("ETH-USD", 0, 1));
    // The slow one overflowed: its next read is the latest state, not the 96 it missed.
    match slow.next().await {
        Delivery::Resync(entries) => {
            let mut versions: Vec<(String, u64)> = entries
                .iter()
                .map(|e| {
                    (
                        e.update.candle.product_id.to_string(),
                        e.update.version().trade_count,
                    )
                })
                .collect();
            versions.sort();
            assert_eq!(
                versions,
                [("ETH-USD".to_owned(), 1), ("SOL-USD".to_owned(), 100)]
            );
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    assert_eq!(live.report().resyncs, 1);
    assert_eq!(live.report().resync_snapshots, 1);
    assert!(!slow_cut.is_cancelled());
    // It overflows again and stops reading past its stall limit: the next update cuts it off.
    for count in 101..=110 {
        live.apply(update("SOL-USD", 0, count));
    }
    tokio::time::advance(Duration::from_millis(300)).await;
    live.apply(update("SOL-USD", 0, 111));
    assert!(slow_cut.is_cancelled(), "its connection is told to close");
    assert!(matches!(slow.next().await, Delivery::CutOff));
    assert_eq!(live.report().clients_cut_off, 1);
    assert_eq!(live.report().clients, 2);
    // The fast one got every update, in order.
    let mut fast_seen = Vec::new();
    while fast_seen.len() < 112 {
        match tokio::time::timeout(Duration::from_secs(10), fast.next()).await {
            Ok(Delivery::Updates(entries)) => fast_seen.extend(entries.iter().map(|e| {
                (
                    e.update.candle.product_id.clone(),
                    e.update.version().trade_count,
                )
            })),
            other => panic!("fast client: {other:?}"),
        }
    }
    let sol: Vec<u64> = fast_seen
        .iter()
        .filter(|(p, _)| p == "SOL-USD")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(sol, (1..=111).collect::<Vec<u64>>());
    match other.next().await {
        Delivery::Updates(entries) => {
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].update.candle.product_id, "ETH-USD");
        }
        got => panic!("other: {got:?}"),
    }
}

fn one_client(
    live: &LiveState,
    settings: ClientSettings,
) -> (spot_canvas::live::Subscription, CancellationToken) {
    let cut = CancellationToken::new();
    let (sub, _) = live.subscribe(Filter::all(), settings, cut.clone());
    (sub, cut)
}

/// The element id and trade count of every event of one delivery.
async fn delivered(sub: &mut spot_canvas::live::Subscription) -> Vec<(String, u64)> {
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Delivery::Updates(entries)) => entries
            .iter()
            .map(|e| {
                let text = String::from_utf8_lossy(e.event()).into_owned();
                let id = text
                    .split("<spot-candle id=\"")
                    .nth(1)
                    .and_then(|t| t.split('"').next())
                    .expect("an element id")
                    .to_owned();
                (id, e.update.version().trade_count)
            })
            .collect(),
        other => panic!("expected updates, got {other:?}"),
    }
}

#[tokio::test]
async fn an_older_buckets_completion_and_revisions_reach_clients_as_that_buckets_element() {
    let live = LiveState::new();
    let (mut sub, _) = one_client(&live, settings(100));
    live.apply(update("BTC-USD", 0, 5));
    // The next bucket starts before the first one's completion comes.
    live.apply(update("BTC-USD", 1, 1));
    let mut complete = update("BTC-USD", 0, 5);
    complete.complete = true;
    assert!(live.apply(complete.clone()), "the completion is news");
    // The same completion again (a second producer) and an older one are not.
    assert!(!live.apply(complete));
    assert!(!live.apply(update("BTC-USD", 0, 4)));
    let mut revised = update("BTC-USD", 0, 6);
    revised.revision = 1;
    assert!(live.apply(revised), "a late trade's revision is news");
    let ids = delivered(&mut sub).await;
    let bucket0 = format!("BTC-USD-ONE_MINUTE-{START}");
    assert_eq!(
        ids,
        [
            ("BTC-USD-ONE_MINUTE".to_owned(), 5),
            ("BTC-USD-ONE_MINUTE".to_owned(), 1),
            (bucket0.clone(), 5),
            (bucket0, 6),
        ]
    );
    // The series still holds its newest bucket.
    let current = live
        .current(
            &spot_canvas::model::ProductId::from_static("BTC-USD"),
            Granularity::OneMinute,
        )
        .expect("current");
    assert_eq!(current.candle.start.timestamp(), START + 60);
    assert_eq!(live.report().older_buckets, 2);
}

#[tokio::test]
async fn a_bucket_after_the_next_one_is_refused_and_freezes_nothing() {
    let live = LiveState::new();
    let now = chrono::Utc::now().timestamp();
    let bucket_now = (now - START).div_euclid(60);
    assert!(live.apply(update("BTC-USD", bucket_now, 1)));
    // A clock-skewed producer, a year ahead.
    assert!(!live.apply(update("BTC-USD", bucket_now + 525_600, 9)));
    assert_eq!(live.report().future, 1);
    assert!(
        live.apply(update("BTC-USD", bucket_now, 2)),
        "the series goes on"
    );
    // The next bucket is fine (a producer's clock a little ahead).
    assert!(live.apply(update("BTC-USD", bucket_now + 1, 1)));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_client_of_a_quiet_series_is_swept_and_one_resyncing_too_often_is_cut_off() {
    let live = LiveState::new();
    let stall = ClientSettings {
        capacity: 2,
        stall: Duration::from_secs(10),
        ..ClientSettings::default()
    };
    let (mut stalled, stalled_cut) = one_client(&live, stall);
    for count in 1..=5 {
        live.apply(update("SOL-USD", 0, count));
    }
    // The series goes quiet: no update will reach the stalled client again.
    live.sweep();
    assert!(!stalled_cut.is_cancelled(), "not yet past its stall limit");
    tokio::time::advance(Duration::from_secs(11)).await;
    live.sweep();
    assert!(stalled_cut.is_cancelled());
    assert!(matches!(stalled.next().await, Delivery::CutOff));
    // A client that overflows again and again is cut off at its sixth resync in a minute.
    let (mut flapping, flapping_cut) = one_client(
        &live,
        ClientSettings {
            capacity: 2,
            max_resyncs: 5,
            resync_window: Duration::from_secs(60),
            ..ClientSettings::default()
        },
    );
    let mut count = 100;
    for round in 1..=6 {
        for _ in 0..5 {
            count += 1;
            live.apply(update("SOL-USD", 0, count));
        }
        match flapping.next().await {
            Delivery::Resync(_) if round <= 5 => {}
            Delivery::CutOff if round == 6 => {}
            other => panic!("round {round}: {other:?}"),
        }
    }
    assert!(flapping_cut.is_cancelled());
    assert_eq!(live.report().clients_cut_off, 2);
    assert_eq!(live.report().clients, 0);
}

#[test]
fn series_quiet_for_two_days_are_forgotten_and_the_others_kept() {
    let live = LiveState::new();
    let t0 = chrono::Utc::now();
    let later = t0 + spot_canvas::live::FORGET_QUIET_AFTER;
    live.apply_at(update("OLD-USD", 0, 1), t0);
    live.apply_at(update("NEW-USD", 0, 1), t0);
    // Applied later by this instance, whatever times the producer wrote.
    live.apply_at(update("NEW-USD", 1, 2), later);
    assert_eq!(live.report().products, 2);
    let now = later + chrono::TimeDelta::seconds(1);
    assert_eq!(live.forget_quiet(now), 1, "the old product's one series");
    assert_eq!(live.report().products, 1);
    assert!(
        live.current(
            &spot_canvas::model::ProductId::from_static("NEW-USD"),
            Granularity::OneMinute
        )
        .is_some()
    );
}
