//! Every metric the service records: its name, kind, help and, for a labelled counter, the
//! label sets it can take.
//!
//! In: nothing. Out: [`CATALOG`], read by the [`recorder`](super::recorder) to describe every
//! metric and to register every counter and histogram at start. A counter that first appeared
//! at its first event would hide that event from `increase()` and from the alert rules; one
//! registered at zero does not. A test (in `architecture.rs`) holds the catalog to the
//! `counter!`, `gauge!` and `histogram!` calls in the source, so none can be left out.

/// The processing latency: an exchange frame received → its candle update out of the engine.
pub const PROCESSING_SECONDS: &str = "spot_canvas_engine_processing_seconds";
/// One flush of the batch writer, all its statements.
pub const STORE_WRITE_SECONDS: &str = "spot_canvas_store_write_seconds";
/// An exchange frame received → its update written to a stream client.
pub const END_TO_END_SECONDS: &str = "spot_canvas_end_to_end_seconds";
/// Control characters the SSE renderer escaped (text from outside held them).
pub const CONTROL_CHARS_ESCAPED: &str = "spot_canvas_sse_control_chars_escaped_total";

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Label sets of a metric: each inner slice is one set of (label, value) pairs.
pub type LabelSets = &'static [&'static [(&'static str, &'static str)]];

/// Which instances record a metric: those that ingest, those that serve the web, or any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Any,
    Ingest,
    Web,
}

/// One metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// Registered at start with each of these sets; empty: registered without labels (a
    /// counter or histogram) or left to its first reading (a gauge, set at each scrape or
    /// sample, whose labels are only known then).
    pub labels: LabelSets,
}

impl Metric {
    /// The side that records it, from its name: the streams' and the end-to-end latency are
    /// the web's; the feed's, REST's, the engine's, the backfill's, the cross-check's, the
    /// store's, the sinks' and the publisher's are the ingest's; the rest any instance's.
    pub fn side(&self) -> Side {
        const WEB: &[&str] = &[
            "spot_canvas_stream_",
            "spot_canvas_sse_",
            END_TO_END_SECONDS,
        ];
        const INGEST: &[&str] = &[
            "spot_canvas_feed_",
            "spot_canvas_rest_",
            "spot_canvas_engine_",
            "spot_canvas_backfill_",
            "spot_canvas_crosscheck_",
            "spot_canvas_store_",
            "spot_canvas_sink_",
            "spot_canvas_bus_",
        ];
        if WEB.iter().any(|p| self.name.starts_with(p)) {
            Side::Web
        } else if INGEST.iter().any(|p| self.name.starts_with(p)) {
            Side::Ingest
        } else {
            Side::Any
        }
    }
}

const fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
        labels: &[],
    }
}

const fn labelled(name: &'static str, help: &'static str, labels: LabelSets) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
        labels,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
        labels: &[],
    }
}

const fn histogram(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        help,
        labels: &[],
    }
}

/// The verdicts of a cross-check, by source.
const CROSSCHECK: LabelSets = &[
    &[("source", "ws_candles_5m"), ("verdict", "match")],
    &[("source", "ws_candles_5m"), ("verdict", "mismatch")],
    &[("source", "ws_candles_5m"), ("verdict", "behind")],
    &[("source", "ws_candles_5m"), ("verdict", "not_comparable")],
    &[("source", "rest_1m"), ("verdict", "match")],
    &[("source", "rest_1m"), ("verdict", "mismatch")],
    &[("source", "rest_1m"), ("verdict", "behind")],
    &[("source", "rest_1m"), ("verdict", "not_comparable")],
];

