//! NATS with a real `nats-server`: the message format (golden sample), publish/subscribe, the
//! KV keeping the newest version whatever the order, a killed server restarted with the live
//! state and KV whole again, and the live state's initial-then-updates contract.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common;
use common::wait_for;

use chrono::DateTime;
use futures_util::StreamExt;
use rust_decimal::Decimal;
use spot_canvas::bus::{CandleMessage, EmbeddedNats, Publisher, PublisherStats, kv_key};
use spot_canvas::live::{ClientSettings, Delivery, Filter, LiveState};
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId, Version};
use spot_canvas::sink::SinkSettings;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod clients;
mod messages;
mod recovery;

const START: i64 = 1_790_000_040;

fn update(product: &str, bucket: i64, count: u64) -> CandleUpdate {
    let start = START + 60 * bucket;
    let time = DateTime::from_timestamp(start, 0).expect("time");
    CandleUpdate {
        candle: Candle {
            product_id: product.parse().expect("an id"),
            granularity: Granularity::OneMinute,
            start: time,
            open: "0.0000123456789".parse().expect("d"),
            high: "0.0000123456790".parse().expect("d"),
            low: "0.0000123456788".parse().expect("d"),
            close: Decimal::new(count as i64, 10),
            volume: "1234567890123.123456789".parse().expect("d"),
            buy_volume: Some("617283945061.5".parse().expect("d")),
            trade_count: Some(count),
        },
        complete: false,
        revision: 0,
        counted_trades: count,
        last_trade_id: TradeId(1_000 + count),
        last_trade_time: time + chrono::TimeDelta::milliseconds(1500),
        last_received: time + chrono::TimeDelta::milliseconds(1600),
    }
}

/// Waits until the publisher has written `rows` rows (each flush confirmed).
async fn flushed(stats: &PublisherStats, rows: u64) {
    wait_for("the publisher's flush", Duration::from_secs(20), || async {
        stats.report().sink.written_rows >= rows
    })
    .await;
}

struct Nats {
    server: EmbeddedNats,
    client: async_nats::Client,
    kv: async_nats::jetstream::kv::Store,
    _dir: tempfile::TempDir,
}

async fn nats() -> Nats {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let server = EmbeddedNats::start(None, dir.path())
        .await
        .expect("nats-server starts");
    let client = spot_canvas::bus::connect(&server.client_url(), "test", |_| async {})
        .await
        .expect("connects");
    let js = async_nats::jetstream::new(client.clone());
    let kv = spot_canvas::bus::ensure_bucket(&js, 1)
        .await
        .expect("bucket");
    Nats {
        server,
        client,
        kv,
        _dir: dir,
    }
}

async fn kv_version(kv: &async_nats::jetstream::kv::Store, key: &str) -> Option<Version> {
    let bytes = kv.get(key).await.expect("kv get")?;
    Some(
        CandleMessage::parse(&bytes)
            .expect("a candle message")
            .parsed_version()
            .expect("version"),
    )
}
