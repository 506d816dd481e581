//! Logging setup: `tracing` filtered by `RUST_LOG`, as one JSON object per line for Cloud
//! Logging (`severity`, `time`, `message`, `target` and the event's fields; `LOG_FORMAT=json`,
//! which the container sets) or as compact human-readable lines (the default, for development).
//! Counters, gauges and histograms go through the `metrics` facade; until the Prometheus
//! recorder is installed they are no-ops, so every stage can record from the start.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored),
/// which tests that start several apps in one process rely on.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = match format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(tracing_stackdriver::layer().with_writer(std::io::stderr))
            .try_init()
            .is_ok(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_span_events(FmtSpan::NONE)
            .with_writer(std::io::stderr)
            .compact()
            .try_init()
            .is_ok(),
    };
    // Already installed (a second app in one process): the first one stays.
    let _ = installed;
}
