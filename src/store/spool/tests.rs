//! The file spool's tests: round trips, merging, the cap, unreadable lines and files, and
//! removal of only the file that was loaded.

use chrono::DateTime;
use rust_decimal::Decimal;

use super::*;
use crate::model::{Candle, TradeId};

/// A one-minute row of `product`, `minute`s after a fixed start, of `count` trades (the
/// JetStream spool's tests use it too).
pub(crate) fn update(product: &str, minute: i64, count: u64) -> CandleUpdate {
    let start = DateTime::from_timestamp(1_790_000_040 + 60 * minute, 0).expect("time");
    CandleUpdate {
        candle: Candle {
            product_id: product.parse().expect("an id"),
            granularity: Granularity::OneMinute,
            start,
            open: Decimal::ONE,
            high: Decimal::TWO,
            low: Decimal::ONE,
            close: Decimal::TWO,
            volume: Decimal::from(count),
            buy_volume: None,
            trade_count: Some(count),
        },
        complete: false,
        revision: 0,
        counted_trades: count,
        last_trade_id: TradeId(count),
        last_trade_time: start,
        last_received: start,
    }
}

fn sorted(mut rows: Vec<CandleUpdate>) -> Vec<(i64, u64)> {
    let mut out: Vec<(i64, u64)> = rows
        .drain(..)
        .map(|u| (u.candle.start.timestamp(), u.counted_trades))
        .collect();
    out.sort_unstable();
    out
}

#[test]
fn saves_merge_keep_the_newest_and_survive_a_reload() {
    let dir = tempfile::tempdir().expect("dir");
    let spool = Spool::in_dir(dir.path());
    assert!(spool.load().expect("no file").rows.is_empty());
    spool
        .save(vec![update("BTC-USD", 0, 3), update("BTC-USD", 1, 1)])
        .expect("save");
    let saved = spool
        .save(vec![update("BTC-USD", 0, 2), update("BTC-USD", 1, 5)])
        .expect("save");
    assert_eq!(saved.rows, 2);
    // Another process (the next start) reads it.
    let loaded = Spool::in_dir(dir.path()).load().expect("load");
    assert_eq!(loaded.lost, 0);
    let minute0 = 1_790_000_040;
    assert_eq!(sorted(loaded.rows), vec![(minute0, 3), (minute0 + 60, 5)]);
    assert!(!dir.path().join("writer-spool.jsonl.tmp").exists());
}

#[test]
fn a_corrupt_line_costs_that_line_only() {
    let dir = tempfile::tempdir().expect("dir");
    let spool = Spool::in_dir(dir.path());
    spool
        .save(vec![update("BTC-USD", 0, 1), update("ETH-USD", 0, 1)])
        .expect("save");
    let text = std::fs::read_to_string(spool.path()).expect("read");
    let mut lines: Vec<&str> = text.lines().collect();
    let cut = &lines[1][..lines[1].len() / 2].to_owned();
    lines[1] = cut;
    lines.push("\u{0}\r\u{1b}[31m not json");
    std::fs::write(spool.path(), lines.join("\n") + "\n").expect("write");
    let loaded = spool.load().expect("load");
    assert_eq!(loaded.lost, 2);
    assert_eq!(loaded.rows.len(), 1);
}

#[test]
fn removal_only_removes_the_file_that_was_loaded() {
    let dir = tempfile::tempdir().expect("dir");
    let spool = Spool::in_dir(dir.path());
    spool.save(vec![update("BTC-USD", 0, 1)]).expect("save");
    let loaded = spool.load().expect("load");
    // Another process on the same DATA_DIR saves meanwhile.
    Spool::in_dir(dir.path())
        .save(vec![update("BTC-USD", 1, 1)])
        .expect("save");
    assert!(!spool.remove_if_unchanged(loaded.stamp).expect("rm"));
    assert_eq!(spool.load().expect("load").rows.len(), 2);
    // A file of the same length but other bytes is another file.
    let loaded = spool.load().expect("load");
    let text = std::fs::read_to_string(spool.path()).expect("read");
    std::fs::write(spool.path(), text.replace("BTC-USD", "ETH-USD")).expect("write");
    assert!(!spool.remove_if_unchanged(loaded.stamp).expect("rm"));
    assert!(spool.path().exists());
    let loaded = spool.load().expect("load");
    assert!(spool.remove_if_unchanged(loaded.stamp).expect("rm"));
    assert!(!spool.path().exists());
    assert!(!spool.remove_if_unchanged(loaded.stamp).expect("rm"));
}

