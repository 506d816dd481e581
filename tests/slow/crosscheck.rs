//! The cross-check of our completed 5-minute candles with Coinbase's `candles` channel, end to
//! end: the whole service (feed, engine, reconciler, a real PostgreSQL and nats-server) fed by
//! the simulator, which streams the channel's 5-minute candle of the current bucket every
//! second, computed from its own trades (it shares no aggregation with the engine).
//!
//! The simulator's clock is the wall clock, so a bucket takes its five real minutes: this test
//! runs for up to about 6 minutes (3.5 on average).

use crate::common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{AppEnv, TestApp, TestDb};
use spot_canvas::candles::crosscheck::CheckReport;
use spot_canvas_sim::{SimConfig, Simulator};

/// Width of the `candles` channel's buckets, in seconds.
const BUCKET: i64 = 300;

/// The instant `secs` (Unix seconds).
fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("a time")
}

/// Waits until the wall clock reaches `instant`: the subject here is a moment of the
/// exchange's day, not something that happens.
async fn until(what: &str, instant: DateTime<Utc>) {
    let left = (instant - Utc::now()).to_std().unwrap_or_default();
    common::wait_for(what, left + Duration::from_secs(30), || async {
        Utc::now() >= instant
    })
    .await;
}

/// Comparisons counted, whatever their verdict.
fn compared(c: &CheckReport) -> u64 {
    c.matched + c.mismatched + c.behind + c.not_comparable
}

#[tokio::test]
async fn a_completed_five_minute_candle_matches_the_candles_channels() {
    let sim = Simulator::start(SimConfig {
        product_list: Some(vec!["BTC-USD".into()]),
        trades_per_second: 4.0,
        // REST has every minute of the bucket the service starts in.
        history_minutes: 10,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let db = TestDb::migrated().await;
    let data = common::data_dir();
    let env = AppEnv::for_sim(&sim, data.path())
        .database(&db)
        .set("PRODUCTS", "BTC-USD")
        .set("REST_REQUESTS_PER_SECOND", "50")
        .set("CROSSCHECK_INTERVAL_SECS", "0");
    let app = TestApp::start(&env, |_| {}).await;
    let engine = app.state.reports.engine.clone();
    common::wait_for(
        "the subscribe's snapshot applied",
        Duration::from_secs(60),
        || {
            let trades = engine.report().trades;
            async move { trades > 0 }
        },
    )
    .await;
    // The bucket to judge must be whole when it completes (2 s after its end): its minutes
    // before the subscribe come from the start backfill, the subscribe's own minute from a
    // backfill 5 s after that minute ends. So the subscribe (before now) must not fall into the
    // bucket's last minute; otherwise the next bucket, seen live from its start, is judged.
    let now = Utc::now().timestamp();
    let current = now - now.rem_euclid(BUCKET);
    let bucket = if now < current + BUCKET - 60 {
        current
    } else {
        current + BUCKET
    };
    let end = bucket + BUCKET;
    // Coinbase re-sends the open bucket every second, so its last candle of a bucket misses the
    // trades of the bucket's last moments and is only `behind`. The market halts for the last
    // seconds of the bucket, so the candles sent meanwhile hold every trade of it.
    until("3 s before the bucket ends", at(end - 3)).await;
    // The buckets before it were judged (or not) long ago.
    let before = engine.report().crosscheck_ws_5m;
    sim.state.exchange.set_paused(true);
    until("1 s after the bucket ended", at(end + 1)).await;
    sim.state.exchange.set_paused(false);
    let check = common::eventually("the bucket compared", Duration::from_secs(60), || async {
        let check = engine.report().crosscheck_ws_5m;
        (compared(&check) > compared(&before)).then_some(check)
    })
    .await;
    assert_eq!(
        (
            check.matched - before.matched,
            check.behind - before.behind,
            check.not_comparable - before.not_comparable,
            check.mismatched,
        ),
        (1, 0, 0, 0),
        "bucket {bucket} is whole and matches; no bucket mismatched: {check:?}"
    );
    // What /health shows is the same count.
    let (_, health) = app.health().await.expect("/health answers");
    let shown = &health["engine"]["crosscheck_ws_5m"];
    assert!(shown["matched"].as_u64() >= Some(1), "{health:#}");
    assert_eq!(shown["mismatched"].as_u64(), Some(0), "{health:#}");
    app.stop().await.expect("the app stops cleanly");
    sim.stop().await;
}
