//! The writer's file spool: candle rows it could not write by the stop, kept in a file under
//! `DATA_DIR` and written after the next start. The primary place with the embedded NATS (its
//! store lives in `DATA_DIR` too), the fallback for what JetStream did not take otherwise (see
//! [`stream_spool`](super::stream_spool)).
//!
//! In: rows from the writer at its stop ([`Spool::save`]). Out: the same rows at the next start
//! ([`Spool::load`]); the file is removed once they are written ([`Spool::remove_if_unchanged`]).
//! Format, version 1: JSON lines; the first line is the header `{"spot_canvas_spool":1}`, each
//! other line one [`CandleUpdate`] as serde writes it. A save merges with what the file already
//! holds (newest version of each candle kept), writes a temporary file, syncs it, renames it over
//! the spool and syncs the directory: a crash leaves the old spool or the new, never half of one.
//! Every read-merge-write and every removal holds an exclusive `flock` on
//! `writer-spool.lock` beside it, so processes sharing a `DATA_DIR` never lose each other's
//! rows; a removal only removes the very file that was loaded (same length and content hash).
//! A spool a save cannot read (`EACCES`, `EIO`, a directory in its place) is renamed aside
//! (`writer-spool.unreadable-<ms>.jsonl`) and the new rows are written anyway.
//! The file is capped at [`MAX_BYTES`]: beyond it the oldest buckets are dropped and counted. A
//! line that cannot be read costs that line (counted, logged escaped), not the file; a header of
//! an unknown version sets the file aside (renamed, never read or removed). Replays are
//! idempotent: the upsert only takes a higher version.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::refusal::escaped;
use crate::model::{CandleUpdate, Granularity};

/// The spool's file name under `DATA_DIR`.
pub const FILE_NAME: &str = "writer-spool.jsonl";
/// The lock file beside it.
pub const LOCK_NAME: &str = "writer-spool.lock";
/// The format this build writes and reads.
const VERSION: u32 = 1;
/// Largest spool written (about 100,000 rows); a larger file is read only this far.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

type Key = (String, Granularity, i64);

/// The first line of a spool file.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    spot_canvas_spool: u32,
}

/// The spool of one `DATA_DIR`.
#[derive(Debug, Clone)]
pub struct Spool {
    path: PathBuf,
    lock: PathBuf,
    max_bytes: u64,
}

/// What a spool file was when it was read: its length and a hash of its bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    hash: u64,
}

/// What [`Spool::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The rows, each candle once (its newest version).
    pub rows: Vec<CandleUpdate>,
    /// Lines that could not be read (each one lost).
    pub lost: u64,
    /// The file as it was read (`None`: there was none), for [`Spool::remove_if_unchanged`].
    pub stamp: Option<Stamp>,
}

/// What [`Spool::save`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// Rows in the file now (the ones given and the ones it held before).
    pub rows: u64,
    /// Of the candles given, how many are in the file now (the rest were left out for the cap).
    pub kept: u64,
    /// Rows left out for the size cap (given or held before).
    pub dropped: u64,
    /// Lines of the earlier file that could not be read (lost).
    pub lost: u64,
}

/// The file's rows by candle, the lines lost, and its stamp.
struct Contents {
    rows: HashMap<Key, CandleUpdate>,
    lost: u64,
    stamp: Option<Stamp>,
}

