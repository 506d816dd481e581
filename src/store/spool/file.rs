//! The spool's file handling: the exclusive lock, the capped read, the stamp that tells the
//! loaded file from a later one, the atomic and durable write, and setting an unreadable file
//! aside.
//!
//! In: the spool's paths and bytes to write. Out: the file's bytes, its stamp, a lock guard;
//! a crash leaves the old spool or the new, never half of one.

use std::fs::File;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::path::Path;

use super::{Spool, Stamp};

/// The exclusive lock of a spool, released when dropped (the file is closed).
pub(super) struct Locked(#[allow(dead_code)] File);

impl Spool {
    /// Takes the spool's lock, waiting for another holder (this process or another). Blocking:
    /// call from a blocking thread.
    pub(super) fn lock(&self) -> std::io::Result<Locked> {
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

    /// The bytes of the spool, up to the cap.
    pub(super) fn bytes(&self) -> std::io::Result<Vec<u8>> {
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
    pub(super) fn stamp_now(&self) -> std::io::Result<Stamp> {
        Ok(stamp(&self.bytes()?))
    }

    /// Renames a spool that cannot be read out of the way, so that a save can go on.
    pub(super) fn set_aside_unreadable(&self, error: &std::io::Error) {
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

    /// Writes `bytes` to a temporary file beside the spool, syncs it, renames it over the
    /// spool and syncs the directory. Call with the lock held.
    pub(super) fn write_atomically(&self, bytes: &[u8]) -> std::io::Result<()> {
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
pub(super) fn stamp(bytes: &[u8]) -> Stamp {
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
pub(super) fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(dir)
    {
        let _synced = dir.sync_all();
    }
}
