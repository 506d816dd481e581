//! The sink's tunables.
//!
//! In: nothing (the writer and the publisher set them). Out: [`SinkSettings`], with the
//! defaults the writer uses (50 rows, 100 ms).

use std::time::Duration;

/// Sink tunables.
#[derive(Debug, Clone, Copy)]
pub struct SinkSettings {
    /// Flush once this many keys are pending.
    pub max_rows: usize,
    /// Flush at least this often when anything is pending.
    pub flush_interval: Duration,
    /// Retry backoff after a failed write: doubles from `retry_base` up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// A flush still running after this long is abandoned and counted as failed; its rows are
    /// retried. Bounds how long a hung database or NATS server can hold the sink (and its stop).
    pub flush_timeout: Duration,
    /// Rows one flush takes at most (the rest wait for the next): a backlog after a long
    /// outage is written in pieces that each fit in `flush_timeout`.
    pub max_flush_rows: usize,
    /// [`run_keeping`](super::run_keeping) only: how long after its input closes the sink
    /// may still flush; what is not written by then goes to its [`Keep`](super::Keep). Fits
    /// in the service's stop grace.
    pub stop_timeout: Duration,
}

impl Default for SinkSettings {
    fn default() -> Self {
        SinkSettings {
            max_rows: 50,
            flush_interval: Duration::from_millis(100),
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(30),
            max_flush_rows: 20_000,
            stop_timeout: Duration::from_secs(3),
        }
    }
}

impl SinkSettings {
    /// The pause before retry `failures` (0 for the first): equal-jitter backoff from
    /// `retry_base` up to `retry_cap`. Shared by the sink and the writer's recovery paths.
    pub fn retry_delay(&self, failures: u32) -> Duration {
        crate::backoff::equal_jitter(
            self.retry_base,
            self.retry_cap,
            failures,
            rand::random::<f64>(),
        )
    }
}
