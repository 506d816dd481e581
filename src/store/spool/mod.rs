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

mod file;
mod format;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::model::{CandleUpdate, Granularity};
use file::sync_dir;
use format::{Header, VERSION};

/// The spool's file name under `DATA_DIR`.
pub const FILE_NAME: &str = "writer-spool.jsonl";
/// The lock file beside it.
pub const LOCK_NAME: &str = "writer-spool.lock";
/// Largest spool written (about 100,000 rows); a larger file is read only this far.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

type Key = (String, Granularity, i64);

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
}
