//! The sink's contract: rows survive failed, panicked and abandoned flushes; newer updates
//! win; a backlog is written in pieces.

use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use chrono::DateTime;
use rust_decimal::Decimal;

use super::*;
use crate::model::{Candle, TradeId};

fn update(key: i64, count: u64) -> CandleUpdate {
    let start = 1_790_000_040 + 60 * key;
    let time = DateTime::from_timestamp(start, 0).expect("time");
    CandleUpdate {
        candle: Candle {
            product_id: crate::model::ProductId::from_static("BTC-USD"),
            granularity: Granularity::OneMinute,
            start: time,
            open: Decimal::ONE,
            high: Decimal::ONE,
            low: Decimal::ONE,
            close: Decimal::ONE,
            volume: Decimal::from(count),
            buy_volume: None,
            trade_count: Some(count),
        },
        complete: false,
        revision: 0,
        counted_trades: count,
        last_trade_id: TradeId(count),
        last_trade_time: time,
        last_received: time,
    }
}

fn settings() -> SinkSettings {
    SinkSettings {
        max_rows: 1_000,
        flush_interval: Duration::from_millis(10),
        retry_base: Duration::from_millis(10),
        retry_cap: Duration::from_millis(50),
        flush_timeout: Duration::from_secs(2),
        max_flush_rows: 1_000,
        stop_timeout: Duration::from_secs(1),
    }
}

/// Runs a sink over 100 keys (sent as 10 batches, then the input closes) with `flush`, and
/// returns what was written, by key, and the stats.
async fn run_with<F, Fut>(flush: F, written: Arc<Mutex<HashMap<i64, u64>>>) -> SinkReport
where
    F: Fn(Rows) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let stats = Arc::new(SinkStats::default());
    let sink = tokio::spawn(run("test", rx, settings(), stats.clone(), flush));
    for batch in 0..10 {
        let rows = (0..10).map(|k| update(batch * 10 + k, 1)).collect();
        tx.send(rows).await.expect("send");
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), sink)
        .await
        .expect("the sink ends once everything is written")
        .expect("join");
    let written = written.lock().expect("lock");
    assert_eq!(written.len(), 100, "every key written");
    assert!(written.values().all(|count| *count == 1));
    stats.report()
}

fn record(written: &Mutex<HashMap<i64, u64>>, rows: &[CandleUpdate]) {
    let mut written = written.lock().expect("lock");
    for u in rows {
        let key = (u.candle.start.timestamp() - 1_790_000_040) / 60;
        written.insert(key, u.version().trade_count);
    }
}

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
