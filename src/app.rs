//! The service: builds the stages from the configuration and supervises them until a stop
//! signal.

use crate::config::Config;

/// `spot-canvas serve`.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(?config, "starting");
    crate::shutdown::signal().await;
    Ok(())
}