/// Every metric.
pub const CATALOG: &[Metric] = &[
    // The feed.
    counter(
        "spot_canvas_feed_trades_total",
        "Trades received from the exchange",
    ),
    counter(
        "spot_canvas_feed_reconnects_total",
        "Feed websocket reconnects",
    ),
    counter(
        "spot_canvas_feed_disconnects_total",
        "Feed websocket connections lost",
    ),
    counter("spot_canvas_feed_gaps_total", "Sequence gaps on the feed"),
    counter(
        "spot_canvas_feed_sequence_resets_total",
        "Feed sequences that started over (a new connection on the exchange's side)",
    ),
    counter(
        "spot_canvas_feed_malformed_total",
        "Feed frames that did not parse",
    ),
    counter(
        "spot_canvas_feed_rejected_trades_total",
        "Malformed trades skipped inside good frames",
    ),
    counter(
        "spot_canvas_feed_rejected_candles_total",
        "Malformed candles skipped inside good frames",
    ),
    counter(
        "spot_canvas_feed_bad_timestamps_total",
        "Frame timestamps that did not parse (the frame kept, its timestamp left out)",
    ),
    counter(
        "spot_canvas_feed_unlisted_trades_total",
        "Trades of products the connection did not subscribe, dropped",
    ),
    counter(
        "spot_canvas_feed_unlisted_candles_total",
        "Candles of products the connection did not subscribe, dropped",
    ),
    counter(
        "spot_canvas_feed_refused_products_total",
        "Products the exchange refused to subscribe, dropped from the connection",
    ),
    counter(
        "spot_canvas_feed_skipped_products_total",
        "Products left out of the exchange's products list (ids or fields that do not parse, duplicates)",
    ),
    labelled(
        "spot_canvas_feed_skipped_total",
        "Frames or events of a kind the feed does not read, skipped",
        &[
            &[("what", "type")],
            &[("what", "channel")],
            &[("what", "event_type")],
        ],
    ),
    counter(
        "spot_canvas_feed_backpressure_ms_total",
        "Milliseconds the feed waited for room in the engine's queue",
    ),
    counter(
        "spot_canvas_rest_requests_total",
        "REST requests to the exchange",
    ),
    labelled(
        "spot_canvas_rest_body_too_large_total",
        "Exchange REST answers cut at their size cap, by answer",
        &[
            &[("answer", "products")],
            &[("answer", "candles")],
            &[("answer", "time")],
        ],
    ),
    // The engine and the reconciler.
    counter(
        "spot_canvas_engine_trades_total",
        "Trades applied to candles",
    ),
    counter(
        "spot_canvas_engine_updates_total",
        "Candle updates produced by the engine",
    ),
    counter(
        "spot_canvas_engine_duplicates_total",
        "Trades seen before (same trade id), not counted again",
    ),
    counter(
        "spot_canvas_engine_too_late_total",
        "Trades for candles past the engine's horizon, left to the REST backfill",
    ),
    labelled(
        "spot_canvas_engine_rejected_total",
        "Trades the engine refused, by reason",
        &[&[("reason", "future")], &[("reason", "overflow")]],
    ),
    counter(
        "spot_canvas_engine_backfilled_minutes_total",
        "Minutes the REST backfill filled or replaced",
    ),
    counter(
        "spot_canvas_backfill_failures_total",
        "Backfill windows that failed (retried)",
    ),
    labelled(
        "spot_canvas_crosscheck_total",
        "Cross-check comparisons by source and verdict",
        CROSSCHECK,
    ),
    // Storage.
    counter(
        "spot_canvas_store_rows_written_total",
        "Candle rows written to PostgreSQL",
    ),
    counter(
        "spot_canvas_store_batches_total",
        "Batches written to PostgreSQL",
    ),
    counter(
        "spot_canvas_store_updates_superseded_total",
        "Updates the writer dropped for a newer one of the same candle before writing",
    ),
    counter(
        "spot_canvas_store_rows_refused_total",
        "Candle rows PostgreSQL refused for their content, dropped (the rest of their batch written)",
    ),
    counter(
        "spot_canvas_store_products_refused_total",
        "Products PostgreSQL refused for their content, left out of trading_pairs",
    ),
    counter(
        "spot_canvas_store_rows_recovered_total",
        "Candle rows an earlier run kept in the writer's spool at its stop, written at this start",
    ),
    counter(
        "spot_canvas_store_spool_lines_lost_total",
        "Lines of the writer's spool that could not be read back (each one lost)",
    ),
    labelled(
        "spot_canvas_sink_failures_total",
        "Failed flushes by sink (store, nats, nats-kv), retried",
        &[
            &[("sink", "store")],
            &[("sink", "nats")],
            &[("sink", "nats-kv")],
        ],
    ),
    // NATS and the streams.
    counter(
        "spot_canvas_bus_published_total",
        "Candle updates published on NATS subjects",
    ),
    counter(
        "spot_canvas_bus_updates_superseded_total",
        "Updates the publisher dropped for a newer one of the same candle before publishing",
    ),
    counter(
        "spot_canvas_nats_restarts_total",
        "Restarts of the embedded nats-server",
    ),
    counter(
        "spot_canvas_stream_resyncs_total",
        "Stream clients resynced to the latest state after falling behind",
    ),
    counter(
        "spot_canvas_stream_dropped_total",
        "Stream clients cut off for staying behind",
    ),
    counter(
        CONTROL_CHARS_ESCAPED,
        "Control characters escaped in server-sent events (text from outside held them)",
    ),
    // Gauges, set at each scrape or sample.
    gauge("spot_canvas_stream_clients", "Open SSE streams"),
    gauge(
        "spot_canvas_feed_connections",
        "Feed websocket connections up",
    ),
    gauge(
        "spot_canvas_feed_connections_configured",
        "Feed websocket connections this instance keeps",
    ),
    gauge(
        "spot_canvas_crosscheck_match_ratio",
        "Matched over judged cross-check comparisons, by source",
    ),
    gauge(
        "spot_canvas_channel_utilization",
        "Items queued over capacity of each bounded channel, sampled every second",
    ),
    gauge(
        "spot_canvas_channel_length",
        "Items queued in each bounded channel",
    ),
    gauge(
        "spot_canvas_channel_capacity",
        "Capacity of each bounded channel",
    ),
    gauge("spot_canvas_alarm", "1 while the alarm is raised"),
    gauge(
        "spot_canvas_runtime_tasks",
        "Tokio tasks alive (a count that keeps growing is a leak)",
    ),
    gauge(
        "process_resident_memory_bytes",
        "Resident memory of the process, in bytes",
    ),
    gauge("process_threads", "OS threads of the process"),
    gauge(
        "spot_canvas_quiet_products",
        "Products without trades for unusually long",
    ),
    gauge(
        "spot_canvas_clock_offset_seconds",
        "Local clock minus the exchange's server time",
    ),
    gauge(
        "spot_canvas_ready",
        "1 while the instance is ready for its role",
    ),
    gauge(
        "spot_canvas_role",
        "The instance's role (ingest, web or both)",
    ),
    // Latencies.
    histogram(
        PROCESSING_SECONDS,
        "Exchange frame received to candle update out of the engine",
    ),
    histogram(
        STORE_WRITE_SECONDS,
        "Duration of one batch write to PostgreSQL",
    ),
    histogram(
        END_TO_END_SECONDS,
        "Exchange frame received to the update written to a stream client",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_counters_end_in_total() {
        for (i, metric) in CATALOG.iter().enumerate() {
            assert!(
                CATALOG[i + 1..].iter().all(|m| m.name != metric.name),
                "{} twice",
                metric.name
            );
            if metric.kind == Kind::Counter {
                assert!(metric.name.ends_with("_total"), "{}", metric.name);
            }
            if metric.kind == Kind::Histogram {
                assert!(metric.name.ends_with("_seconds"), "{}", metric.name);
            }
        }
    }
}
