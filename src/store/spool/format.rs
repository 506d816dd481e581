//! The spool's file format, version 1: JSON lines, a header line then one [`CandleUpdate`]
//! per line.
//!
//! In: the spool file's bytes (read through [`file`](super::file)). Out: its rows by candle,
//! the lines lost and its stamp; a header of an unknown version sets the file aside.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::file::stamp;
use super::{Key, Spool, Stamp};
use crate::model::CandleUpdate;
use crate::store::refusal::escaped;

/// The format this build writes and reads.
pub(super) const VERSION: u32 = 1;

/// The first line of a spool file.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Header {
    pub(super) spot_canvas_spool: u32,
}

/// The file's rows by candle, the lines lost, and its stamp.
pub(super) struct Contents {
    pub(super) rows: HashMap<Key, CandleUpdate>,
    pub(super) lost: u64,
    pub(super) stamp: Option<Stamp>,
}

impl Spool {
    /// The rows of the file by candle, the number of lines lost, and its stamp. Call with the
    /// lock held.
    pub(super) fn read(&self) -> std::io::Result<Contents> {
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
}
