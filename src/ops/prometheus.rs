//! The figures of a `/metrics` scrape that come from the stages' reports.
//!
//! In: a [`Scrape`], the reports the web layer read at the scrape (rows written, batches,
//! superseded updates, stream clients, resyncs, drops, the cross-check's match ratios, the
//! alarms, the role). Out: those reports as counters and gauges in the `metrics` recorder,
//! so that `/metrics` and `/health` never disagree. What the stages record as it happens
//! (trades, gaps, latencies) and the channel gauges from the [`monitor`](super::monitor) are
//! already there; the [`telemetry`](crate::telemetry) recorder renders them all.

use super::alarms::{AlarmKind, AlarmReport};
use crate::config::Role;
use crate::sink::SinkReport;

/// The stages' reports a scrape turns into counters and gauges.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub writer: SinkReport,
    /// The publisher's live path (the subjects).
    pub published: SinkReport,
    pub resyncs: u64,
    pub clients_cut_off: u64,
    pub stream_clients: usize,
    pub feed_connected: usize,
    pub feed_configured: usize,
    /// Match ratios of the cross-checks, by source.
    pub match_ratios: [(&'static str, Option<f64>); 2],
    pub alarms: AlarmReport,
    pub role: Role,
}

/// Sets the counters and gauges that come from the stages' reports.
pub fn collect(scrape: &Scrape) {
    use metrics::{counter, gauge};
    let writer = &scrape.writer;
    counter!("spot_canvas_store_rows_written_total").absolute(writer.written_rows);
    counter!("spot_canvas_store_batches_total").absolute(writer.batches);
    counter!("spot_canvas_store_updates_superseded_total").absolute(writer.superseded);
    counter!("spot_canvas_store_rows_refused_total").absolute(writer.refused);
    counter!("spot_canvas_store_rows_recovered_total").absolute(writer.recovered);
    counter!("spot_canvas_store_spool_lines_lost_total").absolute(writer.recovery_lost);
    counter!("spot_canvas_bus_published_total").absolute(scrape.published.written_rows);
    counter!("spot_canvas_bus_updates_superseded_total").absolute(scrape.published.superseded);
    counter!("spot_canvas_stream_resyncs_total").absolute(scrape.resyncs);
    counter!("spot_canvas_stream_dropped_total").absolute(scrape.clients_cut_off);
    gauge!("spot_canvas_stream_clients").set(scrape.stream_clients as f64);
    gauge!("spot_canvas_feed_connections").set(scrape.feed_connected as f64);
    gauge!("spot_canvas_feed_connections_configured").set(scrape.feed_configured as f64);
    for (source, ratio) in scrape.match_ratios {
        if let Some(ratio) = ratio {
            gauge!("spot_canvas_crosscheck_match_ratio", "source" => source).set(ratio);
        }
    }
    let alarms = &scrape.alarms;
    for kind in AlarmKind::ALL {
        let raised = if alarms.is_raised(kind) { 1.0 } else { 0.0 };
        gauge!("spot_canvas_alarm", "alarm" => kind.as_str()).set(raised);
    }
    gauge!("spot_canvas_quiet_products").set(alarms.quiet_count as f64);
    if let Some(offset) = alarms.clock_offset_ms {
        gauge!("spot_canvas_clock_offset_seconds").set(offset as f64 / 1000.0);
    }
    gauge!("spot_canvas_role", "role" => scrape.role.as_str()).set(1.0);
    let process = super::process::ProcessReport::now();
    if let Some(tasks) = process.tasks {
        gauge!("spot_canvas_runtime_tasks").set(tasks as f64);
    }
    if let Some(rss) = process.rss_bytes {
        gauge!("process_resident_memory_bytes").set(rss as f64);
    }
    if let Some(threads) = process.threads {
        gauge!("process_threads").set(threads as f64);
    }
}
