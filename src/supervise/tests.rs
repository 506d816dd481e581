use super::*;

#[tokio::test]
async fn a_fatal_stage_that_ends_early_is_reported_and_named() {
    let stages = Stages::new();
    let mut supervisor = Supervisor::new(stages.clone());
    let stop = CancellationToken::new();
    let _steady = supervisor.spawn_fatal("steady", &stop, |token| async move {
        token.cancelled().await;
        Ok(())
    });
    let _broken = supervisor.spawn_fatal("broken", &stop, |_| async { anyhow::bail!("disk gone") });
    let (name, why) = supervisor.early_end().await;
    assert_eq!(name, "broken");
    assert!(why.contains("disk gone"), "{why}");
    let report = stages.report();
    assert_eq!(report.failed, vec!["broken"]);
    assert_eq!(report.stages["steady"].state, StageState::Running);
}

#[tokio::test]
async fn a_panicking_stage_is_caught_and_named() {
    let stages = Stages::new();
    let mut supervisor = Supervisor::new(stages.clone());
    let stop = CancellationToken::new();
    let _handle = supervisor.spawn_fatal("shard", &stop, |_| async {
        let empty: Vec<u8> = Vec::new();
        let _ = empty
            .get(3)
            .copied()
            .ok_or("index")
            .map_err(|e| panic!("{e}"));
        Ok(())
    });
    let (name, why) = supervisor.early_end().await;
    assert_eq!(name, "shard");
    assert!(why.starts_with("panicked"), "{why}");
}

#[tokio::test]
async fn stages_ended_by_the_stop_are_stopped_not_failed() {
    let stages = Stages::new();
    let supervisor = Supervisor::new(stages.clone());
    let stop = CancellationToken::new();
    let handle = supervisor.spawn_fatal("writer", &stop, |token| async move {
        token.cancelled().await;
        Ok(())
    });
    stages.begin_stop();
    stop.cancel();
    handle.await.expect("joined");
    let report = stages.report();
    assert!(report.failed.is_empty());
    assert_eq!(report.stages["writer"].state, StageState::Stopped);
}

#[tokio::test]
async fn a_restarting_stage_runs_again_and_counts_its_restarts() {
    let stages = Stages::new();
    let supervisor = Supervisor::new(stages.clone())
        .with_restart_backoff(Duration::from_millis(1), Duration::from_millis(5));
    let stop = CancellationToken::new();
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = runs.clone();
    let handle = supervisor.spawn_restarting("live", &stop, move |token| {
        let runs = counted.clone();
        async move {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            token.cancelled().await;
            Ok(())
        }
    });
    for expected in 1..=3 {
        wait_until(|| runs.load(std::sync::atomic::Ordering::SeqCst) == expected).await;
        wait_until(|| stages.report().stages["live"].state == StageState::Running).await;
        if expected < 3 {
            assert!(stages.end_stage("live"));
        }
    }
    assert_eq!(stages.report().stages["live"].restarts, 2);
    stages.begin_stop();
    stop.cancel();
    handle.await.expect("joined");
    assert_eq!(stages.report().stages["live"].state, StageState::Stopped);
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "condition not met");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
