//! Coinbase's per-address limits as the simulator enforces them: at most 8 connects and 8
//! client messages per second from one IP, summed over its connections.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connects and client messages allowed per second per address.
pub const PER_SECOND: usize = 8;

/// Sliding one-second windows of events per address.
#[derive(Debug, Default)]
pub struct RateLimits {
    connects: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    messages: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl RateLimits {
    /// Records a connect from `ip`; false when it exceeds the limit.
    pub fn allow_connect(&self, ip: IpAddr) -> bool {
        allow(&self.connects, ip, Instant::now())
    }

    /// Records a client message from `ip`; false when it exceeds the limit.
    pub fn allow_message(&self, ip: IpAddr) -> bool {
        allow(&self.messages, ip, Instant::now())
    }
}

fn allow(windows: &Mutex<HashMap<IpAddr, VecDeque<Instant>>>, ip: IpAddr, now: Instant) -> bool {
    let mut windows = windows.lock().unwrap_or_else(|e| e.into_inner());
    let window = windows.entry(ip).or_default();
    while window
        .front()
        .is_some_and(|&t| now.duration_since(t) >= Duration::from_secs(1))
    {
        window.pop_front();
    }
    // Refused events count too, as a server that sees them would.
    window.push_back(now);
    window.len() <= PER_SECOND
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ninth_event_within_a_second_is_refused_and_the_window_slides() {
        let limits = Mutex::new(HashMap::new());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let t0 = Instant::now();
        for i in 0..PER_SECOND {
            assert!(
                allow(&limits, ip, t0 + Duration::from_millis(i as u64)),
                "event {i}"
            );
        }
        assert!(!allow(&limits, ip, t0 + Duration::from_millis(100)));
        let other: IpAddr = [10, 0, 0, 1].into();
        assert!(allow(&limits, other, t0), "limits are per address");
        assert!(allow(&limits, ip, t0 + Duration::from_millis(1_200)));
    }
}
