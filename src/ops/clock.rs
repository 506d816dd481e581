//! The clock check: this machine's clock against the exchange's server time.
//!
//! In: `GET {COINBASE_REST_URL}/time` every `CLOCK_CHECK_SECS` (each within
//! [`REQUEST_TIMEOUT`]). Out: the latest [`ClockReading`]: the offset of the local clock from
//! the exchange's at the middle of the round trip (positive: ours is ahead). Candle buckets,
//! the engine's lateness rules and the end-to-end latency all read the local clock, so a drift
//! past [`MAX_DRIFT_MS`] raises the `clock_drift` alarm. Each check asks twice on one
//! connection and keeps the shorter round trip (the first pays for DNS, TCP and TLS); one over
//! [`MAX_ROUND_TRIP`] cannot judge a drift that small and is discarded. A reading older than
//! three intervals is stale: the drift is then unknown, not judged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::coinbase::body::{TIME_MAX_BYTES, read_capped};

/// Longest wait for the exchange's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A drift larger than this (milliseconds, either way) raises the alarm.
pub const MAX_DRIFT_MS: i64 = 1_000;
/// Round trips longer than this are discarded (the offset's uncertainty is half of it).
pub const MAX_ROUND_TRIP: Duration = Duration::from_secs(1);

/// One comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClockReading {
    /// Local minus exchange time, in milliseconds.
    pub offset_ms: i64,
    pub round_trip_ms: u64,
    pub at: DateTime<Utc>,
}

/// What `/health` shows of the clock.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClockReport {
    pub last: Option<ClockReading>,
    /// Seconds between checks.
    pub interval_secs: u64,
    /// Why the last check failed, when it did.
    pub last_error: Option<String>,
    pub checks: u64,
    pub failures: u64,
}

/// The latest comparison, shared with the monitor and `/health`.
#[derive(Debug, Default)]
pub struct ClockState {
    report: Mutex<ClockReport>,
}

impl ClockReport {
    /// The last offset, unless it is older than three intervals (and a minute) at `now`.
    pub fn fresh_offset_ms(&self, now: DateTime<Utc>) -> Option<i64> {
        let reading = self.last.as_ref()?;
        let stale_after = self.interval_secs.saturating_mul(3).max(60);
        let age = (now - reading.at).num_seconds();
        (age <= i64::try_from(stale_after).unwrap_or(i64::MAX)).then_some(reading.offset_ms)
    }
}

impl ClockState {
    pub fn report(&self) -> ClockReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record(&self, outcome: Result<ClockReading, ClockError>) {
        let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
        report.checks += 1;
        match outcome {
            Ok(reading) => {
                report.last = Some(reading);
                report.last_error = None;
            }
            Err(e) => {
                report.failures += 1;
                report.last_error = Some(e.to_string());
            }
        }
    }
}

/// Why a clock reading failed (kept in the report as its text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("time request: the REST base URL is not a URL that takes a path")]
    NoPath,
    /// The request failed; the text carries no URL.
    #[error("time request failed: {0}")]
    Request(String),
    #[error("time request answered {0}")]
    Status(reqwest::StatusCode),
    #[error("time answer not read: {0}")]
    Body(String),
    #[error("time answer is not JSON: {0}")]
    NotJson(String),
    #[error("time answer has no integer epochMillis")]
    NoMillis,
    /// Before 2001 or after 2100.
    #[error("time answer's epochMillis {0} is not a plausible time")]
    Implausible(i64),
    #[error("round trip of {0} ms is too long to judge the clock")]
    SlowRoundTrip(u128),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

/// The clock check stage.
#[derive(Debug, Clone)]
pub struct ClockCheck {
    /// `{rest}/time`; `None` when the base URL takes no path (every check then fails, said).
    url: Option<reqwest::Url>,
    interval: Duration,
    http: reqwest::Client,
    state: Arc<ClockState>,
}

impl ClockCheck {
    /// Checks against `{rest_url}/time` every `interval`.
    pub fn new(rest_url: &str, interval: Duration) -> ClockCheck {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        let state = ClockState::default();
        state
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .interval_secs = interval.as_secs();
        ClockCheck {
            url: crate::coinbase::url::endpoint(rest_url, &["time"]).ok(),
            interval,
            http,
            state: Arc::new(state),
        }
    }

    pub fn state(&self) -> Arc<ClockState> {
        self.state.clone()
    }

