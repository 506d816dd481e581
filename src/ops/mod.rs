//! Operations: what an operator watches and is woken by.
//!
//! In: the stages' reports (narrow structs, never the web layer's state), the bounded
//! channels between them, the live view's product activity, the feed's heartbeats, the
//! exchange's server time, the database and NATS. Out: the figures of a `/metrics` scrape
//! ([`prometheus`]), readiness ([`readiness`]), the alarms ([`alarms`]) that `/health`,
//! `/metrics` and the board show, judged once a second by the [`monitor`] stage, the clock
//! comparison ([`clock`]), the process's own figures ([`process`]) and the pipeline summary
//! in the log ([`summary`]). The web layer answers with what this computes.

pub mod alarms;
pub mod clock;
pub mod monitor;
pub mod process;
pub mod prometheus;
pub mod readiness;
pub mod reports;
pub mod summary;
