//! Candle granularities: the eight bucket widths the service builds, their names in the
//! service's API, in Coinbase's REST API, and in short form.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One of the eight bucket widths. Ordered from finest to coarsest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Granularity {
    OneMinute,
    FiveMinutes,
    FifteenMinutes,
    ThirtyMinutes,
    OneHour,
    TwoHours,
    SixHours,
    OneDay,
}

/// A granularity name that is none of the accepted spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown granularity {0:?}; accepted: {ACCEPTED_GRANULARITIES}")]
pub struct UnknownGranularity(pub String);

/// Human-readable list of accepted spellings, for error messages.
pub const ACCEPTED_GRANULARITIES: &str = "ONE_MINUTE, FIVE_MINUTES, FIFTEEN_MINUTES, THIRTY_MINUTES, \
ONE_HOUR, TWO_HOURS, SIX_HOURS, ONE_DAY (Coinbase's singular forms such as FIVE_MINUTE, and \
1m, 5m, 15m, 30m, 1h, 2h, 6h, 1d)";

impl Granularity {
    /// All granularities, finest first.
    pub const ALL: [Granularity; 8] = [
        Granularity::OneMinute,
        Granularity::FiveMinutes,
        Granularity::FifteenMinutes,
        Granularity::ThirtyMinutes,
        Granularity::OneHour,
        Granularity::TwoHours,
        Granularity::SixHours,
        Granularity::OneDay,
    ];

    /// Bucket width in seconds.
    pub const fn seconds(self) -> i64 {
        match self {
            Granularity::OneMinute => 60,
            Granularity::FiveMinutes => 300,
            Granularity::FifteenMinutes => 900,
            Granularity::ThirtyMinutes => 1_800,
            Granularity::OneHour => 3_600,
            Granularity::TwoHours => 7_200,
            Granularity::SixHours => 21_600,
            Granularity::OneDay => 86_400,
        }
    }

