//! Exact values of Coinbase's frames: decimals that never round, RFC 3339 times (with a fast
//! path for Coinbase's UTC form) and Unix-second strings.
//!
//! In: one field's text. Out: the value, or a [`FrameError`] naming the field and the text.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::FrameError;

/// Parses a decimal string exactly: a value that would need rounding to fit is an error,
/// never silently rounded.
pub fn parse_decimal(field: &'static str, value: &str) -> Result<Decimal, FrameError> {
    let bad = || FrameError::BadDecimal {
        field,
        value: value.to_owned(),
    };
    // Coinbase writes plain decimals: digits, at most one point between digits, an optional
    // minus. `from_str_exact` alone would also take `+5`, `1_000` and `.5`.
    let digits = value.strip_prefix('-').unwrap_or(value);
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (digits, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
        return Err(bad());
    }
    Decimal::from_str_exact(value).map_err(|_| bad())
}

pub(super) fn parse_positive_decimal(
    field: &'static str,
    value: &str,
) -> Result<Decimal, FrameError> {
    let d = parse_decimal(field, value)?;
    if d.is_sign_negative() || d.is_zero() {
        return Err(FrameError::BadValue {
            field,
            value: value.to_owned(),
        });
    }
    Ok(d)
}

/// Parses an RFC 3339 time such as `2026-09-30T02:39:59.4104Z`. Coinbase's UTC form takes a
/// fast path; anything else (offsets, leap seconds, lower case) goes through chrono.
pub fn parse_time(field: &'static str, value: &str) -> Result<DateTime<Utc>, FrameError> {
    if let Some(time) = parse_utc_fast(value.as_bytes()) {
        return Ok(time);
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| FrameError::BadTime {
            field,
            value: value.to_owned(),
        })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` with 1 to 9 fraction digits; `None` for anything else.
fn parse_utc_fast(b: &[u8]) -> Option<DateTime<Utc>> {
    fn digits(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    }
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])? as i32;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let rest = &b[19..];
    let nanos = match rest {
        [b'Z'] => 0,
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            digits(fraction)? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(year, month, day)?;
    let time = chrono::NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(date.and_time(time).and_utc())
}

/// Parses a string of Unix seconds such as a candle's `start`.
pub fn parse_unix_seconds(field: &'static str, value: &str) -> Result<DateTime<Utc>, FrameError> {
    value
        .parse::<i64>()
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .ok_or_else(|| FrameError::BadTime {
            field,
            value: value.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_plain_digits_only() {
        for good in [
            "0",
            "42000.5",
            "0.00000001",
            "-1.5",
            "79228162514264337593543950335",
        ] {
            assert!(parse_decimal("price", good).is_ok(), "{good}");
        }
        for bad in [
            "", "+5", "1_000", ".5", "5.", "1e5", "1.2.3", "- 1", "0x10", " 1", "1 ", "--1", "NaN",
        ] {
            assert!(parse_decimal("price", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_fast_time_path_agrees_with_chrono() {
        for text in [
            "2026-09-30T02:39:59.4104Z",
            "2026-09-30T02:39:59Z",
            "2026-09-30T02:39:53.788655130Z",
            "2024-02-29T23:59:59.999999999Z",
            "2000-01-01T00:00:00.1Z",
        ] {
            let chrono = DateTime::parse_from_rfc3339(text)
                .expect("valid")
                .with_timezone(&Utc);
            assert_eq!(parse_utc_fast(text.as_bytes()), Some(chrono), "{text}");
        }
        for slow in [
            "2026-09-30T02:39:59+00:00",
            "2026-09-30t02:39:59z",
            "2026-12-31T23:59:60Z",
            "2026-09-30T02:39:59.1234567890Z",
        ] {
            assert_eq!(parse_utc_fast(slow.as_bytes()), None, "{slow}");
        }
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-09-30T24:00:00Z",
        ] {
            assert!(parse_time("time", bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_time("time", "2026-09-30T04:39:59+02:00").expect("offset"),
            parse_time("time", "2026-09-30T02:39:59Z").expect("utc")
        );
    }
}
