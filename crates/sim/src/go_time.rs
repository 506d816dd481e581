//! Go's time texts, as production Coinbase writes them: `time.RFC3339Nano` in frames and trades,
//! `time.Time.String()` in heartbeats. The lowest module of the simulator: the markets (their
//! trade log) and the frames both use it.
//!
//! In: an instant (and, for heartbeats, the time since the start). Out: its text.

use chrono::{DateTime, TimeDelta, Timelike, Utc};

/// Go's `time.RFC3339Nano`: `2026-09-30T02:39:59.4104Z` (fraction trimmed, none if zero).
pub fn go_time(t: DateTime<Utc>) -> String {
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.nanosecond() % 1_000_000_000;
    if nanos == 0 {
        return format!("{base}Z");
    }
    let fraction = format!("{nanos:09}");
    format!("{base}.{}Z", fraction.trim_end_matches('0'))
}

/// Go's `time.Time.String()` with a monotonic reading:
/// `2026-09-30 02:37:15.057778606 +0000 UTC m=+21697.195984854`.
pub fn go_time_string(t: DateTime<Utc>, since_start: TimeDelta) -> String {
    let nanos = t.nanosecond() % 1_000_000_000;
    let mono = since_start.num_nanoseconds().unwrap_or(0).max(0);
    format!(
        "{}.{nanos:09} +0000 UTC m=+{}.{:09}",
        t.format("%Y-%m-%d %H:%M:%S"),
        mono / 1_000_000_000,
        mono % 1_000_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_trims_trailing_zeros_like_go() {
        let t = DateTime::parse_from_rfc3339("2026-09-30T02:39:59.410400Z")
            .expect("valid")
            .with_timezone(&Utc);
        assert_eq!(go_time(t), "2026-09-30T02:39:59.4104Z");
        let whole = DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
        assert_eq!(go_time(whole), "2023-11-14T22:13:20Z");
        let nanos = DateTime::parse_from_rfc3339("2026-09-30T02:39:53.788655130Z")
            .expect("valid")
            .with_timezone(&Utc);
        assert_eq!(go_time(nanos), "2026-09-30T02:39:53.78865513Z");
    }

    #[test]
    fn go_time_string_matches_production_heartbeats() {
        let t = DateTime::parse_from_rfc3339("2026-09-30T02:37:15.057778606Z")
            .expect("valid")
            .with_timezone(&Utc);
        let since = TimeDelta::nanoseconds(21_697_195_984_854);
        assert_eq!(
            go_time_string(t, since),
            "2026-09-30 02:37:15.057778606 +0000 UTC m=+21697.195984854"
        );
    }
}
