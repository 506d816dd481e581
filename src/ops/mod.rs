//! Operations: what an operator watches and is woken by.
//!
//! In: the stages' reports, the bounded channels between them, the live state's product
//! activity, the feed's heartbeats, the exchange's server time, the database and NATS. Out:
//! `/metrics` in the Prometheus text format ([`prometheus`]), the alarms ([`alarms`]) that
//! `/health`, `/metrics` and the board show, sampled once a second by the [`monitor`] stage,
//! the clock comparison ([`clock`]) and the process's own figures ([`process`]).

pub mod alarms;
pub mod clock;
pub mod monitor;
pub mod process;
pub mod prometheus;
pub mod quiet;
