//! The alarms: conditions an operator must hear about, judged from the latest readings.
//!
//! In: the feed's connections (their last heartbeat), the quiet products, the clock
//! comparison, and whether the database and NATS answer. Out: an [`AlarmReport`] naming every
//! raised alarm with what is wrong, which `/health`, `/metrics` (`spot_canvas_alarm`) and the
//! board show. Alarms do not change readiness: an instance with a quiet product or a drifting
//! clock still serves (readiness has its own checks).

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::clock::{ClockReport, MAX_DRIFT_MS};
use crate::feed::health::FeedReport;
use crate::live::quiet::QuietProduct;

/// A connection silent on its `heartbeats` channel for longer raises the heartbeat alarm
/// (Coinbase sends one a second).
pub const HEARTBEAT_SILENCE: Duration = Duration::from_secs(5);
/// Quiet products listed by name in the report (the count covers all of them).
const QUIET_LISTED: usize = 50;

/// One kind of alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// A product without trades for far longer than its own rate.
    QuietProduct,
    /// A feed connection without a heartbeat for [`HEARTBEAT_SILENCE`].
    Heartbeat,
    /// The local clock off the exchange's by more than [`MAX_DRIFT_MS`].
    ClockDrift,
    /// The database does not answer.
    Database,
    /// NATS is not connected.
    Nats,
}

impl AlarmKind {
    pub const ALL: [AlarmKind; 5] = [
        AlarmKind::QuietProduct,
        AlarmKind::Heartbeat,
        AlarmKind::ClockDrift,
        AlarmKind::Database,
        AlarmKind::Nats,
    ];

    /// The name in `/health` and the `alarm` label of `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::QuietProduct => "quiet_product",
            AlarmKind::Heartbeat => "heartbeat",
            AlarmKind::ClockDrift => "clock_drift",
            AlarmKind::Database => "database",
            AlarmKind::Nats => "nats",
        }
    }
}

/// A raised alarm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alarm {
    pub kind: AlarmKind,
    /// What is wrong, for a person.
    pub detail: String,
}

/// The alarms at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AlarmReport {
    pub raised: Vec<Alarm>,
    /// The quiet products, longest silence first (at most 50 listed).
    pub quiet_products: Vec<QuietProduct>,
    pub quiet_count: usize,
    /// Products whose activity is followed.
    pub tracked_products: usize,
    /// Feed connections without a recent heartbeat.
    pub silent_connections: Vec<usize>,
    /// The clock's offset from the exchange's, when it was compared lately.
    pub clock_offset_ms: Option<i64>,
    /// When the report was made; `None` before the monitor's first round.
    pub evaluated_at: Option<DateTime<Utc>>,
}

impl AlarmReport {
    pub fn is_raised(&self, kind: AlarmKind) -> bool {
        self.raised.iter().any(|a| a.kind == kind)
    }
}

/// What the alarms are judged from.
#[derive(Debug, Clone, Default)]
pub struct Readings {
    /// Products whose activity is followed.
    pub tracked_products: usize,
    /// The feed, when this instance ingests.
    pub feed: Option<FeedReport>,
    pub quiet: Vec<QuietProduct>,
    /// The clock comparison, when this instance makes it.
    pub clock: Option<ClockReport>,
    /// Why the database did not answer, if it did not.
    pub database: Option<String>,
    /// Why NATS is not usable, if it is not.
    pub nats: Option<String>,
}

/// Judges `readings` at `now`.
pub fn evaluate(readings: Readings, now: DateTime<Utc>) -> AlarmReport {
    let mut raised = Vec::new();
    let quiet_count = readings.quiet.len();
    if let Some(first) = readings.quiet.first() {
        let more = if quiet_count > 1 {
            format!(" and {} more", quiet_count - 1)
        } else {
            String::new()
        };
        raised.push(Alarm {
            kind: AlarmKind::QuietProduct,
            detail: format!(
                "{} has not traded for {:.0} s (usually every {:.1} s){more}",
                first.product_id, first.silent_secs, first.usual_interval_secs
            ),
        });
    }
    let silence = chrono::Duration::from_std(HEARTBEAT_SILENCE).unwrap_or(chrono::Duration::MAX);
    let silent_connections: Vec<usize> = readings
        .feed
        .iter()
        .flat_map(|feed| feed.connections.iter())
        .filter(|c| c.connected)
        .filter(|c| {
            c.last_heartbeat
                .or(c.connected_at)
                .is_some_and(|since| now - since > silence)
        })
        .map(|c| c.id)
        .collect();
    if !silent_connections.is_empty() {
        raised.push(Alarm {
            kind: AlarmKind::Heartbeat,
            detail: format!(
                "no heartbeat for over {} s on feed connection(s) {silent_connections:?}",
                HEARTBEAT_SILENCE.as_secs()
            ),
        });
    }
    let clock_offset_ms = readings.clock.as_ref().and_then(|c| c.fresh_offset_ms(now));
    if let Some(offset) = clock_offset_ms
        && offset.abs() > MAX_DRIFT_MS
    {
        let way = if offset > 0 { "ahead of" } else { "behind" };
        raised.push(Alarm {
            kind: AlarmKind::ClockDrift,
            detail: format!(
                "the local clock is {} ms {way} the exchange's (limit {MAX_DRIFT_MS} ms)",
                offset.unsigned_abs()
            ),
        });
    }
    if let Some(why) = readings.database {
        raised.push(Alarm {
            kind: AlarmKind::Database,
            detail: format!("the database is unreachable: {why}"),
        });
    }
    if let Some(why) = readings.nats {
        raised.push(Alarm {
            kind: AlarmKind::Nats,
            detail: format!("NATS is unreachable: {why}"),
        });
    }
    let mut quiet_products = readings.quiet;
    quiet_products.truncate(QUIET_LISTED);
    AlarmReport {
        raised,
        quiet_products,
        quiet_count,
        tracked_products: readings.tracked_products,
        silent_connections,
        clock_offset_ms,
        evaluated_at: Some(now),
    }
}

