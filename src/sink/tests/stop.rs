//! The stop: refused rows counted apart, a keeping sink's stop never waiting out a backoff,
//! and its keep awaited within its deadline (forced or not).

use super::super::keep::KEEP_OVERRUN;
use super::*;

/// A keep that records what it was given.
fn keep_into(kept: Arc<Mutex<Vec<CandleUpdate>>>) -> Keep {
    Box::new(move |rows: Vec<CandleUpdate>, _deadline| {
        let n = rows.len() as u64;
        kept.lock().expect("lock").extend(rows);
        Box::pin(async move {
            // An awaited step: the sink returns only once it is done.
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(Kept {
                rows: n,
                place: "test".to_owned(),
            })
        })
    })
}

#[tokio::test(start_paused = true)]
async fn rows_a_flush_reports_refused_are_counted_apart_from_the_written() {
    let (tx, rx) = mpsc::channel(4);
    let stats = Arc::new(SinkStats::default());
    let flush = |rows: Rows| async move { Ok(Refused(rows.len().min(2) as u64)) };
    let sink = tokio::spawn(run("test", rx, settings(), stats.clone(), flush));
    tx.send((0..10).map(|k| update(k, 1)).collect())
        .await
        .expect("send");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), sink)
        .await
        .expect("ends")
        .expect("join");
    let report = stats.report();
    assert_eq!((report.written_rows, report.refused), (8, 2), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_keeping_sink_waits_out_no_backoff_at_the_stop_and_keeps_what_it_could_not_write() {
    let (tx, rx) = mpsc::channel(4);
    let stats = Arc::new(SinkStats::default());
    let kept = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let settings = SinkSettings {
        // A backoff far longer than any stop grace.
        retry_base: Duration::from_secs(60),
        retry_cap: Duration::from_secs(60),
        ..settings()
    };
    let flush = {
        let calls = calls.clone();
        move |_rows: Rows| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>("the database is away".to_owned()) }
        }
    };
    let sink = tokio::spawn(run_keeping(
        "test",
        rx,
        settings,
        stats.clone(),
        flush,
        keep_into(kept.clone()),
        CancellationToken::new(),
    ));
    tx.send((0..100).map(|k| update(k, 1)).collect())
        .await
        .expect("send");
    let failed = tokio::time::timeout(Duration::from_secs(5), async {
        while stats.report().failures == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    failed.await.expect("the first flush fails");
    // A newer update of one key while the sink waits out its backoff.
    tx.send(vec![update(0, 7)]).await.expect("send");
    let stopping = tokio::time::Instant::now();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(2), sink)
        .await
        .expect("the stop waits out no backoff")
        .expect("join");
    assert!(stopping.elapsed() <= settings.stop_timeout);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one attempt at the stop");
    let kept = kept.lock().expect("lock");
    assert_eq!(kept.len(), 100, "every key kept, once");
    let newest = kept
        .iter()
        .find(|u| u.candle.start == update(0, 1).candle.start);
    assert_eq!(newest.map(|u| u.counted_trades), Some(7), "the newest kept");
    let report = stats.report();
    assert_eq!(
        (report.kept_at_stop, report.pending),
        (100, 0),
        "{report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_flush_hanging_at_the_stop_is_cut_by_the_stop_timeout_and_its_rows_kept() {
    let (tx, rx) = mpsc::channel(4);
    let stats = Arc::new(SinkStats::default());
    let kept = Arc::new(Mutex::new(Vec::new()));
    let settings = SinkSettings {
        flush_timeout: Duration::from_secs(30),
        stop_timeout: Duration::from_secs(1),
        ..settings()
    };
    let flush = |_rows: Rows| async {
        std::future::pending::<()>().await;
        Ok(())
    };
    let sink = tokio::spawn(run_keeping(
        "test",
        rx,
        settings,
        stats.clone(),
        flush,
        keep_into(kept.clone()),
        CancellationToken::new(),
    ));
    tx.send((0..10).map(|k| update(k, 1)).collect())
        .await
        .expect("send");
    // The flush hangs; then the stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::time::Instant::now();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), sink)
        .await
        .expect("the stop is bounded")
        .expect("join");
    // The stop timeout, then the keep (300 ms).
    assert!(stopping.elapsed() <= Duration::from_millis(1_400));
    assert_eq!(kept.lock().expect("lock").len(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_forced_stop_keeps_the_rows_and_awaits_the_keep() {
    let (tx, rx) = mpsc::channel(4);
    let stats = Arc::new(SinkStats::default());
    let kept = Arc::new(Mutex::new(Vec::new()));
    let force = CancellationToken::new();
    // The flush hangs: only the forced stop ends it.
    let flush = |_rows: Rows| async {
        std::future::pending::<()>().await;
        Ok(())
    };
    let sink = tokio::spawn(run_keeping(
        "test",
        rx,
        settings(),
        stats.clone(),
        flush,
        keep_into(kept.clone()),
        force.clone(),
    ));
    tx.send((0..10).map(|k| update(k, 1)).collect())
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let forcing = tokio::time::Instant::now();
    force.cancel();
    tokio::time::timeout(Duration::from_secs(2), sink)
        .await
        .expect("the forced stop is bounded")
        .expect("join");
    // The sink ended after its keep (300 ms), not before.
    assert!(forcing.elapsed() >= Duration::from_millis(300));
    assert_eq!(kept.lock().expect("lock").len(), 10);
    assert_eq!(stats.report().kept_at_stop, 10);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_keep_that_overruns_its_deadline_is_abandoned() {
    let (tx, rx) = mpsc::channel(4);
    let stats = Arc::new(SinkStats::default());
    let flush = |_rows: Rows| async { Err::<(), _>("away".to_owned()) };
    let keep: Keep = Box::new(|_rows, _deadline| {
        Box::pin(async {
            std::future::pending::<()>().await;
            Ok(Kept::default())
        })
    });
    let sink = tokio::spawn(run_keeping(
        "test",
        rx,
        settings(),
        stats.clone(),
        flush,
        keep,
        CancellationToken::new(),
    ));
    tx.send((0..10).map(|k| update(k, 1)).collect())
        .await
        .expect("send");
    let stopping = tokio::time::Instant::now();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), sink)
        .await
        .expect("the keep is bounded")
        .expect("join");
    assert!(stopping.elapsed() <= settings().stop_timeout + KEEP_TIMEOUT + KEEP_OVERRUN);
    assert_eq!(stats.report().kept_at_stop, 0);
}
