//! `GET /metrics`: the Prometheus text format, from `metrics-exporter-prometheus` behind the
//! `metrics` facade every stage records through.
//!
//! In: what the stages record as it happens (trades, updates, gaps, latencies as histograms),
//! and, at each scrape, the stages' own reports turned into counters and gauges (rows
//! written, batches, superseded updates, stream clients, resyncs, drops, the cross-check's
//! match ratio, the alarms, readiness), so that `/metrics` and `/health` never disagree. The
//! channel gauges come from the [`monitor`](super::monitor). Out: the rendered exposition.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use chrono::{DateTime, Utc};

use super::alarms::AlarmKind;
use crate::model::CandleUpdate;
use crate::web::AppState;

/// Buckets of the latency histograms, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The processing latency: an exchange frame received → its candle update out of the engine.
pub const PROCESSING_SECONDS: &str = "spot_canvas_engine_processing_seconds";
/// One flush of the batch writer, all its statements.
pub const STORE_WRITE_SECONDS: &str = "spot_canvas_store_write_seconds";
/// An exchange frame received → its update written to a stream client.
pub const END_TO_END_SECONDS: &str = "spot_canvas_end_to_end_seconds";

/// Latencies longer than this are not a trade's path through the service (a stalled clock or
/// an update held by a paused process): not recorded.
const LATENCY_HORIZON_MICROS: i64 = 60_000_000;

/// Seconds from the exchange frame of `update`'s newest trade being received to `now`, when
/// a trade just caused the update: a live candle built from trades. Completions by the timer,
/// revisions and REST candles carry an older (or a made-up) receive time and are no latency.
/// `None` too for a negative span (the receiving instance's clock is behind this one's).
pub fn trade_latency(update: &CandleUpdate, now: DateTime<Utc>) -> Option<f64> {
    if update.complete || update.revision > 0 || update.last_trade_id.0 == 0 {
        return None;
    }
    let elapsed = (now - update.last_received).num_microseconds()?;
    (0..LATENCY_HORIZON_MICROS)
        .contains(&elapsed)
        .then(|| elapsed as f64 / 1e6)
}

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

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "spot_canvas_feed_trades_total",
        "Trades received from the exchange"
    );
    describe_counter!(
        "spot_canvas_engine_updates_total",
        "Candle updates produced by the engine"
    );
    describe_counter!(
        "spot_canvas_store_rows_written_total",
        "Candle rows written to PostgreSQL"
    );
    describe_counter!(
        "spot_canvas_store_batches_total",
        "Batches written to PostgreSQL"
    );
    describe_counter!(
        "spot_canvas_store_updates_superseded_total",
        "Updates the writer dropped for a newer one of the same candle before writing"
    );
    describe_counter!(
        "spot_canvas_store_rows_refused_total",
        "Candle rows PostgreSQL refused for their content, dropped (the rest of their batch written)"
    );
    describe_counter!(
        "spot_canvas_store_products_refused_total",
        "Products PostgreSQL refused for their content, left out of trading_pairs"
    );
    describe_counter!(
        "spot_canvas_store_rows_recovered_total",
        "Candle rows an earlier run kept in the writer's spool at its stop, written at this start"
    );
    describe_counter!(
        "spot_canvas_store_spool_lines_lost_total",
        "Lines of the writer's spool that could not be read back (each one lost)"
    );
    describe_counter!(
        "spot_canvas_bus_published_total",
        "Candle updates published on NATS subjects"
    );
    describe_counter!(
        "spot_canvas_bus_updates_superseded_total",
        "Updates the publisher dropped for a newer one of the same candle before publishing"
    );
    describe_counter!(
        "spot_canvas_stream_resyncs_total",
        "Stream clients resynced to the latest state after falling behind"
    );
    describe_counter!(
        "spot_canvas_stream_dropped_total",
        "Stream clients cut off for staying behind"
    );
    describe_counter!(
        "spot_canvas_sink_failures_total",
        "Failed flushes by sink (store, nats, nats-kv), retried"
    );
    describe_counter!(
        "spot_canvas_feed_reconnects_total",
        "Feed websocket reconnects"
    );
    describe_counter!("spot_canvas_feed_gaps_total", "Sequence gaps on the feed");
    describe_counter!(
        "spot_canvas_feed_malformed_total",
        "Feed frames that did not parse"
    );
    describe_counter!(
        "spot_canvas_feed_rejected_trades_total",
        "Malformed trades skipped inside good frames"
    );
    describe_counter!(
        "spot_canvas_crosscheck_total",
        "Cross-check comparisons by source and verdict"
    );
    describe_gauge!("spot_canvas_stream_clients", "Open SSE streams");
    describe_gauge!(
        "spot_canvas_feed_connections",
        "Feed websocket connections up"
    );
    describe_gauge!(
        "spot_canvas_feed_connections_configured",
        "Feed websocket connections this instance keeps"
    );
    describe_gauge!(
        "spot_canvas_crosscheck_match_ratio",
        "Matched over judged cross-check comparisons, by source"
    );
    describe_gauge!(
        "spot_canvas_channel_utilization",
        "Items queued over capacity of each bounded channel, sampled every second"
    );
    describe_gauge!(
        "spot_canvas_channel_length",
        "Items queued in each bounded channel"
    );
    describe_gauge!(
        "spot_canvas_channel_capacity",
        "Capacity of each bounded channel"
    );
    describe_gauge!("spot_canvas_alarm", "1 while the alarm is raised");
    describe_gauge!(
        "spot_canvas_runtime_tasks",
        "Tokio tasks alive (a count that keeps growing is a leak)"
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        "Resident memory of the process, in bytes"
    );
    describe_gauge!("process_threads", "OS threads of the process");
    describe_gauge!(
        "spot_canvas_quiet_products",
        "Products without trades for unusually long"
    );
    describe_gauge!(
        "spot_canvas_clock_offset_seconds",
        "Local clock minus the exchange's server time"
    );
    describe_gauge!(
        "spot_canvas_ready",
        "1 while the instance is ready for its role"
    );
    describe_gauge!(
        "spot_canvas_role",
        "The instance's role (ingest, web or both)"
    );
    describe_histogram!(
        PROCESSING_SECONDS,
        metrics::Unit::Seconds,
        "Exchange frame received to candle update out of the engine"
    );
    describe_histogram!(
        STORE_WRITE_SECONDS,
        metrics::Unit::Seconds,
        "Duration of one batch write to PostgreSQL"
    );
    describe_histogram!(
        END_TO_END_SECONDS,
        metrics::Unit::Seconds,
        "Exchange frame received to the update written to a stream client"
    );
}

