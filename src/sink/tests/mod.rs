//! The sink's contract: rows survive failed, panicked and abandoned flushes; newer updates
//! win; a backlog is written in pieces.

use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use chrono::DateTime;
use rust_decimal::Decimal;

use super::*;
use crate::model::{Candle, TradeId};

mod flushes;
mod stop;

fn update(key: i64, count: u64) -> CandleUpdate {
    let start = 1_790_000_040 + 60 * key;
    let time = DateTime::from_timestamp(start, 0).expect("time");
    CandleUpdate {
        candle: Candle {
            product_id: crate::model::ProductId::from_static("BTC-USD"),
            granularity: Granularity::OneMinute,
            start: time,
            open: Decimal::ONE,
            high: Decimal::ONE,
            low: Decimal::ONE,
            close: Decimal::ONE,
            volume: Decimal::from(count),
            buy_volume: None,
            trade_count: Some(count),
        },
        complete: false,
        revision: 0,
        counted_trades: count,
        last_trade_id: TradeId(count),
        last_trade_time: time,
        last_received: time,
    }
}

fn settings() -> SinkSettings {
    SinkSettings {
        max_rows: 1_000,
        flush_interval: Duration::from_millis(10),
        retry_base: Duration::from_millis(10),
        retry_cap: Duration::from_millis(50),
        flush_timeout: Duration::from_secs(2),
        max_flush_rows: 1_000,
        stop_timeout: Duration::from_secs(1),
    }
}

/// Runs a sink over 100 keys (sent as 10 batches, then the input closes) with `flush`, and
/// returns what was written, by key, and the stats.
async fn run_with<F, Fut>(flush: F, written: Arc<Mutex<HashMap<i64, u64>>>) -> SinkReport
where
    F: Fn(Rows) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let stats = Arc::new(SinkStats::default());
    let sink = tokio::spawn(run("test", rx, settings(), stats.clone(), flush));
    for batch in 0..10 {
        let rows = (0..10).map(|k| update(batch * 10 + k, 1)).collect();
        tx.send(rows).await.expect("send");
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), sink)
        .await
        .expect("the sink ends once everything is written")
        .expect("join");
    let written = written.lock().expect("lock");
    assert_eq!(written.len(), 100, "every key written");
    assert!(written.values().all(|count| *count == 1));
    stats.report()
}

fn record(written: &Mutex<HashMap<i64, u64>>, rows: &[CandleUpdate]) {
    let mut written = written.lock().expect("lock");
    for u in rows {
        let key = (u.candle.start.timestamp() - 1_790_000_040) / 60;
        written.insert(key, u.version().trade_count);
    }
}
