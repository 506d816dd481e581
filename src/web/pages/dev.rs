//! Development reload: open pages reload when the server restarts or an asset is rebuilt.
//!
//! In: the asset directory, polled for changes (`DEV_RELOAD=true`, set by `task live`). Out: a
//! generation number that moves on every change, which the page streams watch, and the build
//! id of this process, which pages put in their stream URL. The signal rides on each page's one
//! SSE connection: a stream whose page came from another build (the server restarted after a
//! Rust or template change) or that sees the generation move (CSS or JS rebuilt) sends a
//! script that reloads the page. Every open tab reloads, not only one.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the asset directory is looked at.
const POLL: Duration = Duration::from_millis(250);

/// The reload signal.
#[derive(Debug, Clone)]
pub struct DevReload {
    changes: watch::Receiver<u64>,
}

impl DevReload {
    /// Takes the directory's fingerprint, then polls it until `stop`.
    pub async fn start(dir: PathBuf, stop: CancellationToken) -> DevReload {
        let (tx, rx) = watch::channel(0u64);
        let mut seen = fingerprint(&dir).await;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = fingerprint(&dir).await;
                if now != seen {
                    seen = now;
                    tracing::info!(dir = %dir.display(), "assets changed: reloading open pages");
                    tx.send_modify(|g| *g += 1);
                }
            }
        });
        DevReload { changes: rx }
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        let mut rx = self.changes.clone();
        rx.mark_unchanged();
        rx
    }
}

/// Names, sizes and modification times of the directory's files.
async fn fingerprint(dir: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return 0;
    };
    let mut seen = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        if let Ok(meta) = entry.metadata().await {
            seen.push((entry.file_name(), meta.len(), meta.modified().ok()));
        }
    }
    seen.sort();
    seen.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rebuilt_asset_moves_the_generation() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("app.css"), "a{}").expect("write");
        let stop = CancellationToken::new();
        let dev = DevReload::start(dir.path().to_owned(), stop.clone()).await;
        let mut rx = dev.subscribe();
        std::fs::write(dir.path().join("app.css"), "a{color:red}").expect("write");
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("a change within 10 s")
            .expect("poller alive");
        assert_eq!(*rx.borrow(), 1);
        stop.cancel();
    }
}
