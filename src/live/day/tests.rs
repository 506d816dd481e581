use super::*;

fn dec(text: &str) -> Decimal {
    text.parse().expect("decimal literal")
}

fn minute(version: u8, open: &str, close: &str, volume: &str) -> Minute {
    let mut bytes = [0u8; Version::BYTES];
    bytes[Version::BYTES - 1] = version;
    Minute {
        version: bytes,
        open: dec(open),
        close: dec(close),
        volume: dec(volume),
    }
}

const NOW: i64 = 1_767_225_630; // 2026-01-01T00:00:30Z

#[test]
fn a_product_with_no_minute_left_is_forgotten() {
    let day = DayStats::new();
    let start = NOW.div_euclid(60) * 60;
    let (a, b) = (
        crate::model::ProductId::from_static("A-B"),
        crate::model::ProductId::from_static("C-D"),
    );
    assert!(day.record_minute(&a, start - 120, minute(1, "1", "2", "1"), NOW));
    assert!(day.record_minute(&b, start, minute(1, "1", "2", "1"), NOW));
    assert_eq!(day.forget_empty(NOW), 0);
    // A day and two minutes later, A's minute has left the window; B's is still in.
    let later = NOW + WINDOW_SECS - 60;
    assert_eq!(day.forget_empty(later), 1);
    assert_eq!(day.products(), 1);
    assert!(day.summary(&b, later).is_some());
}

#[test]
fn change_and_exact_volume_over_the_window() {
    let day = DayStats::new();
    let start = NOW - 30;
    assert!(day.record_minute(
        &crate::model::ProductId::from_static("BTC-USD"),
        start - 120,
        minute(1, "100", "101", "0.1"),
        NOW
    ));
    assert!(day.record_minute(
        &crate::model::ProductId::from_static("BTC-USD"),
        start - 60,
        minute(1, "101", "99", "0.2"),
        NOW
    ));
    assert!(day.record_minute(
        &crate::model::ProductId::from_static("BTC-USD"),
        start,
        minute(1, "99", "110", "0.0000000001"),
        NOW
    ));
    let s = day.summary("BTC-USD", NOW).expect("summary");
    assert_eq!(s.open, dec("100"));
    assert_eq!(s.last, dec("110"));
    assert_eq!(s.change, Some(dec("10")));
    assert_eq!(s.volume, Some(dec("0.3000000001")));
    assert_eq!(s.change_percent(2), Some(dec("10.00")));
    assert_eq!(s.minutes, 3);
    assert_eq!(s.since, start - 120);
    assert!(day.summary("ETH-USD", NOW).is_none());
}

#[test]
fn revisions_replace_and_stale_copies_change_nothing() {
    let day = DayStats::new();
    let start = NOW - 30;
    assert!(day.record_minute(
        &crate::model::ProductId::from_static("A-B"),
        start,
        minute(2, "1", "2", "5"),
        NOW
    ));
    assert!(!day.record_minute(
        &crate::model::ProductId::from_static("A-B"),
        start,
        minute(1, "1", "9", "50"),
        NOW
    ));
    assert!(!day.record_minute(
        &crate::model::ProductId::from_static("A-B"),
        start,
        minute(2, "1", "9", "50"),
        NOW
    ));
    assert!(day.record_minute(
        &crate::model::ProductId::from_static("A-B"),
        start,
        minute(3, "1", "3", "7"),
        NOW
    ));
    let s = day.summary("A-B", NOW).expect("summary");
    assert_eq!(s.volume, Some(dec("7")));
    assert_eq!(s.last, dec("3"));
}

#[test]
fn minutes_leave_the_window_after_a_day() {
    let day = DayStats::new();
    let start = NOW - 30;
    assert!(day.record_minute(
        &crate::model::ProductId::from_static("A-B"),
        start - 600,
        minute(1, "10", "11", "1"),
        NOW
    ));
    assert!(day.record_minute(
        &crate::model::ProductId::from_static("A-B"),
        start,
        minute(1, "11", "12", "2"),
        NOW
    ));
    // Outside the window from the start: ignored.
    assert!(!day.record_minute(
        &crate::model::ProductId::from_static("A-B"),
        start - WINDOW_SECS,
        minute(1, "1", "1", "1"),
        NOW
    ));
    // Far in the future: ignored.
    assert!(!day.record_minute(
        &crate::model::ProductId::from_static("A-B"),
        NOW + 3600,
        minute(1, "1", "1", "1"),
        NOW
    ));
    let later = NOW + WINDOW_SECS - 300;
    let s = day.summary("A-B", later).expect("summary");
    assert_eq!(s.open, dec("11"));
    assert_eq!(s.volume, Some(dec("2")));
    assert!(day.summary("A-B", NOW + WINDOW_SECS + 60).is_none());
}

#[test]
fn an_overflowing_sum_is_unknown_until_it_leaves_the_window() {
    let day = DayStats::new();
    let start = NOW - 30;
    let max = Decimal::MAX.to_string();
    assert!(day.record_minute(
        &crate::model::ProductId::from_static("A-B"),
        start - 60,
        minute(1, "1", "1", &max),
        NOW
    ));
    assert!(day.record_minute(
        &crate::model::ProductId::from_static("A-B"),
        start,
        minute(1, "1", "1", &max),
        NOW
    ));
    let s = day.summary("A-B", NOW).expect("summary");
    assert_eq!(s.volume, None);
    // A minute later the first bucket has left a window that ends a day after it.
    let s = day
        .summary("A-B", start - 60 + WINDOW_SECS + 30)
        .expect("summary");
    assert_eq!(s.volume, Some(Decimal::MAX));
    assert_eq!(percent(Decimal::ZERO, Decimal::ONE, 2), None);
    assert_eq!(
        percent(dec("0.0000000000000000000000000001"), Decimal::MAX, 2),
        None
    );
}
