//! The reports the stages publish: shared counters and states each stage updates as it runs
//! and anyone may read at any time.
//!
//! In: the stages' own report handles (the feed's health, the engine's, writer's, publisher's
//! and reconciler's counters, the stage registry, the alarms, the clock comparison). Out: one
//! [`Reports`] that `/health`, `/metrics`, the board and the monitor read, never the stages
//! themselves. An instance that does not ingest holds idle ones ([`Reports::default`]).

use std::sync::Arc;

use super::alarms::Alarms;
use super::clock::ClockState;
use crate::bus::PublisherStats;
use crate::candles::EngineStats;
use crate::feed::FeedHealth;
use crate::feed::health::AuthState;
use crate::reconcile::ReconcileStats;
use crate::store::WriterStats;
use crate::supervise::Stages;

/// Every stage's report.
#[derive(Debug, Clone)]
pub struct Reports {
    pub feed: Arc<FeedHealth>,
    pub engine: Arc<EngineStats>,
    pub writer: Arc<WriterStats>,
    pub publisher: Arc<PublisherStats>,
    pub reconcile: Arc<ReconcileStats>,
    /// Which stages run, and which ended before the stop signal.
    pub stages: Arc<Stages>,
    /// The alarms, as the monitor last judged them.
    pub alarms: Arc<Alarms>,
    /// The clock comparison with the exchange (`None`: not made here).
    pub clock: Option<Arc<ClockState>>,
}

impl Default for Reports {
    /// Idle reports: no feed connection, nothing counted, no stage registered.
    fn default() -> Self {
        Reports {
            feed: Arc::new(FeedHealth::new(AuthState::Unauthenticated)),
            engine: Arc::default(),
            writer: Arc::default(),
            publisher: Arc::default(),
            reconcile: Arc::default(),
            stages: Stages::new(),
            alarms: Arc::default(),
            clock: None,
        }
    }
}