/// The latest report, shared by the monitor (which writes it) and its readers.
#[derive(Debug, Default)]
pub struct Alarms {
    report: Mutex<AlarmReport>,
}

impl Alarms {
    pub fn report(&self) -> AlarmReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the report, logging each alarm as it is raised or cleared.
    pub fn set(&self, report: AlarmReport) {
        let mut current = self.report.lock().unwrap_or_else(|e| e.into_inner());
        for kind in AlarmKind::ALL {
            match (
                current.is_raised(kind),
                report.raised.iter().find(|a| a.kind == kind),
            ) {
                (false, Some(alarm)) => {
                    tracing::warn!(alarm = kind.as_str(), detail = %alarm.detail, "alarm raised");
                }
                (true, None) => tracing::info!(alarm = kind.as_str(), "alarm cleared"),
                _ => {}
            }
        }
        *current = report;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::health::{AuthState, FeedHealth};
    use crate::ops::clock::ClockReading;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a time")
    }

    #[test]
    fn nothing_wrong_raises_nothing() {
        let report = evaluate(Readings::default(), now());
        assert!(report.raised.is_empty());
        assert_eq!(report.evaluated_at, Some(now()));
    }

    #[test]
    fn a_connected_feed_without_heartbeats_for_five_seconds_raises_the_heartbeat_alarm() {
        let health = FeedHealth::new(AuthState::Unauthenticated);
        health.register(0, vec![crate::model::ProductId::from_static("BTC-USD")]);
        health.register(1, vec![crate::model::ProductId::from_static("ETH-USD")]);
        health.register(2, vec![crate::model::ProductId::from_static("SOL-USD")]);
        let secs = |s: i64| now() - chrono::Duration::seconds(s);
        health.update(0, |c| {
            c.connected = true;
            c.connected_at = Some(secs(60));
            c.last_heartbeat = Some(secs(1));
        });
        health.update(1, |c| {
            c.connected = true;
            c.connected_at = Some(secs(60));
            c.last_heartbeat = Some(secs(6));
        });
        // Down: its silence is the reconnect's business, not this alarm's.
        health.update(2, |c| c.last_heartbeat = Some(secs(60)));
        let readings = Readings {
            feed: Some(health.report()),
            ..Readings::default()
        };
        let report = evaluate(readings, now());
        assert_eq!(report.silent_connections, vec![1]);
        assert!(report.is_raised(AlarmKind::Heartbeat));
        // Just connected, no heartbeat yet: not silent before 5 s.
        health.update(1, |c| {
            c.connected_at = Some(secs(3));
            c.last_heartbeat = None;
        });
        let readings = Readings {
            feed: Some(health.report()),
            ..Readings::default()
        };
        assert!(!evaluate(readings, now()).is_raised(AlarmKind::Heartbeat));
    }

    #[test]
    fn clock_database_nats_and_quiet_alarms() {
        let clock = |offset_ms| ClockReport {
            last: Some(ClockReading {
                offset_ms,
                round_trip_ms: 3,
                at: now(),
            }),
            ..ClockReport::default()
        };
        let readings = Readings {
            clock: Some(clock(-1_500)),
            database: Some("SELECT 1 did not answer".into()),
            nats: Some("NATS connection disconnected".into()),
            quiet: vec![QuietProduct {
                product_id: "BTC-USD".into(),
                silent_secs: 42.0,
                usual_interval_secs: 0.5,
                last_trade: now(),
            }],
            ..Readings::default()
        };
        let report = evaluate(readings, now());
        let kinds: Vec<AlarmKind> = report.raised.iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            vec![
                AlarmKind::QuietProduct,
                AlarmKind::ClockDrift,
                AlarmKind::Database,
                AlarmKind::Nats
            ]
        );
        assert!(report.raised[0].detail.contains("BTC-USD"));
        assert!(report.raised[1].detail.contains("1500 ms behind"));
        let fine = Readings {
            clock: Some(clock(900)),
            ..Readings::default()
        };
        assert!(evaluate(fine, now()).raised.is_empty());
    }
}
