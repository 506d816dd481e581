//! A lane: a thread of its own running a single-threaded async runtime, for stages whose
//! latency must not wait behind the rest of the service's tasks. The ingest path (the feed,
//! the engine and the fan-out into the live state) runs in one: a tick's burst of frames is
//! turned into candles and queued for the clients as it arrives, while the writes of a
//! thousand stream clients run on the main runtime's workers instead of ahead of it in their
//! queues.
//!
//! In: stages spawned on its [`Lane::handle`]. Out: their tasks, run until the lane is
//! dropped (it then stops its runtime, which drops whatever is still spawned on it). The
//! service holds its lane until its stop has awaited the stages; on a forced stop, what
//! they still held goes with them, as it would on the main runtime.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The lanes running now, by number: their tasks count in the process's figures.
static RUNNING: Mutex<Vec<(u64, Handle)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Tasks alive on every running lane.
pub fn alive_tasks() -> usize {
    running()
        .iter()
        .map(|(_, handle)| handle.metrics().num_alive_tasks())
        .sum()
}

fn running() -> std::sync::MutexGuard<'static, Vec<(u64, Handle)>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// A runtime on its own thread.
#[derive(Debug)]
pub struct Lane {
    number: u64,
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Lane {
    /// Starts the thread `name` and its runtime.
    pub fn start(name: &str) -> std::io::Result<Lane> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Runs the spawned tasks until the lane is dropped (or its sender is gone).
                let _ = runtime.block_on(stopped);
                runtime.shutdown_background();
            })?;
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        running().push((number, handle.clone()));
        Ok(Lane {
            number,
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the lane's stages are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        running().retain(|(number, _)| *number != self.number);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Not joined: a drop on an async worker must not block it. The thread ends as soon as
        // its runtime sees the stop.
        drop(self.thread.take());
    }
}