#[test]
fn concurrent_saves_of_several_processes_lose_no_row() {
    let dir = tempfile::tempdir().expect("dir");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            // Each its own `Spool`, as separate processes have: only the file lock is shared.
            let spool = Spool::in_dir(dir.path());
            std::thread::spawn(move || {
                for round in 0..10 {
                    let product = format!("P{t}-USD");
                    spool.save(vec![update(&product, round, 1)]).expect("save");
                }
            })
        })
        .collect();
    // A loader and remover racing with them never removes rows it did not load.
    let racer = {
        let spool = Spool::in_dir(dir.path());
        std::thread::spawn(move || {
            let mut seen = 0usize;
            for _ in 0..50 {
                let loaded = spool.load().expect("load");
                if spool.remove_if_unchanged(loaded.stamp).expect("rm") {
                    seen += loaded.rows.len();
                }
            }
            seen
        })
    };
    for thread in threads {
        thread.join().expect("join");
    }
    let removed = racer.join().expect("join");
    let left = Spool::in_dir(dir.path()).load().expect("load").rows.len();
    assert_eq!(
        removed + left,
        80,
        "{removed} removed after loading, {left} left"
    );
}

#[test]
fn an_unreadable_spool_is_set_aside_and_the_new_rows_written() {
    let dir = tempfile::tempdir().expect("dir");
    let spool = Spool::in_dir(dir.path());
    // A directory where the file should be: opening works, reading fails (EISDIR), as a
    // file that gives EIO would.
    std::fs::create_dir(spool.path()).expect("mkdir");
    assert!(spool.load().is_err());
    let saved = spool
        .save(vec![update("BTC-USD", 0, 1), update("BTC-USD", 1, 1)])
        .expect("the save goes on");
    assert_eq!((saved.rows, saved.kept), (2, 2));
    assert_eq!(spool.load().expect("load").rows.len(), 2);
    let aside: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("writer-spool.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
}

#[test]
fn kept_counts_the_rows_given_at_this_stop_only() {
    let dir = tempfile::tempdir().expect("dir");
    let one = serde_json::to_string(&update("BTC-USD", 0, 1))
        .expect("json")
        .len() as u64;
    let spool = Spool::in_dir(dir.path()).with_max_bytes(40 + 6 * (one + 1));
    // An earlier run kept 3 old buckets.
    let saved = spool
        .save((0..3).map(|m| update("BTC-USD", m, 1)).collect())
        .expect("save");
    assert_eq!((saved.rows, saved.kept), (3, 3));
    // This stop gives 2: the file holds 5, 2 of them this stop's.
    let saved = spool
        .save((10..12).map(|m| update("BTC-USD", m, 1)).collect())
        .expect("save");
    assert_eq!((saved.rows, saved.kept, saved.dropped), (5, 2, 0));
    // This stop gives 4 older than all: the cap (6) leaves out the 2 oldest of them.
    let saved = spool
        .save((-6..-2).map(|m| update("BTC-USD", m, 1)).collect())
        .expect("save");
    assert_eq!((saved.rows, saved.kept, saved.dropped), (6, 1, 3));
}

#[test]
fn the_cap_leaves_out_the_oldest_buckets_and_an_unknown_version_is_set_aside() {
    let dir = tempfile::tempdir().expect("dir");
    let one = serde_json::to_string(&update("BTC-USD", 0, 1))
        .expect("json")
        .len() as u64;
    let spool = Spool::in_dir(dir.path()).with_max_bytes(40 + 3 * (one + 1));
    let saved = spool
        .save((0..10).map(|m| update("BTC-USD", m, 1)).collect())
        .expect("save");
    assert_eq!((saved.rows, saved.dropped), (3, 7));
    let kept = sorted(spool.load().expect("load").rows);
    assert_eq!(kept.first().map(|k| k.0), Some(1_790_000_040 + 60 * 7));
    std::fs::write(spool.path(), "{\"spot_canvas_spool\":9}\n{}\n").expect("write");
    assert!(spool.load().expect("load").rows.is_empty());
    assert!(!spool.path().exists());
    assert!(dir.path().join("writer-spool.v9.jsonl").exists());
}
