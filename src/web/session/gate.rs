//! The caps on concurrent streams: overall and per client address.
//!
//! In: the client's IP address. Out: a [`Permit`] or a [`Refusal`]. An IPv4 address counts on
//! its own; an IPv6 address counts as its /64 (one host usually holds a whole /64, and could
//! otherwise open streams from as many addresses as it likes); an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`, a dual-stack socket's view of an IPv4 client) counts as its IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
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

/// The address a client's streams are counted under: IPv4 as is, IPv6 as its /64.
pub(crate) fn counted_address(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
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

    /// A place for a stream of `address` (counted as [`counted_address`] says).
    pub fn try_acquire(self: &Arc<Self>, address: IpAddr) -> Result<Permit, Refusal> {
        let address = counted_address(address);
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

    #[test]
    fn an_ipv6_64_counts_as_one_address_and_mapped_ipv4_as_its_ipv4() {
        let gate = StreamGate::new(100, 2);
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        let _a1 = gate.try_acquire(ip("2001:db8:1:2::1")).expect("first");
        let _a2 = gate
            .try_acquire(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
            .expect("second, same /64");
        assert_eq!(
            gate.try_acquire(ip("2001:db8:1:2:dead:beef::7"))
                .expect_err("a third address of the same /64"),
            Refusal::TooManyFromAddress { max: 2 }
        );
        let _b = gate
            .try_acquire(ip("2001:db8:1:3::1"))
            .expect("the next /64 is another address");
        // IPv4 stays per address, and an IPv4-mapped IPv6 address is that IPv4 address.
        let _c1 = gate.try_acquire(ip("192.0.2.1")).expect("v4");
        let _c2 = gate.try_acquire(ip("::ffff:192.0.2.1")).expect("mapped");
        assert_eq!(
            gate.try_acquire(ip("192.0.2.1"))
                .expect_err("third of 192.0.2.1"),
            Refusal::TooManyFromAddress { max: 2 }
        );
        let _d = gate
            .try_acquire(ip("192.0.2.2"))
            .expect("the neighbour counts apart");
        assert_eq!(gate.open(), 6);
        assert_eq!(counted_address(ip("2001:db8::1:2:3:4")), ip("2001:db8::"));
    }
}
