use std::process::ExitCode;

use clap::Parser;
use spot_canvas::cli::{Cli, Command};
use spot_canvas::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A missing .env is normal; a malformed one is worth saying.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: .env: {e}");
        return ExitCode::FAILURE;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            println!("{config:#?}");
            ExitCode::SUCCESS
        }
        Command::Serve => {
            spot_canvas::telemetry::init(&config.log_filter, config.log_format);
            tracing::info!(?config, "starting");
            ExitCode::SUCCESS
        }
    }
}
