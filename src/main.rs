use std::process::ExitCode;

use clap::Parser;
use spot_canvas::cli::{Cli, Command};
use spot_canvas::config::{Config, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A missing .env is normal; a malformed one is worth saying.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: .env: {e}");
        return ExitCode::FAILURE;
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Sim(sim) => {
            // The simulator needs none of the service's configuration.
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
            let json = std::env::var("LOG_FORMAT").as_deref() == Ok("json");
            spot_canvas::telemetry::init(&filter, json);
            run_async(spot_canvas_sim::run(sim, spot_canvas::shutdown::signal()))
        }
        Command::Config => with_config(|config| {
            println!("{config:#?}");
            ExitCode::SUCCESS
        }),
        Command::Serve => with_config(|config| {
            spot_canvas::telemetry::init(&config.log_filter, config.log_format == LogFormat::Json);
            run_async(spot_canvas::app::serve(config))
        }),
        Command::Migrate { action } => with_config(|config| {
            spot_canvas::telemetry::init(&config.log_filter, config.log_format == LogFormat::Json);
            run_async(spot_canvas::app::migrate(config, action))
        }),
    }
}

/// Loads the configuration and runs `command` with it; an invalid value exits with code 2.
fn with_config(command: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    match Config::from_env() {
        Ok(config) => command(config),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_async(future: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(future);
    // Blocking work still running (a DNS lookup in a network outage) must not hold the exit
    // past Cloud Run's 10 s after SIGTERM.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = ?e, "exiting on error");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
