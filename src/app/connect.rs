//! The connections and embedded servers the stages are built on.
//!
//! In: the configuration's database and NATS URLs. Out: the database pool (or the embedded
//! cluster under `DATA_DIR` with its pool), the NATS client and the KV bucket (a reconnect or
//! a slow consumer makes the live state reload from the KV), the process's TLS provider, and
//! the embedded servers' stop.

use crate::bus::EmbeddedNats;
use crate::config::Config;
use crate::live::LiveState;
use crate::store::EmbeddedPostgres;

/// Connects to NATS (reconnects and slow consumers make the live state reload from the KV)
/// and creates or updates the KV bucket.
pub(super) async fn connect_bus(
    url: &str,
    live: &LiveState,
    replicas: usize,
) -> anyhow::Result<(async_nats::Client, async_nats::jetstream::kv::Store)> {
    let resync = live.resync_trigger();
    let client = crate::bus::connect(url, "spot-canvas", move |event| {
        let resync = resync.clone();
        async move {
            match event {
                async_nats::Event::Connected => {
                    tracing::info!("NATS connected");
                    resync.notify_one();
                }
                async_nats::Event::SlowConsumer(sid) => {
                    tracing::warn!(
                        sid,
                        "NATS slow consumer: reloading the live state from the KV"
                    );
                    resync.notify_one();
                }
                other => tracing::warn!(event = %other, "NATS event"),
            }
        }
    })
    .await?;
    let js = async_nats::jetstream::new(client.clone());
    let kv = crate::bus::ensure_bucket(&js, replicas).await?;
    Ok((client, kv))
}

pub(super) async fn stop_embedded(pg: Option<&EmbeddedPostgres>, nats: Option<&EmbeddedNats>) {
    if let Some(nats) = nats {
        nats.stop().await;
    }
    if let Some(pg) = pg
        && let Err(e) = pg.stop().await
    {
        tracing::error!(error = %e, "cannot stop embedded PostgreSQL");
    }
}

/// `DATABASE_URL`, or the embedded cluster under `DATA_DIR`.
pub async fn open_database(
    config: &Config,
) -> anyhow::Result<(sqlx::PgPool, Option<EmbeddedPostgres>)> {
    match &config.database_url {
        Some(url) => Ok((crate::store::connect(url).await?, None)),
        None => {
            let pg = EmbeddedPostgres::start(&config.data_dir).await?;
            let pool = crate::store::connect(&pg.url()).await?;
            Ok((pool, Some(pg)))
        }
    }
}

/// rustls needs one process-wide crypto provider for `wss://` and `https://`.
pub(super) fn install_tls_provider() {
    // Already installed (a second app in one process) is fine.
    let _already = rustls::crypto::ring::default_provider().install_default();
}
