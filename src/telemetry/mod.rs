//! The ground floor every stage records through, beside [`crate::model`]: logging
//! ([`logging`]), the catalog of every metric ([`catalog`]: name, help, label sets), the
//! process-wide recorder behind `/metrics` ([`recorder`]), the bounded channels whose fill is
//! sampled ([`channels`]) and the trade latency ([`latency`]).
//!
//! In: the model only; every stage imports this and this imports no stage, so recording a
//! figure never ties a stage to the layer that exports it. Out: the `metrics` facade's
//! recorder with every counter and histogram registered at start (so `increase()` sees a
//! counter's first event), the channel gauges, the log subscriber.

pub mod catalog;
pub mod channels;
pub mod latency;
pub mod logging;
pub mod recorder;

pub use catalog::{END_TO_END_SECONDS, PROCESSING_SECONDS, STORE_WRITE_SECONDS};
pub use channels::Channels;
pub use logging::init;
