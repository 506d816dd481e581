//! `spot-canvas migrate up|down|status`: the schema's migrations by hand.
//!
//! In: the [`Config`] (the database, or the embedded cluster under `DATA_DIR`) and the action.
//! Out: the migrations applied or reverted, or their status, printed.

use super::connect::open_database;
use crate::config::Config;
use crate::store::TableKind;

/// `spot-canvas migrate up|down|status`. A SIGTERM or SIGINT drops the work (a migration's
/// transaction rolls back with its connection) and the embedded database's guard stops it.
pub async fn migrate(config: Config, action: crate::cli::MigrateAction) -> anyhow::Result<()> {
    tokio::select! {
        result = migrate_now(config, action) => result,
        () = crate::shutdown::signal() => anyhow::bail!("interrupted by a stop signal"),
    }
}

async fn migrate_now(config: Config, action: crate::cli::MigrateAction) -> anyhow::Result<()> {
    use crate::cli::MigrateAction;
    let (pool, embedded) = open_database(&config).await?;
    let result = async {
        match action {
            MigrateAction::Up => {
                let kind = crate::store::migrate_up(&pool).await?;
                let kind = match kind {
                    TableKind::Hypertable => "a TimescaleDB hypertable",
                    TableKind::Plain => "a plain table (TimescaleDB not available)",
                };
                println!("migrations applied; live_candles is {kind}");
            }
            MigrateAction::Down { to } => {
                let status = crate::store::migration_status(&pool).await?;
                let applied: Vec<i64> = status
                    .iter()
                    .filter(|m| m.applied)
                    .map(|m| m.version)
                    .collect();
                let target = match to {
                    Some(target) => target,
                    // The newest applied one goes: back to the one before it (0 if none).
                    None => applied.iter().rev().nth(1).copied().unwrap_or(0),
                };
                crate::store::migrate_down(&pool, target).await?;
                println!("reverted migrations above version {target}");
            }
            MigrateAction::Status => {
                for m in crate::store::migration_status(&pool).await? {
                    let state = if m.applied { "applied" } else { "pending" };
                    println!("{:>16}  {state:8} {}", m.version, m.description);
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    pool.close().await;
    if let Some(pg) = embedded {
        pg.stop().await?;
    }
    result
}
