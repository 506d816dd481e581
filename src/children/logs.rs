//! A child's log file: opened for appending, and what it wrote since an offset read back for a
//! start's error message.
//!
//! In: a log file's path (and an offset). Out: the file and its length, or the text appended
//! since, or its last lines.

use std::path::Path;

/// The bytes appended to a log file since `offset`, as text (for a start's error).
pub fn log_since(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _read = file.take(64 * 1024).read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The last `n` lines of `text`, joined with ` | ` (for an error message).
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Opens `path` for appending (created if missing) and returns it with its current length:
/// a child's output goes there, and what it wrote since is read from that offset.
pub fn append_log(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let offset = file.metadata()?.len();
    Ok((file, offset))
}
