//! NATS: candle subjects, the JetStream KV of live candles, the embedded `nats-server`, and the
//! per-instance live state the web layer reads.
//!
//! In: candle updates from the engine (publisher) and messages on `candles.>` (live state).
//! Out: one message per update on `candles.<exchange>.<product>.<granularity>` (versioned
//! JSON), the newest candle per key in the KV bucket `live-candles`, and for the web layer the
//! current candle of any key followed by every newer update.

pub mod live;
pub mod message;
pub mod publisher;
pub mod server;

use std::time::Duration;

pub use live::{LiveState, LiveSubscription};
pub use message::CandleMessage;
pub use publisher::{Publisher, PublisherStats};
pub use server::EmbeddedNats;

use crate::model::{EXCHANGE, Granularity};

/// The KV bucket holding the newest candle per key.
pub const KV_BUCKET: &str = "live-candles";
/// Subjects the live state subscribes to.
pub const ALL_CANDLES: &str = "candles.>";

/// A subject or KV key token for any product id: letters, digits, `-` and `_` stay; every
/// other byte becomes `=XX` (hex), so `.`, `*`, `>` and spaces can never split a subject.
pub fn token(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// `candles.<exchange>.<product>.<granularity>`.
pub fn subject(product_id: &str, granularity: Granularity) -> String {
    format!(
        "candles.{EXCHANGE}.{}.{}",
        token(product_id),
        granularity.as_str()
    )
}

/// `<exchange>.<product>.<granularity>`, the KV key of a candle series.
pub fn kv_key(product_id: &str, granularity: Granularity) -> String {
    format!("{EXCHANGE}.{}.{}", token(product_id), granularity.as_str())
}

/// Connects to NATS, reconnecting forever with backoff; `on_event` hears reconnects and
/// slow-consumer events.
pub async fn connect<F, Fut>(
    url: &str,
    name: &str,
    on_event: F,
) -> anyhow::Result<async_nats::Client>
where
    F: Fn(async_nats::Event) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * 2u64.saturating_pow(attempts.min(8) as u32)).min(5_000))
        })
        .subscription_capacity(65_536)
        .event_callback(on_event)
        .connect(url)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to NATS: {}",
                crate::config::redact(&e.to_string())
            )
        })?;
    Ok(client)
}

/// How long a starting service waits for JetStream (a fresh cluster elects its leader).
const BUCKET_WAIT: Duration = Duration::from_secs(60);

/// Creates the KV bucket, or updates its settings, with `replicas` copies; retries while
/// JetStream is not ready yet.
pub async fn ensure_bucket(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    let config = async_nats::jetstream::kv::Config {
        bucket: KV_BUCKET.to_owned(),
        description: "newest candle per exchange.product.granularity".to_owned(),
        history: 1,
        num_replicas: replicas,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + BUCKET_WAIT;
    loop {
        match js.create_or_update_key_value(config.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "JetStream not ready for the KV bucket yet, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => anyhow::bail!("cannot create the KV bucket {KV_BUCKET}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_split_subjects() {
        assert_eq!(token("BTC-USD"), "BTC-USD");
        assert_eq!(token("A.B*C>D E"), "A=2EB=2AC=3ED=20E");
        assert_eq!(
            subject("BTC-USD", Granularity::OneMinute),
            "candles.coinbase.BTC-USD.ONE_MINUTE"
        );
        assert_eq!(kv_key("X.Y", Granularity::OneDay), "coinbase.X=2EY.ONE_DAY");
        // Escaping is unambiguous: `=` itself is escaped.
        assert_ne!(token("=2E"), token("."));
    }
}