/// The exclusive lock of a spool, released when dropped (the file is closed).
struct Locked(#[allow(dead_code)] File);

impl Spool {
    /// The spool file in `dir` (created at the first save).
    pub fn in_dir(dir: &Path) -> Spool {
        Spool {
            path: dir.join(FILE_NAME),
            lock: dir.join(LOCK_NAME),
            max_bytes: MAX_BYTES,
        }
    }

    /// With another size cap (tests).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Spool {
        self.max_bytes = max_bytes;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the spool's lock, waiting for another holder (this process or another). Blocking:
    /// call from a blocking thread.
    fn lock(&self) -> std::io::Result<Locked> {
        if let Some(dir) = self.lock.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&self.lock)?
        };
        file.lock()?;
        Ok(Locked(file))
    }

    /// The rows in the spool (none when there is no file). Blocking.
    pub fn load(&self) -> std::io::Result<Loaded> {
        let _locked = self.lock()?;
        let contents = self.read()?;
        Ok(Loaded {
            rows: contents.rows.into_values().collect(),
            lost: contents.lost,
            stamp: contents.stamp,
        })
    }

    /// Adds `rows` to the spool (merged with what it holds, newest version of each candle
    /// kept), atomically and durably. Blocking.
    pub fn save(&self, rows: Vec<CandleUpdate>) -> std::io::Result<Saved> {
        let _locked = self.lock()?;
        let (mut held, lost) = match self.read() {
            Ok(contents) => (contents.rows, contents.lost),
            Err(e) => {
                self.set_aside_unreadable(&e);
                (HashMap::new(), 0)
            }
        };
        let mut given: HashSet<Key> = HashSet::with_capacity(rows.len());
        for update in rows {
            let (product, granularity, start) = update.candle_key();
            let key = (product.to_owned(), granularity, start);
            given.insert(key.clone());
            CandleUpdate::keep_newest(&mut held, key, update);
        }
        // Newest buckets first: at the cap, the oldest are the ones left out.
        let mut rows: Vec<(Key, CandleUpdate)> = held.into_iter().collect();
        rows.sort_by(|(_, a), (_, b)| {
            (b.candle.start, &b.candle.product_id).cmp(&(a.candle.start, &a.candle.product_id))
        });
        let mut text = serde_json::to_string(&Header {
            spot_canvas_spool: VERSION,
        })
        .map_err(std::io::Error::other)?;
        text.push('\n');
        let mut saved = Saved {
            lost,
            ..Saved::default()
        };
        for (key, update) in &rows {
            let line = serde_json::to_string(update).map_err(std::io::Error::other)?;
            if (text.len() + line.len() + 1) as u64 > self.max_bytes {
                saved.dropped += 1;
                continue;
            }
            text.push_str(&line);
            text.push('\n');
            saved.rows += 1;
            if given.contains(key) {
                saved.kept += 1;
            }
        }
        if saved.dropped > 0 {
            tracing::error!(
                dropped = saved.dropped,
                max_bytes = self.max_bytes,
                "the writer's spool is full; the oldest rows are left out"
            );
        }
        self.write_atomically(text.as_bytes())?;
        Ok(saved)
    }

    /// Removes the spool if it is still the file `loaded` read (its rows are then all
    /// written); returns whether it did. A spool saved since (by this process or another)
    /// stays: it holds the loaded rows too, and writing them again changes nothing. Blocking.
    pub fn remove_if_unchanged(&self, loaded: Option<Stamp>) -> std::io::Result<bool> {
        let _locked = self.lock()?;
        let Some(loaded) = loaded else {
            return Ok(false);
        };
        let current = match self.stamp_now() {
            Ok(stamp) => stamp,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if current != loaded {
            return Ok(false);
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        sync_dir(&self.path);
        Ok(true)
    }

    /// The bytes of the spool, up to the cap.
    fn bytes(&self) -> std::io::Result<Vec<u8>> {
        let file = File::open(&self.path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > self.max_bytes {
            tracing::error!(
                size,
                max_bytes = self.max_bytes,
                path = %self.path.display(),
                "the writer's spool is larger than its cap; reading only the first part"
            );
        }
        let mut bytes = Vec::with_capacity(size.min(self.max_bytes) as usize);
        file.take(self.max_bytes).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// The stamp of the file as it is now. Call with the lock held.
    fn stamp_now(&self) -> std::io::Result<Stamp> {
        Ok(stamp(&self.bytes()?))
    }

    /// Renames a spool that cannot be read out of the way, so that a save can go on.
    fn set_aside_unreadable(&self, error: &std::io::Error) {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let aside = self
            .path
            .with_extension(format!("unreadable-{millis}.jsonl"));
        match std::fs::rename(&self.path, &aside) {
            Ok(()) => tracing::error!(
                error = %error,
                path = %self.path.display(),
                aside = %aside.display(),
                "the writer's spool cannot be read; set aside, the new rows are written anyway"
            ),
            Err(e) => tracing::error!(
                error = %error,
                rename_error = %e,
                path = %self.path.display(),
                "the writer's spool cannot be read nor set aside; writing over it"
            ),
        }
    }

    /// The rows of the file by candle, the number of lines lost, and its stamp. Call with the
    /// lock held.
    fn read(&self) -> std::io::Result<Contents> {
        let mut rows = HashMap::new();
        let bytes = match self.bytes() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Contents {
                    rows,
                    lost: 0,
                    stamp: None,
                });
            }
            Err(e) => return Err(e),
        };
        let stamp = Some(stamp(&bytes));
        let mut lost = 0u64;
        for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let number = index as u64 + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if number == 1
                && let Ok(header) = serde_json::from_slice::<Header>(line)
            {
                if header.spot_canvas_spool == VERSION {
                    continue;
                }
                let aside = self
                    .path
                    .with_extension(format!("v{}.jsonl", header.spot_canvas_spool));
                tracing::error!(
                    version = header.spot_canvas_spool,
                    path = %self.path.display(),
                    aside = %aside.display(),
                    "the writer's spool has a format this build does not read; set aside"
                );
                std::fs::rename(&self.path, &aside)?;
                return Ok(Contents {
                    rows: HashMap::new(),
                    lost: 0,
                    stamp: None,
                });
            }
            match serde_json::from_slice::<CandleUpdate>(line) {
                Ok(update) => {
                    let (product, granularity, start) = update.candle_key();
                    let key = (product.to_owned(), granularity, start);
                    CandleUpdate::keep_newest(&mut rows, key, update);
                }
                Err(e) => {
                    lost += 1;
                    if lost <= 5 {
                        tracing::error!(
                            line = number,
                            error = %e,
                            text = %escaped(&String::from_utf8_lossy(line), 120),
                            "a line of the writer's spool cannot be read; it is lost"
                        );
                    }
                }
            }
        }
        if lost > 5 {
            tracing::error!(
                lost,
                "lines of the writer's spool that cannot be read, in all"
            );
        }
        Ok(Contents { rows, lost, stamp })
    }

    /// Writes `bytes` to a temporary file beside the spool, syncs it, renames it over the
    /// spool and syncs the directory. Call with the lock held.
    fn write_atomically(&self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = self.path.with_extension("jsonl.tmp");
        let written = (|| {
            let mut file = open_private(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _removed = std::fs::remove_file(&temporary);
            return Err(e);
        }
        std::fs::rename(&temporary, &self.path)?;
        sync_dir(&self.path);
        Ok(())
    }
}

/// The length and hash of a file's bytes.
fn stamp(bytes: &[u8]) -> Stamp {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(bytes);
    Stamp {
        len: bytes.len() as u64,
        hash: hasher.finish(),
    }
}

/// A new file (truncated if it exists) readable by the owner only.
fn open_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Syncs the directory of `path` so that a rename or removal in it survives a crash. Best
/// effort: some file systems refuse to sync a directory.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(dir)
    {
        let _synced = dir.sync_all();
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
}
