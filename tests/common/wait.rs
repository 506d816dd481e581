//! Waiting for a condition instead of for time: every test that waits for something to
//! happen polls it through here, with a deadline generous enough for a loaded 2-core CI.

use std::future::Future;
use std::time::Duration;

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(25);

/// Polls `check` until it returns `Some`, and returns that value; panics naming `what` when
/// `within` passes first.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        // Time is not the subject here: this is the polling interval of a condition.
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `check` until it returns true; panics naming `what` when `within` passes first.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(what, within, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}
