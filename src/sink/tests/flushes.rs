//! Flushes that fail, panic or hang keep their rows; newer updates win; a backlog is written
//! in pieces.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_flush_task_that_panics_keeps_its_rows_and_they_are_retried() {
    let written = Arc::new(Mutex::new(HashMap::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let report = run_with(
        {
            let (written, calls) = (written.clone(), calls.clone());
            move |rows: Rows| {
                let (written, calls) = (written.clone(), calls.clone());
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("a bug in the first flush");
                    }
                    record(&written, &rows);
                    Ok(())
                }
            }
        },
        written,
    )
    .await;
    assert_eq!(report.panics, 1, "{report:?}");
    assert_eq!(report.failures, 1, "{report:?}");
    assert_eq!(report.written_rows, 100, "{report:?}");
    assert_eq!(report.pending, 0);
}

#[tokio::test(start_paused = true)]
async fn a_flush_fn_that_panics_before_its_future_is_retried_too() {
    let written = Arc::new(Mutex::new(HashMap::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let report = run_with(
        {
            let (written, calls) = (written.clone(), calls.clone());
            move |rows: Rows| {
                assert_ne!(calls.fetch_add(1, Ordering::SeqCst), 0, "first call panics");
                let written = written.clone();
                async move {
                    record(&written, &rows);
                    Ok(())
                }
            }
        },
        written,
    )
    .await;
    assert_eq!(report.panics, 1, "{report:?}");
    assert_eq!(report.written_rows, 100, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_flush_that_hangs_is_abandoned_after_the_timeout_and_retried() {
    let written = Arc::new(Mutex::new(HashMap::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let report = run_with(
        {
            let (written, calls) = (written.clone(), calls.clone());
            move |rows: Rows| {
                let (written, calls) = (written.clone(), calls.clone());
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        // A database that never answers.
                        std::future::pending::<()>().await;
                    }
                    record(&written, &rows);
                    Ok(())
                }
            }
        },
        written,
    )
    .await;
    assert_eq!(report.timeouts, 2, "{report:?}");
    assert_eq!(report.failures, 2, "{report:?}");
    assert_eq!(report.written_rows, 100, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_backlog_larger_than_max_flush_rows_is_written_in_pieces() {
    let written = Arc::new(Mutex::new(HashMap::new()));
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel(4);
    let stats = Arc::new(SinkStats::default());
    let settings = SinkSettings {
        max_rows: 10_000,
        flush_interval: Duration::from_secs(3600),
        max_flush_rows: 40,
        ..settings()
    };
    let flush = {
        let (written, sizes) = (written.clone(), sizes.clone());
        move |rows: Rows| {
            let (written, sizes) = (written.clone(), sizes.clone());
            async move {
                sizes.lock().expect("lock").push(rows.len());
                record(&written, &rows);
                Ok(())
            }
        }
    };
    let sink = tokio::spawn(run("test", rx, settings, stats.clone(), flush));
    tx.send((0..100).map(|k| update(k, 1)).collect())
        .await
        .expect("send");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), sink)
        .await
        .expect("ends")
        .expect("join");
    assert_eq!(written.lock().expect("lock").len(), 100);
    assert_eq!(*sizes.lock().expect("lock"), vec![40, 40, 20]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_keeps_newer_updates_received_meanwhile() {
    let (tx, rx) = mpsc::channel(4);
    let stats = Arc::new(SinkStats::default());
    let written = Arc::new(Mutex::new(HashMap::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let flush = {
        let (written, calls) = (written.clone(), calls.clone());
        move |rows: Rows| {
            let (written, calls) = (written.clone(), calls.clone());
            let mut release = release_rx.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Fails, but only once the newer update has been received.
                    let _released = release.wait_for(|r| *r).await;
                    return Err("the database is away".to_owned());
                }
                record(&written, &rows);
                Ok(())
            }
        }
    };
    let sink = tokio::spawn(run("test", rx, settings(), stats.clone(), flush));
    tx.send(vec![update(0, 1)]).await.expect("send");
    let waited = tokio::time::timeout(Duration::from_secs(5), async {
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    waited.await.expect("the first flush starts");
    tx.send(vec![update(0, 2)]).await.expect("send");
    let received = tokio::time::timeout(Duration::from_secs(5), async {
        while stats.report().received < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    received.await.expect("the newer update is received");
    release_tx.send(true).expect("release");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), sink)
        .await
        .expect("ends")
        .expect("join");
    assert_eq!(
        written.lock().expect("lock").get(&0),
        Some(&2),
        "newest kept"
    );
}
