//! NATS: candle subjects, the wire message, the publisher, the JetStream KV of live candles
//! and the embedded `nats-server`. NATS only: what an instance keeps of the messages it reads
//! back is the live view's ([`crate::live`]).
//!
//! In: candle updates from the engine (publisher). Out: one message per update on
//! `candles.<exchange>.<product>.<granularity>` (versioned JSON) and the newest candle per key
//! in the KV bucket `live-candles`.

pub mod message;
pub mod publisher;
pub mod server;

use std::time::Duration;

pub use message::CandleMessage;
pub use publisher::{Publisher, PublisherReport, PublisherStats};
pub use server::EmbeddedNats;

use crate::model::{EXCHANGE, Granularity};

/// The KV bucket holding the newest candle per key.
pub const KV_BUCKET: &str = "live-candles";
/// Subjects the live state subscribes to.
pub const ALL_CANDLES: &str = "candles.>";
/// The header naming the instance that published a candle message: an instance's live state
/// took its own updates straight from its engine and skips them when they come back from NATS
/// (without parsing them).
pub const ORIGIN_HEADER: &str = "Spot-Origin";

/// A new instance's origin: random, different for every start of every instance.
pub fn new_origin() -> std::sync::Arc<str> {
    format!("{:016x}", rand::random::<u64>()).into()
}

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
/// slow-consumer events. `url` may list several servers, comma-separated. Credentials in a URL
/// (`nats://user:pass@host`, `nats://token@host`) are handed to the client as credentials and
/// the URLs it keeps (and may log) have none.
pub async fn connect<F, Fut>(
    url: &str,
    name: &str,
    on_event: F,
) -> anyhow::Result<async_nats::Client>
where
    F: Fn(async_nats::Event) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    let parts: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let shown: Vec<String> = parts.iter().map(|p| crate::config::redact_url(p)).collect();
    let shown = shown.join(",");
    let mut servers = Vec::with_capacity(parts.len());
    let mut credentials = Credentials::None;
    for part in &parts {
        let (server, found) = split_credentials(part).map_err(|e| {
            anyhow::anyhow!("invalid NATS URL {}: {e}", crate::config::redact_url(part))
        })?;
        servers.push(server);
        if credentials == Credentials::None {
            credentials = found;
        }
    }
    if servers.is_empty() {
        anyhow::bail!("no NATS server URL given");
    }
    let options = match credentials {
        Credentials::None => async_nats::ConnectOptions::new(),
        Credentials::Token(token) => async_nats::ConnectOptions::with_token(token),
        Credentials::UserPassword(user, password) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
    };
    let client = options
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * 2u64.saturating_pow(attempts.min(8) as u32)).min(5_000))
        })
        .subscription_capacity(65_536)
        .event_callback(on_event)
        .connect(servers)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to NATS at {shown}: {}",
                crate::config::redact(&e.to_string())
            )
        })?;
    Ok(client)
}

/// A plain client of one server (no reconnect settings, no event handler: tests and
/// benchmarks), with the credentials `url` carries (`nats://TOKEN@host:port`, as
/// [`EmbeddedNats::client_url`] gives) handed over as credentials.
pub async fn connect_plain(url: &str) -> anyhow::Result<async_nats::Client> {
    let (server, credentials) = split_credentials(url)
        .map_err(|e| anyhow::anyhow!("invalid NATS URL {}: {e}", crate::config::redact_url(url)))?;
    let options = match credentials {
        Credentials::None => async_nats::ConnectOptions::new(),
        Credentials::Token(token) => async_nats::ConnectOptions::with_token(token),
        Credentials::UserPassword(user, password) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
    };
    options.connect(server).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to NATS at {}: {}",
            crate::config::redact_url(url),
            crate::config::redact(&e.to_string())
        )
    })
}

/// Credentials found in a NATS URL.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    None,
    Token(String),
    UserPassword(String, String),
}

/// The server address without user info, and the user info as credentials (percent-decoded).
fn split_credentials(url: &str) -> Result<(async_nats::ServerAddr, Credentials), String> {
    let addr: async_nats::ServerAddr = url.parse().map_err(|_| "not a server URL".to_owned())?;
    let credentials = match (addr.username(), addr.password()) {
        (None, _) => return Ok((addr, Credentials::None)),
        (Some(token), None) => Credentials::Token(percent_decode(token)),
        (Some(user), Some(password)) => {
            Credentials::UserPassword(percent_decode(user), percent_decode(password))
        }
    };
    let host = addr.host();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let bare = format!("{}://{host}:{}", addr.scheme(), addr.port());
    let bare = bare
        .parse()
        .map_err(|_| "not a server URL without its user info".to_owned())?;
    Ok((bare, credentials))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn url_credentials_become_client_credentials_and_leave_the_url() {
        let (addr, credentials) =
            split_credentials("nats://spot:s3cr%40t@127.0.0.1:4333").expect("valid");
        assert_eq!(
            credentials,
            Credentials::UserPassword("spot".into(), "s3cr@t".into())
        );
        assert_eq!(addr.as_url_str(), "nats://127.0.0.1:4333");
        assert!(!format!("{addr:?}").contains("s3cr"));
        let (addr, credentials) = split_credentials("tls://tok3n@nats.example:4222").expect("ok");
        assert_eq!(credentials, Credentials::Token("tok3n".into()));
        assert_eq!(addr.as_url_str(), "tls://nats.example:4222");
        let (addr, credentials) = split_credentials("nats://127.0.0.1:4222").expect("valid");
        assert_eq!(credentials, Credentials::None);
        assert_eq!(addr.port(), 4222);
        assert!(split_credentials("::").is_err());
    }
}
