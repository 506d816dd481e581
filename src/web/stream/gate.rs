//! The caps on concurrent streams: overall and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The instance holds its maximum of streams (503).
    Full { max: usize },
    /// This address holds its maximum (429).
    TooManyFromAddress { max: usize },
}

/// Counts open streams.
#[derive(Debug)]
pub struct StreamGate {
    max_total: usize,
    max_per_address: usize,
    total: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// An open stream's place; given back on drop.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<StreamGate>,
    address: IpAddr,
}

impl StreamGate {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<StreamGate> {
        Arc::new(StreamGate {
            max_total,
            max_per_address,
            total: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
        })
    }

    /// Open streams.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub fn try_acquire(self: &Arc<Self>, address: IpAddr) -> Result<Permit, Refusal> {
        let mut per_address = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        let total = self.total.load(Ordering::Relaxed);
        if total >= self.max_total {
            return Err(Refusal::Full {
                max: self.max_total,
            });
        }
        let count = per_address.entry(address).or_insert(0);
        if *count >= self.max_per_address {
            return Err(Refusal::TooManyFromAddress {
                max: self.max_per_address,
            });
        }
        *count += 1;
        self.total.store(total + 1, Ordering::Relaxed);
        Ok(Permit {
            gate: self.clone(),
            address,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut per_address = self
            .gate
            .per_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                per_address.remove(&self.address);
            }
        }
        self.gate.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_permits_come_back() {
        let gate = StreamGate::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = gate.try_acquire(a).expect("first");
        let _a2 = gate.try_acquire(a).expect("second");
        assert_eq!(
            gate.try_acquire(a).expect_err("third from a"),
            Refusal::TooManyFromAddress { max: 2 }
        );
        let _b1 = gate.try_acquire(b).expect("b");
        assert_eq!(
            gate.try_acquire(b).expect_err("full"),
            Refusal::Full { max: 3 }
        );
        assert_eq!(gate.open(), 3);
        drop(a1);
        assert_eq!(gate.open(), 2);
        let _again = gate.try_acquire(a).expect("a's place came back");
    }
}
