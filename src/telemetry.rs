//! Logging setup: `tracing` with JSON or human-readable output, filtered by `RUST_LOG`.
//! Counters and gauges go through the `metrics` facade; without an installed recorder they
//! are no-ops, so every stage can record from the start.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored),
/// which tests that start several apps in one process rely on.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_writer(std::io::stderr);
    let _already_set = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
