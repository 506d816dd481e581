//! Storage: PostgreSQL (TimescaleDB where it exists).
//!
//! In: candle updates from the engine, products from the feed. Out: rows in `live_candles`
//! and `trading_pairs`, and queries for charts and the API. Migrations are embedded in the
//! binary (`migrations/`); the embedded default starts a local cluster when no
//! `DATABASE_URL` is set. Every connection has a statement timeout and server-side TCP
//! keepalives; the history API reads through a pool of its own ([`api_pool`]). A row the
//! server refuses for its content is left out of its batch, never the batch
//! ([`refusal`]); candle rows not written by the stop wait in JetStream ([`StreamSpool`]) with an
//! external NATS, else (and for what JetStream does not take) in a [`Spool`] under `DATA_DIR`.

pub mod embedded;
mod keep;
pub mod refusal;
mod repository;
pub mod spool;
pub mod stream_spool;
pub mod writer;

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

pub use embedded::EmbeddedPostgres;
pub use keep::keep_products;
pub use repository::{MinuteRow, ProductsWritten, Repository, StoredCandle};
pub use spool::Spool;
pub use stream_spool::StreamSpool;
pub use writer::{BatchWriter, WriterSettings, WriterStats};

/// The schema migrations, embedded at compile time (no database needed to build).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Limits of a connection pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a query waits for a connection (or for a new one to be opened).
    pub acquire_timeout: Duration,
    /// The server cancels a statement running longer than this (`statement_timeout`).
    pub statement_timeout: Duration,
}

impl PoolSettings {
    /// The service's pool: the writer, the reconciler and the product catalog.
    pub const SERVICE: PoolSettings = PoolSettings {
        max_connections: 8,
        acquire_timeout: Duration::from_secs(3),
        statement_timeout: Duration::from_secs(60),
    };
    /// The history API's pool: small and quick to give up, so that API reads never take the
    /// connections the writer needs.
    pub const API: PoolSettings = PoolSettings {
        max_connections: 3,
        acquire_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(5),
    };
}

/// Server-side TCP keepalive (seconds): the server drops connections of a client that went
/// away. sqlx offers no client-side keepalive; on this side the statement timeout, the pool's
/// acquire timeout and the writer's flush timeout bound every wait.
const TCP_KEEPALIVES: [(&str, &str); 3] = [
    ("tcp_keepalives_idle", "30"),
    ("tcp_keepalives_interval", "10"),
    ("tcp_keepalives_count", "3"),
];

/// Connects the service's pool ([`PoolSettings::SERVICE`]). The URL is secret: errors never
/// echo it.
pub async fn connect(url: &SecretString) -> anyhow::Result<PgPool> {
    connect_with(url, PoolSettings::SERVICE).await
}

/// Connects a pool with `settings`, a statement timeout and TCP keepalives.
pub async fn connect_with(url: &SecretString, settings: PoolSettings) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url.expose_secret())
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {}", redact_error(&e)))?;
    pool_options(settings)
        .connect_with(with_limits(options, settings))
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {}", redact_error(&e)))
}

/// A pool for the history API on the same database as `pool`, with [`PoolSettings::API`]:
/// its connections are its own, so API reads cannot starve the writer. Connects lazily.
pub fn api_pool(pool: &PgPool) -> PgPool {
    let settings = PoolSettings::API;
    let options = (*pool.connect_options()).clone();
    pool_options(settings).connect_lazy_with(with_limits(options, settings))
}

fn pool_options(settings: PoolSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
}

/// The statement timeout and keepalives as startup options (a later `-c` wins over an
/// earlier one, so the pool's own settings override those of the URL or of another pool).
fn with_limits(options: PgConnectOptions, settings: PoolSettings) -> PgConnectOptions {
    let timeout = format!("{}ms", settings.statement_timeout.as_millis());
    options
        .options(TCP_KEEPALIVES)
        .options([("statement_timeout", timeout.as_str())])
}

/// sqlx errors may quote the connection string; keep only the kind of failure.
fn redact_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(_) => "invalid DATABASE_URL".to_owned(),
        other => crate::config::redact(&other.to_string()),
    }
}

/// A connection of `pool`'s database without a statement timeout: migrations may rewrite
/// large tables.
async fn unlimited_connection(pool: &PgPool) -> anyhow::Result<PgConnection> {
    let options = (*pool.connect_options())
        .clone()
        .options([("statement_timeout", "0")]);
    let connecting = PgConnection::connect_with(&options);
    tokio::time::timeout(PoolSettings::SERVICE.acquire_timeout * 3, connecting)
        .await
        .map_err(|_elapsed| anyhow::anyhow!("cannot connect to PostgreSQL: timed out"))?
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {}", redact_error(&e)))
}

/// Applies pending migrations and says whether `live_candles` is a hypertable.
pub async fn migrate_up(pool: &PgPool) -> anyhow::Result<TableKind> {
    let mut conn = unlimited_connection(pool).await?;
    let applied = MIGRATOR.run(&mut conn).await;
    let _closed = conn.close().await;
    applied.map_err(|e| anyhow::anyhow!("migrations failed: {e}"))?;
    let kind = table_kind(pool).await?;
    match kind {
        TableKind::Hypertable => tracing::info!("live_candles is a TimescaleDB hypertable"),
        TableKind::Plain => {
            tracing::info!("live_candles is a plain table (TimescaleDB not available)");
        }
    }
    Ok(kind)
}

/// Reverts migrations down to `target` (0: all).
pub async fn migrate_down(pool: &PgPool, target: i64) -> anyhow::Result<()> {
    let mut conn = unlimited_connection(pool).await?;
    let reverted = MIGRATOR.undo(&mut conn, target).await;
    let _closed = conn.close().await;
    reverted.map_err(|e| anyhow::anyhow!("reverting migrations failed: {e}"))
}

/// One migration and whether it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

/// The embedded migrations and which of them the database has.
pub async fn migration_status(pool: &PgPool) -> anyhow::Result<Vec<MigrationStatus>> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    let applied: Vec<i64> = if table_exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect())
}

/// What `live_candles` became.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    Hypertable,
    Plain,
}

async fn table_kind(pool: &PgPool) -> anyhow::Result<TableKind> {
    let has_extension: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
    )
    .fetch_one(pool)
    .await?;
    if !has_extension {
        return Ok(TableKind::Plain);
    }
    let hyper: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables \
         WHERE hypertable_name = 'live_candles')",
    )
    .fetch_one(pool)
    .await?;
    Ok(if hyper {
        TableKind::Hypertable
    } else {
        TableKind::Plain
    })
}
