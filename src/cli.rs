//! The command line: `spot-canvas [serve]`, and the other subcommands.

use clap::{Parser, Subcommand};

/// Live candle service and dashboard for Coinbase spot markets.
#[derive(Debug, Parser)]
#[command(name = "spot-canvas", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve,
    /// Run the exchange simulator: Coinbase's market-data WebSocket and REST protocol.
    Sim(spot_canvas_sim::SimConfig),
    /// Database migrations against DATABASE_URL (or the embedded database).
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Print the configuration the service would run with (secrets redacted) and exit.
    Config,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum MigrateAction {
    /// Apply every pending migration.
    Up,
    /// Revert migrations: the newest one, or down to `--to` (0 reverts all).
    Down {
        #[arg(long)]
        to: Option<i64>,
    },
    /// List the migrations and whether each is applied.
    Status,
}
