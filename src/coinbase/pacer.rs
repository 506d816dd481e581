//! Spacing of connects and client messages across all connections, under Coinbase's per-IP
//! limits. High-priority requests (a fresh connection's first subscribes, which face the
//! 5-second deadline) go ahead of low-priority ones (resubscribes).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

/// Which requests go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    High,
    Low,
}

/// Grants at most one request per `interval`.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next_slot: Mutex<Instant>,
    high_waiting: AtomicUsize,
}

struct HighWaiting<'a>(&'a AtomicUsize);

impl Drop for HighWaiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pacer {
    pub fn new(interval: Duration) -> Self {
        Pacer {
            interval,
            next_slot: Mutex::new(Instant::now()),
            high_waiting: AtomicUsize::new(0),
        }
    }

    /// Waits for a slot. High priority reserves the next free slot at once; low priority
    /// takes a slot only when one is free now and no high-priority request waits.
    pub async fn acquire(&self, priority: Priority) {
        let _high = (priority == Priority::High).then(|| {
            self.high_waiting.fetch_add(1, Ordering::AcqRel);
            HighWaiting(&self.high_waiting)
        });
        loop {
            // `Ok(slot)`: ours, sleep until it. `Err(t)`: look again at `t`.
            let decision = {
                let mut next = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                match priority {
                    Priority::High => {
                        let slot = (*next).max(now);
                        *next = slot + self.interval;
                        Ok(slot)
                    }
                    Priority::Low => {
                        let high_waiting = self.high_waiting.load(Ordering::Acquire) > 0;
                        if !high_waiting && *next <= now {
                            *next = now + self.interval;
                            Ok(now)
                        } else {
                            Err((*next).max(now + Duration::from_millis(5)))
                        }
                    }
                }
            };
            match decision {
                Ok(slot) => {
                    sleep_until(slot).await;
                    return;
                }
                Err(again) => sleep_until(again).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn grants_are_spaced_by_the_interval() {
        let pacer = Pacer::new(Duration::from_millis(150));
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..5 {
            pacer.acquire(Priority::Low).await;
            times.push(Instant::now() - start);
        }
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(150), "{times:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn high_priority_goes_ahead_of_waiting_low_priority() {
        let pacer = Arc::new(Pacer::new(Duration::from_millis(100)));
        pacer.acquire(Priority::Low).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (pacer, order) = (pacer.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                pacer.acquire(Priority::Low).await;
                order.lock().expect("lock").push(format!("low{i}"));
            }));
        }
        tokio::task::yield_now().await;
        let (p, o) = (pacer.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            p.acquire(Priority::High).await;
            o.lock().expect("lock").push("high".into());
        }));
        for t in tasks {
            t.await.expect("task");
        }
        let order = order.lock().expect("lock").clone();
        assert_eq!(order[0], "high", "{order:?}");
    }
}
