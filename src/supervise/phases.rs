//! The ordered stop, written as data: the phases a running service goes through when it
//! stops, in order, and the stages each one ends.
//!
//! In: the stages' task handles, each tracked under the phase it stops in, and the token a
//! stage of that phase watches. Out: a phase's stop (its token cancelled, then its stages
//! awaited in the order they were spawned), a phase's drain (its stages awaited: they end on
//! their closed inputs), and the forced stop when the grace runs out.
//!
//! Why this order: nothing new comes in before what is in flight is written, and what serves
//! the outside (HTTP, the servers the stages use) goes last, so a stop never loses a candle
//! that reached the engine and never refuses a health check while the stages still run.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A phase of the stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The SSE streams end first: their clients reconnect to another instance at once.
    Streams,
    /// No new input: the feed closes its sockets, and its product catalog and clock check
    /// end with it. Cancels [`Phase::Helpers`] too, so that none of them sees the feed's end
    /// as a failure.
    Intake,
    /// The engine, the reconciler and the fan-out finish what they hold; they end on their
    /// closed inputs (their token is only cancelled by the forced stop).
    Pipeline,
    /// The writer's and the publisher's final flush (the publisher's own grace is shorter).
    Sinks,
    /// The live state's NATS loop.
    Live,
    /// The helpers beside the pipeline (summary, monitor, day seed): cancelled with
    /// [`Phase::Intake`], awaited only here, so that none of them holds up the sinks' flush.
    Helpers,
    /// The embedded servers' watchdogs, so that none starts a server again while it stops.
    Watchdogs,
    /// The HTTP servers, last.
    Http,
}

impl Phase {
    /// Every phase, in the order the stop runs them.
    pub const ORDER: [Phase; 8] = [
        Phase::Streams,
        Phase::Intake,
        Phase::Pipeline,
        Phase::Sinks,
        Phase::Live,
        Phase::Helpers,
        Phase::Watchdogs,
        Phase::Http,
    ];

    fn index(self) -> usize {
        Phase::ORDER
            .iter()
            .position(|p| *p == self)
            .unwrap_or_default()
    }

    /// Whether the forced stop (the grace ran out) cancels this phase: every phase before
    /// the watchdogs, which end in their own turn and keep the servers up until then.
    pub fn forced(self) -> bool {
        self.index() < Phase::Watchdogs.index()
    }
}

/// The phases' tokens and the stages tracked under each.
#[derive(Debug)]
pub struct Phases {
    tokens: [CancellationToken; Phase::ORDER.len()],
    tracked: Vec<(Phase, &'static str, JoinHandle<()>)>,
}

impl Default for Phases {
    fn default() -> Self {
        Phases::new()
    }
}

impl Phases {
    pub fn new() -> Phases {
        Phases {
            tokens: std::array::from_fn(|_| CancellationToken::new()),
            tracked: Vec::new(),
        }
    }

    /// Uses `token` as `phase`'s (one that exists before the stages, such as the streams').
    pub fn with_token(mut self, phase: Phase, token: CancellationToken) -> Phases {
        self.tokens[phase.index()] = token;
        self
    }

    /// The token the stages of `phase` watch.
    pub fn token(&self, phase: Phase) -> &CancellationToken {
        &self.tokens[phase.index()]
    }

    /// Tracks `handle`, a stage named `name`, as one `phase` ends.
    pub fn track(&mut self, phase: Phase, name: &'static str, handle: JoinHandle<()>) {
        self.tracked.push((phase, name, handle));
    }

    /// Cancels `phase` (and, for [`Phase::Intake`], [`Phase::Helpers`]) and returns the
    /// wait for its stages (in the order they were tracked). The wait holds no borrow: the
    /// caller may bound it and go on.
    pub fn stop(&mut self, phase: Phase) -> impl Future<Output = ()> + Send + 'static {
        self.cancel(phase);
        self.drain(phase, None)
    }

    /// Like [`Phases::stop`], each stage awaited for at most `limit` (a warning names the one
    /// that did not end in time, and the next is awaited all the same).
    pub fn stop_each(
        &mut self,
        phase: Phase,
        limit: std::time::Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.cancel(phase);
        self.drain(phase, Some(limit))
    }

