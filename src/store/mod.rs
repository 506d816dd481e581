//! Storage: PostgreSQL (TimescaleDB where it exists).
//!
//! In: candle updates from the engine, products from the feed. Out: rows in `live_candles`
//! and `trading_pairs`, and queries for charts and the API. Migrations are embedded in the
//! binary (`migrations/`); the embedded default starts a local cluster when no
//! `DATABASE_URL` is set.

pub mod embedded;
mod repository;
pub mod writer;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

pub use embedded::EmbeddedPostgres;
pub use repository::{Repository, StoredCandle};
pub use writer::{BatchWriter, WriterSettings, WriterStats};

/// The schema migrations, embedded at compile time (no database needed to build).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Connects a pool. The URL is secret: errors never echo it.
pub async fn connect(url: &SecretString) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url.expose_secret())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {}", redact_error(&e)))
}

/// sqlx errors may quote the connection string; keep only the kind of failure.
fn redact_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(_) => "invalid DATABASE_URL".to_owned(),
        other => crate::config::redact(&other.to_string()),
    }
}

/// Applies pending migrations and says whether `live_candles` is a hypertable.
pub async fn migrate_up(pool: &PgPool) -> anyhow::Result<TableKind> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| anyhow::anyhow!("migrations failed: {e}"))?;
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
    MIGRATOR
        .undo(pool, target)
        .await
        .map_err(|e| anyhow::anyhow!("reverting migrations failed: {e}"))
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
