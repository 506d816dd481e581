//! The engine stage (dispatcher, shards, completion ticks) under a controlled clock: the
//! engine's clock is a `ManualClock` set by the test, and tokio's time is paused, so the
//! shards' ticks happen when the test lets time pass and every test behaves the same at any
//! hour of the day. Absurd input (sizes that overflow a sum, trades from the future), the
//! cross-check right after a start, completion, revisions, the day rollover and the edge of
//! the revision window.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use spot_canvas::candles::{Backfill, Engine, EngineReport, EngineSettings, EngineStats};
use spot_canvas::model::{
    Candle, CandleUpdate, FeedEvent, Granularity, ManualClock, Side, Trade, TradeBatch, TradeId,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod clock;
mod cross_check;
mod rejects;

/// The shards' tick interval (in paused tokio time).
const TICK: Duration = Duration::from_millis(50);

type Key = (String, Granularity, i64);

/// An engine with a manual clock, fed and drained by the test.
struct Harness {
    clock: ManualClock,
    input: mpsc::Sender<FeedEvent>,
    backfills: mpsc::Sender<Backfill>,
    output: mpsc::Receiver<Vec<CandleUpdate>>,
    stats: Arc<EngineStats>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Updates drained so far, not yet taken.
    updates: Vec<CandleUpdate>,
}

impl Harness {
    fn start(now: DateTime<Utc>) -> Harness {
        let clock = ManualClock::new(now);
        let (input, rx) = mpsc::channel(16);
        let (out_tx, output) = mpsc::channel(4096);
        let (backfills, backfill_rx) = mpsc::channel(16);
        let (notices, _notices_rx) = mpsc::unbounded_channel();
        // The notices' receiver is dropped: the engine then stops forwarding, and keeps going.
        let settings = EngineSettings {
            tick_interval: TICK,
            ..EngineSettings::default()
        };
        let engine = Engine::new(settings, Arc::new(clock.clone()), rx, out_tx)
            .with_reconciler(backfill_rx, notices);
        let stats = engine.stats();
        let task = tokio::spawn(engine.run(CancellationToken::new()));
        Harness {
            clock,
            input,
            backfills,
            output,
            stats,
            task,
            updates: Vec::new(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        use spot_canvas::model::Clock;
        self.clock.now()
    }

    /// Lets every shard handle what it was sent and tick at the clock's current time, then
    /// drains the output. Time is the subject here: paused tokio time moves on by a few
    /// tick intervals (instantly, once every task is idle).
    async fn settle(&mut self) {
        tokio::time::sleep(TICK * 3).await;
        while let Ok(batch) = self.output.try_recv() {
            self.updates.extend(batch);
        }
    }

    /// Sets the clock to `time` and settles.
    async fn at(&mut self, time: DateTime<Utc>) {
        self.clock.set(time);
        self.settle().await;
    }

    async fn event(&mut self, event: FeedEvent) {
        self.input.send(event).await.expect("engine runs");
        self.settle().await;
    }

    /// One frame of trades, received now.
    async fn trades(&mut self, trades: Vec<Trade>) {
        let received = self.now();
        self.event(FeedEvent::Trades(TradeBatch {
            connection: 0,
            snapshot: false,
            received,
            trades,
        }))
        .await;
    }

    /// Trades of `all` with times in `(from, until]`, delivered a frame per 10 s of clock
    /// (the clock set to each frame's end).
    async fn trades_until(&mut self, all: &[Trade], from: DateTime<Utc>, until: DateTime<Utc>) {
        let mut t = from;
        while t < until {
            let next = (t + TimeDelta::seconds(10)).min(until);
            let frame: Vec<Trade> = all
                .iter()
                .filter(|x| x.time > t && x.time <= next)
                .map(|x| Trade {
                    received: next,
                    ..x.clone()
                })
                .collect();
            self.clock.set(next);
            if !frame.is_empty() {
                self.trades(frame).await;
            }
            t = next;
        }
        self.settle().await;
    }

    fn take(&mut self) -> Vec<CandleUpdate> {
        std::mem::take(&mut self.updates)
    }

    fn report(&self) -> EngineReport {
        self.stats.report()
    }

    /// Stops the engine (input closed) and checks it ended without error.
    async fn stop(self) {
        drop(self.input);
        self.task
            .await
            .expect("joins")
            .expect("the engine ends cleanly");
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn trade(product: &str, id: u64, time: DateTime<Utc>, price: &str, size: &str) -> Trade {
    Trade {
        product_id: product.parse().expect("an id"),
        trade_id: TradeId(id),
        price: price.parse().expect("price"),
        size: size.parse().expect("size"),
        side: if id.is_multiple_of(3) {
            Side::Sell
        } else {
            Side::Buy
        },
        time,
        received: time,
    }
}

/// A trade every 7 s of `product` from `from` to `to`, prices and sizes wandering.
fn series(product: &str, first_id: u64, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Trade> {
    let mut out = Vec::new();
    let mut time = from;
    let mut i = 0u64;
    while time < to {
        let price = Decimal::new(100_000 + ((i * 7919) % 997) as i64, 2);
        let size = Decimal::new(1 + (i % 13) as i64, 3);
        out.push(Trade {
            product_id: product.parse().expect("an id"),
            trade_id: TradeId(first_id + i),
            price,
            size,
            side: if i.is_multiple_of(3) {
                Side::Sell
            } else {
                Side::Buy
            },
            time,
            received: time,
        });
        i += 1;
        time += TimeDelta::seconds(7);
    }
    out
}

/// The independent aggregation of tests/common over these trades.
fn aggregate(trades: &[Trade]) -> BTreeMap<Key, common::Ohlcv> {
    let logged: Vec<common::LoggedTrade> = trades
        .iter()
        .map(|t| common::LoggedTrade {
            product_id: t.product_id.to_string(),
            trade_id: t.trade_id.0,
            price: t.price,
            size: t.size,
            side: common::MakerSide::parse(t.side.as_str()),
            time: t.time,
        })
        .collect();
    common::aggregate(&logged.iter().collect::<Vec<_>>())
}

fn of(updates: &[CandleUpdate], g: Granularity) -> Vec<&CandleUpdate> {
    updates
        .iter()
        .filter(|u| u.candle.granularity == g)
        .collect()
}