    fn cancel(&self, phase: Phase) {
        self.token(phase).cancel();
        if phase == Phase::Intake {
            self.token(Phase::Helpers).cancel();
        }
    }

    /// The wait for `phase`'s stages, which end without being cancelled (`limit`: at most
    /// that long each).
    pub fn drain(
        &mut self,
        phase: Phase,
        limit: Option<std::time::Duration>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (ours, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.tracked)
            .into_iter()
            .partition(|(p, ..)| *p == phase);
        self.tracked = rest;
        async move {
            for (_phase, name, handle) in ours {
                let ended = match limit {
                    None => Some(handle.await),
                    Some(limit) => tokio::time::timeout(limit, handle).await.ok(),
                };
                match ended {
                    // A panic is caught inside the stage's task; an abort only happens at
                    // runtime shutdown.
                    Some(Ok(())) => {}
                    Some(Err(_aborted)) => {
                        tracing::warn!(stage = name, "stage task aborted at the stop");
                    }
                    None => tracing::warn!(stage = name, ?limit, "stage did not stop in time"),
                }
            }
        }
    }

    /// The grace ran out: cancels every phase the forced stop covers.
    pub fn force(&self) {
        for phase in Phase::ORDER.into_iter().filter(|p| p.forced()) {
            self.token(phase).cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn a_phase_stops_its_own_stages_in_order_and_leaves_the_others_running() {
        let mut phases = Phases::new();
        let ended = Arc::new(Mutex::new(Vec::new()));
        for (phase, name) in [
            (Phase::Intake, "feed"),
            (Phase::Live, "live-state"),
            (Phase::Intake, "catalog"),
        ] {
            let (token, ended) = (phases.token(phase).clone(), ended.clone());
            let handle = tokio::spawn(async move {
                token.cancelled().await;
                ended.lock().expect("lock").push(name);
            });
            phases.track(phase, name, handle);
        }
        phases.stop(Phase::Intake).await;
        assert_eq!(*ended.lock().expect("lock"), vec!["feed", "catalog"]);
        assert!(!phases.token(Phase::Live).is_cancelled());
        phases.stop(Phase::Live).await;
        assert_eq!(ended.lock().expect("lock").len(), 3);
    }

    #[tokio::test]
    async fn the_intake_cancels_the_helpers_which_are_awaited_in_their_own_turn() {
        let mut phases = Phases::new();
        let helper = phases.token(Phase::Helpers).clone();
        phases.track(
            Phase::Helpers,
            "monitor",
            tokio::spawn(async move { helper.cancelled().await }),
        );
        phases.stop(Phase::Intake).await;
        assert!(phases.token(Phase::Helpers).is_cancelled());
        assert!(!phases.token(Phase::Pipeline).is_cancelled());
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            phases.drain(Phase::Helpers, None),
        )
        .await
        .expect("the helper ended on the intake's cancel");
    }

    #[tokio::test]
    async fn a_stage_that_overruns_its_limit_does_not_hold_up_the_next() {
        let mut phases = Phases::new();
        phases.track(
            Phase::Watchdogs,
            "postgres",
            tokio::spawn(std::future::pending::<()>()),
        );
        let token = phases.token(Phase::Watchdogs).clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        phases.track(
            Phase::Watchdogs,
            "nats-server",
            tokio::spawn(async move {
                token.cancelled().await;
                let _ = tx.send(());
            }),
        );
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            phases.stop_each(Phase::Watchdogs, std::time::Duration::from_millis(50)),
        )
        .await
        .expect("each stage's wait is bounded");
        rx.await
            .expect("the second watchdog was stopped and awaited");
    }

    #[test]
    fn the_forced_stop_keeps_the_watchdogs_and_http_for_their_turn() {
        let phases = Phases::new();
        phases.force();
        let cancelled: Vec<Phase> = Phase::ORDER
            .into_iter()
            .filter(|p| phases.token(*p).is_cancelled())
            .collect();
        assert_eq!(
            cancelled,
            vec![
                Phase::Streams,
                Phase::Intake,
                Phase::Pipeline,
                Phase::Sinks,
                Phase::Live,
                Phase::Helpers
            ]
        );
    }
}