    /// Compares the clocks now, then every interval, until `token`.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        loop {
            // Both requests within their timeouts, and the whole check too, whatever the
            // client was built with.
            let outcome = tokio::select! {
                () = token.cancelled() => return Ok(()),
                outcome = tokio::time::timeout(REQUEST_TIMEOUT * 2, self.check()) => {
                    outcome.unwrap_or_else(|_| Err(ClockError::NoAnswer(REQUEST_TIMEOUT * 2)))
                }
            };
            match &outcome {
                Ok(reading) if reading.offset_ms.abs() > MAX_DRIFT_MS => tracing::warn!(
                    offset_ms = reading.offset_ms,
                    round_trip_ms = reading.round_trip_ms,
                    "the local clock drifts from the exchange's"
                ),
                Ok(reading) => tracing::debug!(offset_ms = reading.offset_ms, "clock checked"),
                Err(e) => {
                    tracing::info!(error = %e, "cannot compare the clock with the exchange's")
                }
            }
            self.state.record(outcome);
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Two readings on one connection; the one with the shorter round trip.
    async fn check(&self) -> Result<ClockReading, ClockError> {
        let first = self.read_once().await;
        let second = self.read_once().await;
        match (first, second) {
            (Ok(a), Ok(b)) => Ok(if b.round_trip_ms <= a.round_trip_ms {
                b
            } else {
                a
            }),
            (Ok(one), Err(_)) | (Err(_), Ok(one)) => Ok(one),
            (Err(_), Err(e)) => Err(e),
        }
    }

    async fn read_once(&self) -> Result<ClockReading, ClockError> {
        let sent = Utc::now();
        let started = std::time::Instant::now();
        let url = self.url.clone().ok_or(ClockError::NoPath)?;
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| ClockError::Request(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ClockError::Status(status));
        }
        let body = read_capped(response, TIME_MAX_BYTES, "time")
            .await
            .map_err(|e| ClockError::Body(e.to_string()))?;
        let round_trip = started.elapsed();
        let server_ms = parse_time(&body)?;
        offset(sent, round_trip, server_ms)
    }
}

/// The server's time in Unix milliseconds from a `/time` answer (`epochMillis` as a string or a
/// number, as Coinbase sends it; `iso` is not read).
pub fn parse_time(body: &[u8]) -> Result<i64, ClockError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ClockError::NotJson(e.to_string()))?;
    let millis = match value.get("epochMillis") {
        Some(serde_json::Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        _ => None,
    }
    .ok_or(ClockError::NoMillis)?;
    // Before 2001 or after 2100: not a clock reading.
    if !(978_307_200_000..=4_102_444_800_000).contains(&millis) {
        return Err(ClockError::Implausible(millis));
    }
    Ok(millis)
}

/// The local clock's offset, taking the server's reading as made halfway through the round trip.
pub fn offset(
    sent: DateTime<Utc>,
    round_trip: Duration,
    server_ms: i64,
) -> Result<ClockReading, ClockError> {
    if round_trip > MAX_ROUND_TRIP {
        return Err(ClockError::SlowRoundTrip(round_trip.as_millis()));
    }
    let half = i64::try_from(round_trip.as_millis() / 2).unwrap_or(i64::MAX);
    let local_mid = sent.timestamp_millis().saturating_add(half);
    Ok(ClockReading {
        offset_ms: local_mid.saturating_sub(server_ms),
        round_trip_ms: u64::try_from(round_trip.as_millis()).unwrap_or(u64::MAX),
        at: sent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_answer_parses_as_coinbase_sends_it_and_nonsense_is_an_error() {
        let coinbase = br#"{"iso":"2026-12-01T02:00:00.123Z","epochSeconds":"1796090400","epochMillis":"1796090400123"}"#;
        assert_eq!(parse_time(coinbase), Ok(1_796_090_400_123));
        assert_eq!(
            parse_time(br#"{"epochMillis":1796090400123}"#),
            Ok(1_796_090_400_123)
        );
        for bad in [
            &b"not json"[..],
            br#"{"epochMillis":"soon"}"#,
            br#"{"epochMillis":"99999999999999999999999"}"#,
            br#"{"epochMillis":"-5"}"#,
            br#"{"epochMillis":1.5}"#,
            br#"{"iso":"2026-12-01T02:00:00Z"}"#,
            br#"[]"#,
        ] {
            assert!(parse_time(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_offset_is_taken_at_the_middle_of_the_round_trip() {
        let sent = DateTime::from_timestamp_millis(1_796_090_400_000).expect("a time");
        let reading = offset(sent, Duration::from_millis(200), 1_796_090_400_100).expect("judged");
        assert_eq!(reading.offset_ms, 0);
        let ahead = offset(sent, Duration::from_millis(20), 1_796_090_397_010).expect("judged");
        assert_eq!(ahead.offset_ms, 3_000, "ours is 3 s ahead");
        assert!(offset(sent, Duration::from_secs(3), 1_796_090_400_000).is_err());
    }

    #[test]
    fn an_old_reading_is_not_judged() {
        let at = DateTime::from_timestamp(1_796_090_400, 0).expect("a time");
        let report = ClockReport {
            last: Some(ClockReading {
                offset_ms: 5_000,
                round_trip_ms: 10,
                at,
            }),
            interval_secs: 60,
            ..ClockReport::default()
        };
        assert_eq!(
            report.fresh_offset_ms(at + chrono::Duration::seconds(179)),
            Some(5_000)
        );
        assert_eq!(
            report.fresh_offset_ms(at + chrono::Duration::seconds(181)),
            None
        );
    }
}
