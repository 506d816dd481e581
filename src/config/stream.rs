//! The stream limits: how many SSE clients, how much each may ask and hold.

use std::time::Duration;

use super::ConfigError;
use super::lookup::{Lookup, boolean, number};

/// Limits of the SSE streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Concurrent streams of the instance.
    pub max_clients: usize,
    /// Concurrent streams of one client address.
    pub max_per_address: usize,
    /// Series one stream may name (a stream of every product is exempt).
    pub max_series: usize,
    /// Events a client's queue holds.
    pub queue: usize,
    /// How long a lagged client may go without reading before it is disconnected.
    pub stall: Duration,
    /// Keep-alive comment interval.
    pub keepalive: Duration,
    /// Client address from the last `X-Forwarded-For` entry.
    pub trust_forwarded_for: bool,
}

pub(super) fn parse(lookup: Lookup<'_>) -> Result<StreamConfig, ConfigError> {
    const MILLION: usize = 1_000_000;
    Ok(StreamConfig {
        max_clients: number(
            lookup,
            "STREAM_MAX_CLIENTS",
            1,
            MILLION,
            "an integer 1-1000000",
        )?,
        max_per_address: number(
            lookup,
            "STREAM_MAX_PER_ADDRESS",
            1,
            MILLION,
            "an integer 1-1000000",
        )?,
        max_series: number(
            lookup,
            "STREAM_MAX_SERIES",
            1,
            100_000,
            "an integer 1-100000",
        )?,
        queue: number(lookup, "STREAM_QUEUE", 1, MILLION, "an integer 1-1000000")?,
        stall: Duration::from_secs(number(
            lookup,
            "STREAM_STALL_SECS",
            1,
            3_600,
            "an integer 1-3600",
        )?),
        keepalive: Duration::from_secs(number(
            lookup,
            "STREAM_KEEPALIVE_SECS",
            1,
            300,
            "an integer 1-300",
        )?),
        trust_forwarded_for: boolean(lookup, "TRUST_FORWARDED_FOR")?,
    })
}

impl Default for StreamConfig {
    /// The defaults of [`VARIABLES`](super::VARIABLES).
    fn default() -> Self {
        // The defaults are checked by the configuration tests; they parse.
        parse(&|_| None).expect("the default stream limits are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_parse_and_hold_ten_thousand_streams() {
        let config = StreamConfig::default();
        assert_eq!(config.max_clients, 10_000);
        assert_eq!(config.keepalive, Duration::from_secs(15));
        assert!(!config.trust_forwarded_for);
    }
}