    /// Position in [`Granularity::ALL`], handy for fixed-size per-granularity arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The service's own name (`FIVE_MINUTES`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Granularity::OneMinute => "ONE_MINUTE",
            Granularity::FiveMinutes => "FIVE_MINUTES",
            Granularity::FifteenMinutes => "FIFTEEN_MINUTES",
            Granularity::ThirtyMinutes => "THIRTY_MINUTES",
            Granularity::OneHour => "ONE_HOUR",
            Granularity::TwoHours => "TWO_HOURS",
            Granularity::SixHours => "SIX_HOURS",
            Granularity::OneDay => "ONE_DAY",
        }
    }

    /// Coinbase's REST name (singular: `FIVE_MINUTE`).
    pub const fn rest_name(self) -> &'static str {
        match self {
            Granularity::OneMinute => "ONE_MINUTE",
            Granularity::FiveMinutes => "FIVE_MINUTE",
            Granularity::FifteenMinutes => "FIFTEEN_MINUTE",
            Granularity::ThirtyMinutes => "THIRTY_MINUTE",
            Granularity::OneHour => "ONE_HOUR",
            Granularity::TwoHours => "TWO_HOUR",
            Granularity::SixHours => "SIX_HOUR",
            Granularity::OneDay => "ONE_DAY",
        }
    }

    /// Short name (`5m`).
    pub const fn short_name(self) -> &'static str {
        match self {
            Granularity::OneMinute => "1m",
            Granularity::FiveMinutes => "5m",
            Granularity::FifteenMinutes => "15m",
            Granularity::ThirtyMinutes => "30m",
            Granularity::OneHour => "1h",
            Granularity::TwoHours => "2h",
            Granularity::SixHours => "6h",
            Granularity::OneDay => "1d",
        }
    }

    /// Start (Unix seconds) of the bucket holding `unix_seconds`, aligned to the UTC epoch.
    /// Works for times before 1970 too (floor, not truncation).
    pub const fn bucket_start_secs(self, unix_seconds: i64) -> i64 {
        unix_seconds.div_euclid(self.seconds()) * self.seconds()
    }

    /// Start of the bucket that holds `time`: buckets are `[start, start + seconds)`.
    pub fn bucket_start(self, time: DateTime<Utc>) -> DateTime<Utc> {
        let start = self.bucket_start_secs(time.timestamp());
        DateTime::from_timestamp(start, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// Exclusive end of the bucket that starts at `start`.
    pub fn bucket_end(self, start: DateTime<Utc>) -> DateTime<Utc> {
        start + chrono::TimeDelta::seconds(self.seconds())
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Granularity {
    type Err = UnknownGranularity;

    /// Accepts the service's names, Coinbase's REST names and short names; the long names
    /// case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        for g in Granularity::ALL {
            if trimmed.eq_ignore_ascii_case(g.as_str())
                || trimmed.eq_ignore_ascii_case(g.rest_name())
                || trimmed == g.short_name()
            {
                return Ok(g);
            }
        }
        Err(UnknownGranularity(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_to_its_granularity() {
        for g in Granularity::ALL {
            assert_eq!(g.as_str().parse::<Granularity>(), Ok(g));
            assert_eq!(g.rest_name().parse::<Granularity>(), Ok(g));
            assert_eq!(g.short_name().parse::<Granularity>(), Ok(g));
            assert_eq!(
                g.as_str().to_lowercase().parse::<Granularity>(),
                Ok(g),
                "lower case {g}"
            );
        }
    }

    #[test]
    fn unknown_names_are_rejected_with_the_accepted_list() {
        for bad in ["", "FOUR_HOUR", "2m", "1M", "minute", "ONE_MINUTES_"] {
            let err = bad.parse::<Granularity>().expect_err(bad);
            assert!(err.to_string().contains("ONE_MINUTE"), "{err}");
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid time")
            .with_timezone(&Utc)
    }

    /// Bucket starts written out by hand, in `Granularity::ALL` order.
    fn check(time: &str, starts: [&str; 8]) {
        for (g, start) in Granularity::ALL.into_iter().zip(starts) {
            assert_eq!(g.bucket_start(t(time)), t(start), "{g} of {time}");
            let end = g.bucket_end(t(start));
            assert!(
                t(start) <= t(time) && t(time) < end,
                "{g}: {time} in [{start}, {end})"
            );
        }
    }

    #[test]
    fn buckets_within_an_hour_a_day_and_a_leap_day() {
        check(
            "2024-02-29T13:47:31.250Z",
            [
                "2024-02-29T13:47:00Z",
                "2024-02-29T13:45:00Z",
                "2024-02-29T13:45:00Z",
                "2024-02-29T13:30:00Z",
                "2024-02-29T13:00:00Z",
                "2024-02-29T12:00:00Z",
                "2024-02-29T12:00:00Z",
                "2024-02-29T00:00:00Z",
            ],
        );
    }

    #[test]
    fn the_last_instant_of_a_year_falls_in_buckets_that_all_end_at_new_year() {
        let time = "2025-12-31T23:59:59.999999999Z";
        check(
            time,
            [
                "2025-12-31T23:59:00Z",
                "2025-12-31T23:55:00Z",
                "2025-12-31T23:45:00Z",
                "2025-12-31T23:30:00Z",
                "2025-12-31T23:00:00Z",
                "2025-12-31T22:00:00Z",
                "2025-12-31T18:00:00Z",
                "2025-12-31T00:00:00Z",
            ],
        );
        for g in Granularity::ALL {
            assert_eq!(
                g.bucket_end(g.bucket_start(t(time))),
                t("2026-01-01T00:00:00Z"),
                "{g}"
            );
        }
    }

    #[test]
    fn a_trade_exactly_on_a_boundary_opens_the_new_bucket() {
        for boundary in [
            "2026-01-01T00:00:00Z",
            "2026-04-01T00:00:00Z",
            "2024-03-01T00:00:00Z",
            "2026-09-30T18:00:00Z",
        ] {
            for g in Granularity::ALL {
                if t(boundary).timestamp() % g.seconds() != 0 {
                    continue;
                }
                assert_eq!(
                    g.bucket_start(t(boundary)),
                    t(boundary),
                    "{g} at {boundary}"
                );
                let just_before = t(boundary) - chrono::TimeDelta::nanoseconds(1);
                assert_eq!(
                    g.bucket_end(g.bucket_start(just_before)),
                    t(boundary),
                    "{g} just before {boundary}"
                );
            }
        }
    }

    #[test]
    fn month_ends_and_hour_boundaries() {
        check(
            "2026-03-31T23:00:00Z",
            [
                "2026-03-31T23:00:00Z",
                "2026-03-31T23:00:00Z",
                "2026-03-31T23:00:00Z",
                "2026-03-31T23:00:00Z",
                "2026-03-31T23:00:00Z",
                "2026-03-31T22:00:00Z",
                "2026-03-31T18:00:00Z",
                "2026-03-31T00:00:00Z",
            ],
        );
        assert_eq!(
            Granularity::OneHour.bucket_end(t("2026-03-31T23:00:00Z")),
            t("2026-04-01T00:00:00Z")
        );
        check(
            "2026-02-28T05:59:59Z",
            [
                "2026-02-28T05:59:00Z",
                "2026-02-28T05:55:00Z",
                "2026-02-28T05:45:00Z",
                "2026-02-28T05:30:00Z",
                "2026-02-28T05:00:00Z",
                "2026-02-28T04:00:00Z",
                "2026-02-28T00:00:00Z",
                "2026-02-28T00:00:00Z",
            ],
        );
    }

    #[test]
    fn index_matches_position_in_all() {
        for (i, g) in Granularity::ALL.iter().enumerate() {
            assert_eq!(g.index(), i);
        }
    }

    #[test]
    fn serde_uses_the_service_names() {
        let json = serde_json::to_string(&Granularity::TwoHours).expect("serialize");
        assert_eq!(json, "\"TWO_HOURS\"");
        let back: Granularity = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, Granularity::TwoHours);
    }
}
