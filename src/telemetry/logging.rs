//! Logging setup: `tracing` filtered by `RUST_LOG`, as one JSON object per line for Cloud
//! Logging (`severity`, `time`, `message`, `target` and the event's fields; `LOG_FORMAT=json`,
//! which the container sets) or as compact human-readable lines (the default, for development).
//!
//! In: the filter and the format. Out: the global `tracing` subscriber.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::prelude::*;

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored),
/// which tests that start several apps in one process rely on. `json`: one JSON object per line (Cloud Logging); otherwise compact lines.
pub fn init(filter: &str, json: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = if json {
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_stackdriver::layer().with_writer(std::io::stderr))
            .try_init()
            .is_ok()
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_span_events(FmtSpan::NONE)
            .with_writer(std::io::stderr)
            .compact()
            .try_init()
            .is_ok()
    };
    // Already installed (a second app in one process): the first one stays.
    let _ = installed;
}