/// Sets the counters and gauges that come from the stages' reports.
pub fn collect(state: &AppState) {
    use metrics::{counter, gauge};
    let writer = state.writer.report();
    counter!("spot_canvas_store_rows_written_total").absolute(writer.written_rows);
    counter!("spot_canvas_store_batches_total").absolute(writer.batches);
    counter!("spot_canvas_store_updates_superseded_total").absolute(writer.superseded);
    counter!("spot_canvas_store_rows_refused_total").absolute(writer.refused);
    counter!("spot_canvas_store_rows_recovered_total").absolute(writer.recovered);
    counter!("spot_canvas_store_spool_lines_lost_total").absolute(writer.recovery_lost);
    let publisher = state.publisher.report();
    counter!("spot_canvas_bus_published_total").absolute(publisher.live.written_rows);
    counter!("spot_canvas_bus_updates_superseded_total").absolute(publisher.live.superseded);
    let live = state.live.report();
    counter!("spot_canvas_stream_resyncs_total").absolute(live.resyncs);
    counter!("spot_canvas_stream_dropped_total").absolute(live.clients_cut_off);
    gauge!("spot_canvas_stream_clients").set(state.streams.gate.open() as f64);
    let feed = state.feed.report();
    gauge!("spot_canvas_feed_connections").set(feed.connected as f64);
    gauge!("spot_canvas_feed_connections_configured").set(feed.connections.len() as f64);
    let ratios = [
        ("ws_5m", state.engine.report().crosscheck_ws_5m.match_rate),
        (
            "rest_1m",
            state.reconcile.report().crosscheck_rest_1m.match_rate,
        ),
    ];
    for (source, ratio) in ratios {
        if let Some(ratio) = ratio {
            gauge!("spot_canvas_crosscheck_match_ratio", "source" => source).set(ratio);
        }
    }
    let alarms = state.alarms.report();
    for kind in AlarmKind::ALL {
        let raised = if alarms.is_raised(kind) { 1.0 } else { 0.0 };
        gauge!("spot_canvas_alarm", "alarm" => kind.as_str()).set(raised);
    }
    gauge!("spot_canvas_quiet_products").set(alarms.quiet_count as f64);
    if let Some(offset) = alarms.clock_offset_ms {
        gauge!("spot_canvas_clock_offset_seconds").set(offset as f64 / 1000.0);
    }
    gauge!("spot_canvas_role", "role" => state.role.as_str()).set(1.0);
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

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.metrics else {
        return crate::web::json::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not recorded in this process",
        );
    };
    collect(&state);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Candle, Granularity, TradeId};

    fn update(
        complete: bool,
        revision: u32,
        last_trade_id: u64,
        received_ms_ago: i64,
    ) -> CandleUpdate {
        let now = now();
        let start = DateTime::from_timestamp(1_800_000_000 - 60, 0).expect("a time");
        CandleUpdate {
            candle: Candle {
                product_id: crate::model::ProductId::from_static("BTC-USD"),
                granularity: Granularity::OneMinute,
                start,
                open: 1.into(),
                high: 1.into(),
                low: 1.into(),
                close: 1.into(),
                volume: 1.into(),
                buy_volume: None,
                trade_count: Some(1),
            },
            complete,
            revision,
            counted_trades: 1,
            last_trade_id: TradeId(last_trade_id),
            last_trade_time: start,
            last_received: now - chrono::Duration::milliseconds(received_ms_ago),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a time")
    }

    #[test]
    fn only_updates_a_trade_just_caused_are_a_latency() {
        assert_eq!(trade_latency(&update(false, 0, 7, 3), now()), Some(0.003));
        // Completed by the timer, a minute after its last trade.
        assert_eq!(trade_latency(&update(true, 0, 7, 3), now()), None);
        // A late trade's revision, and a REST candle.
        assert_eq!(trade_latency(&update(false, 1, 7, 3), now()), None);
        assert_eq!(trade_latency(&update(false, 0, 0, 3), now()), None);
        // Clocks that disagree, and updates held for minutes.
        assert_eq!(trade_latency(&update(false, 0, 7, -5), now()), None);
        assert_eq!(trade_latency(&update(false, 0, 7, 61_000), now()), None);
    }
}
