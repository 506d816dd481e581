//! The SSE stream over real sockets, served by the service's own accept loop around a live
//! state the test feeds directly (and a real PostgreSQL holding the known products): the exact
//! event text, initial state then live changes, filters, bad parameters, caps, reconnects with
//! `Last-Event-ID`, and the stop.

use crate::common;

use std::time::Duration;

use chrono::DateTime;
use common::{SseReader, TestDb, app_state, serve};
use rust_decimal::Decimal;
use spot_canvas::config::StreamConfig;
use spot_canvas::live::LiveState;
use spot_canvas::model::{Candle, CandleUpdate, Granularity, TradeId};
use spot_canvas::store::Repository;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod events;
mod limits;

const T0: i64 = 1_790_000_040;

/// Generous for a loaded CI: an event that is due arrives well within it.
const SOON: Duration = Duration::from_secs(10);

fn update(product: &str, g: Granularity, count: u64) -> CandleUpdate {
    let time = DateTime::from_timestamp(g.bucket_start_secs(T0), 0).expect("time");
    CandleUpdate {
        candle: Candle {
            product_id: product.parse().expect("an id"),
            granularity: g,
            start: time,
            open: "0.0000123456789".parse().expect("d"),
            high: "42500".parse().expect("d"),
            low: "0.00000001".parse().expect("d"),
            close: Decimal::new(count as i64, 1),
            volume: "1234567890123.123456789012".parse().expect("d"),
            buy_volume: Some("0.5".parse().expect("d")),
            trade_count: Some(count),
        },
        complete: false,
        revision: 0,
        counted_trades: count,
        last_trade_id: TradeId(1_000 + count),
        last_trade_time: time + chrono::TimeDelta::milliseconds(1_500),
        last_received: time + chrono::TimeDelta::milliseconds(1_600),
    }
}

/// A served router with a live state and a database knowing BTC-USD, ETH-USD and SOL-USD.
struct Setup {
    live: LiveState,
    served: common::Served,
    streams_stop: tokio_util::sync::CancellationToken,
    _db: TestDb,
}

async fn setup(config: StreamConfig) -> Setup {
    let db = TestDb::migrated().await;
    let repository = Repository::new(db.pool.clone());
    repository
        .upsert_products(&[
            common::product("BTC-USD", Some("0.01")),
            common::product("ETH-USD", Some("0.01")),
            common::product("SOL-USD", Some("0.01")),
        ])
        .await
        .expect("products");
    let live = LiveState::new();
    let state = app_state(repository, live.clone(), config);
    let streams_stop = state.streams.stop.clone();
    let served = serve(state, Duration::from_secs(1)).await;
    Setup {
        live,
        served,
        streams_stop,
        _db: db,
    }
}

impl Setup {
    fn url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{path_and_query}", self.served.port)
    }

    async fn open(&self, path_and_query: &str) -> SseReader {
        self.open_with(path_and_query, &[]).await
    }

    async fn open_with(&self, path_and_query: &str, headers: &[(&str, &str)]) -> SseReader {
        let mut request = reqwest::Client::new().get(self.url(path_and_query));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = tokio::time::timeout(SOON, request.send())
            .await
            .expect("answers in time")
            .expect("answers");
        assert_eq!(response.status(), 200, "{path_and_query}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{path_and_query}"
        );
        // Never compressed, whatever the client accepts.
        assert!(
            response.headers().get("content-encoding").is_none(),
            "{path_and_query}"
        );
        SseReader::new(response)
    }

    async fn status_and_error(&self, path_and_query: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .get(self.url(path_and_query))
            .timeout(SOON)
            .send()
            .await
            .expect("answers");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("a JSON error");
        (
            status,
            body["error"].as_str().unwrap_or_default().to_owned(),
        )
    }
}
