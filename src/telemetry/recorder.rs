//! The process-wide recorder behind `/metrics`.
//!
//! In: the [`catalog`](super::catalog). Out: the `metrics-exporter-prometheus` handle that
//! renders the exposition, installed once, with every metric described; and, for the sides
//! an instance runs, every counter and histogram registered (a counter at zero, before its
//! first event).

use std::sync::OnceLock;

use metrics::Label;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::catalog::{CATALOG, Kind, Side};
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
                    describe();
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

/// Describes every metric of the catalog.
fn describe() {
    for metric in CATALOG {
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
            Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram => {
                metrics::describe_histogram!(metric.name, metrics::Unit::Seconds, metric.help);
            }
        }
    }
}

/// Registers the counters (at zero, with each of their label sets) and the histograms of the
/// sides this instance runs: an instance that does not ingest exports no feed or store
/// series, one that serves no web no stream series.
pub fn register(ingests: bool, serves_web: bool) {
    for metric in CATALOG {
        let wanted = match metric.side() {
            Side::Any => true,
            Side::Ingest => ingests,
            Side::Web => serves_web,
        };
        if !wanted {
            continue;
        }
        match metric.kind {
            Kind::Counter => {
                if metric.labels.is_empty() {
                    metrics::counter!(metric.name).increment(0);
                }
                for set in metric.labels {
                    let labels: Vec<Label> = set.iter().map(|&(k, v)| Label::new(k, v)).collect();
                    metrics::counter!(metric.name, labels).increment(0);
                }
            }
            // Set at each scrape or sample.
            Kind::Gauge => {}
            Kind::Histogram => {
                // The handle alone makes it known to the exporter.
                let _registered = metrics::histogram!(metric.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_exported_before_its_first_event() {
        let Some(handle) = install() else {
            // Another recorder came first in this process: nothing to render.
            return;
        };
        register(true, true);
        let text = handle.render();
        // Present (other tests of this process may have counted since: the value is theirs).
        for series in [
            "spot_canvas_feed_reconnects_total ",
            "spot_canvas_feed_gaps_total ",
            "spot_canvas_engine_rejected_total{reason=\"overflow\"} ",
            "spot_canvas_sink_failures_total{sink=\"nats-kv\"} ",
            "spot_canvas_stream_dropped_total ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(series)),
                "{series} missing from:\n{text}"
            );
        }
        assert!(
            text.contains("# HELP spot_canvas_feed_reconnects_total"),
            "{text}"
        );
    }
}
