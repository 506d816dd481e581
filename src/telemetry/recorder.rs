//! The process-wide recorder behind `/metrics`.
//!
//! In: the [`catalog`](super::catalog). Out: the `metrics-exporter-prometheus` handle that
//! renders the exposition, installed once, with every metric described and every counter and
//! histogram registered (a counter at zero, before its first event).

use std::sync::OnceLock;

use metrics::Label;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::catalog::{CATALOG, Kind};
use super::latency::LATENCY_BUCKETS;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle). `None` when
/// another recorder was installed first: metrics are then not exported.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            {
                Ok(builder) => builder,
                Err(e) => {
                    tracing::error!(error = %e, "cannot configure the metrics histograms");
                    return None;
                }
            };
            match builder.install_recorder() {
                Ok(handle) => {
                    describe_and_register();
                    Some(handle)
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot install the metrics recorder");
                    None
                }
            }
        })
        .clone()
}

/// Describes every metric of the catalog and registers its counters and histograms.
fn describe_and_register() {
    for metric in CATALOG {
        match metric.kind {
            Kind::Counter => {
                metrics::describe_counter!(metric.name, metric.help);
                if metric.labels.is_empty() {
                    metrics::counter!(metric.name).increment(0);
                }
                for set in metric.labels {
                    let labels: Vec<Label> = set.iter().map(|&(k, v)| Label::new(k, v)).collect();
                    metrics::counter!(metric.name, labels).increment(0);
                }
            }
            Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram => {
                metrics::describe_histogram!(metric.name, metrics::Unit::Seconds, metric.help);
                // Registered: the handle alone makes it known to the exporter.
                let _registered = metrics::histogram!(metric.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_exported_at_zero_before_its_first_event() {
        let Some(handle) = install() else {
            // Another recorder came first in this process: nothing to render.
            return;
        };
        let text = handle.render();
        for line in [
            "spot_canvas_feed_reconnects_total 0",
            "spot_canvas_feed_gaps_total 0",
            "spot_canvas_engine_rejected_total{reason=\"overflow\"} 0",
            "spot_canvas_sink_failures_total{sink=\"nats-kv\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(
            text.contains("# HELP spot_canvas_feed_reconnects_total"),
            "{text}"
        );
    }
}
