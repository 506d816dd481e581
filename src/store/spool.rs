//! The writer's spool: candle rows it could not write by the stop, kept in a file under
//! `DATA_DIR` and written after the next start.
//!
//! In: rows from the writer at its stop ([`Spool::save`]). Out: the same rows at the next start
//! ([`Spool::load`]); the file is removed once they are written ([`Spool::remove_if_unchanged`]).
//! Format, version 1: JSON lines; the first line is the header `{"spot_canvas_spool":1}`, each
//! other line one [`CandleUpdate`] as serde writes it. A save merges with what the file already
//! holds (newest version of each candle kept), writes a temporary file, syncs it, renames it over
//! the spool and syncs the directory: a crash leaves the old spool or the new, never half of one.
//! The file is capped at [`MAX_BYTES`]: beyond it the oldest buckets are dropped and counted. A
//! line that cannot be read costs that line (counted, logged escaped), not the file; a header of
//! an unknown version sets the file aside (renamed, never read or removed). Replays are
//! idempotent: the upsert only takes a higher version.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::refusal::escaped;
use crate::model::{CandleUpdate, Granularity};

/// The spool's file name under `DATA_DIR`.
pub const FILE_NAME: &str = "writer-spool.jsonl";
/// The format this build writes and reads.
const VERSION: u32 = 1;
/// Largest spool written (about 100,000 rows); a larger file is read only this far.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The first line of a spool file.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    spot_canvas_spool: u32,
}

/// The spool of one `DATA_DIR`. Clones share the file and its lock.
#[derive(Debug, Clone)]
pub struct Spool {
    path: PathBuf,
    max_bytes: u64,
    /// Counts the saves of this process: a load's rows may be removed only while no save came
    /// after it. The lock also keeps a save and a removal apart.
    generation: Arc<Mutex<u64>>,
}

/// What [`Spool::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The rows, each candle once (its newest version).
    pub rows: Vec<CandleUpdate>,
    /// Lines that could not be read (each one lost).
    pub lost: u64,
    /// The spool's generation when it was read, for [`Spool::remove_if_unchanged`].
    pub generation: u64,
}

/// What [`Spool::save`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// Rows in the file now (the ones given and the ones it held before).
    pub rows: u64,
    /// Rows left out for the size cap.
    pub dropped: u64,
    /// Lines of the earlier file that could not be read (lost).
    pub lost: u64,
}

impl Spool {
    /// The spool file in `dir` (created at the first save).
    pub fn in_dir(dir: &Path) -> Spool {
        Spool {
            path: dir.join(FILE_NAME),
            max_bytes: MAX_BYTES,
            generation: Arc::new(Mutex::new(0)),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        // A panic while holding it left no state to repair: the count goes on.
        self.generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The rows in the spool (none when there is no file).
    pub fn load(&self) -> std::io::Result<Loaded> {
        let generation = self.lock();
        let (rows, lost) = self.read()?;
        Ok(Loaded {
            rows: rows.into_values().collect(),
            lost,
            generation: *generation,
        })
    }

    /// Adds `rows` to the spool (merged with what it holds, newest version of each candle
    /// kept), atomically and durably.
    pub fn save(&self, rows: Vec<CandleUpdate>) -> std::io::Result<Saved> {
        let mut generation = self.lock();
        let (mut held, lost) = self.read()?;
        for update in rows {
            let (product, granularity, start) = update.candle_key();
            let key = (product.to_owned(), granularity, start);
            CandleUpdate::keep_newest(&mut held, key, update);
        }
        // Newest buckets first: at the cap, the oldest are the ones left out.
        let mut rows: Vec<CandleUpdate> = held.into_values().collect();
        rows.sort_by(|a, b| {
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
        for update in &rows {
            let line = serde_json::to_string(update).map_err(std::io::Error::other)?;
            if (text.len() + line.len() + 1) as u64 > self.max_bytes {
                saved.dropped += 1;
                continue;
            }
            text.push_str(&line);
            text.push('\n');
            saved.rows += 1;
        }
        if saved.dropped > 0 {
            tracing::error!(
                dropped = saved.dropped,
                max_bytes = self.max_bytes,
                "the writer's spool is full; the oldest rows are left out"
            );
        }
        self.write_atomically(text.as_bytes())?;
        *generation += 1;
        Ok(saved)
    }

    /// Removes the spool if no save came after the load of `generation` (its rows are then
    /// all written); returns whether it did. A spool saved since stays: it holds the loaded
    /// rows too, and writing them again changes nothing.
    pub fn remove_if_unchanged(&self, generation: u64) -> std::io::Result<bool> {
        let current = self.lock();
        if *current != generation {
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

    /// The rows of the file by candle, and the number of lines lost. Call with the lock held.
    #[allow(clippy::type_complexity)]
    fn read(&self) -> std::io::Result<(HashMap<(String, Granularity, i64), CandleUpdate>, u64)> {
        let mut rows = HashMap::new();
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((rows, 0)),
            Err(e) => return Err(e),
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > self.max_bytes {
            tracing::error!(
                size,
                max_bytes = self.max_bytes,
                path = %self.path.display(),
                "the writer's spool is larger than its cap; reading only the first part"
            );
        }
        let mut reader = BufReader::new(file.take(self.max_bytes));
        let mut lost = 0u64;
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            number += 1;
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if number == 1
                && let Ok(header) = serde_json::from_slice::<Header>(text)
            {
                if header.spot_canvas_spool == VERSION {
                    continue;
                }
                drop(reader);
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
                return Ok((HashMap::new(), 0));
            }
            match serde_json::from_slice::<CandleUpdate>(text) {
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
                            text = %escaped(&String::from_utf8_lossy(text), 120),
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
        Ok((rows, lost))
    }

    /// Writes `bytes` to a temporary file beside the spool, syncs it, renames it over the
    /// spool and syncs the directory.
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
mod tests {
    use chrono::DateTime;
    use rust_decimal::Decimal;

    use super::*;
    use crate::model::{Candle, TradeId};

    fn update(product: &str, minute: i64, count: u64) -> CandleUpdate {
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
    fn removal_waits_for_the_saves_that_came_after_the_load() {
        let dir = tempfile::tempdir().expect("dir");
        let spool = Spool::in_dir(dir.path());
        spool.save(vec![update("BTC-USD", 0, 1)]).expect("save");
        let loaded = spool.load().expect("load");
        spool.save(vec![update("BTC-USD", 1, 1)]).expect("save");
        assert!(!spool.remove_if_unchanged(loaded.generation).expect("rm"));
        assert_eq!(spool.load().expect("load").rows.len(), 2);
        let loaded = spool.load().expect("load");
        assert!(spool.remove_if_unchanged(loaded.generation).expect("rm"));
        assert!(!spool.path().exists());
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
