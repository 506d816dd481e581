//! The service: builds the stages from the configuration, serves HTTP, and supervises them
//! until a stop signal.
//!
//! In: the [`Config`] and a cancellation token. Out: a running feed, the candle engine it
//! feeds, a consumer of the engine's updates, and the HTTP server (`GET /health`); on cancel,
//! every stage stops in order (feed, engine, consumer, HTTP) and sockets close politely.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::candles::{Engine, EngineSettings, EngineStats};
use crate::config::Config;
use crate::feed::{Feed, FeedHealth, FeedSettings};
use crate::model::{CandleUpdate, SystemClock};

/// How long stages get to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// State the HTTP handlers read.
#[derive(Debug, Clone)]
pub struct AppState {
    pub feed: Arc<FeedHealth>,
    pub engine: Arc<EngineStats>,
    /// The feed is the exchange simulator, not Coinbase.
    pub simulated: bool,
    pub ws_url: String,
}

/// A built, not yet running, service.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    feed: Feed,
    engine: Engine,
    updates: mpsc::Receiver<Vec<CandleUpdate>>,
    state: AppState,
}

impl App {
    /// Binds the port and builds the stages.
    pub async fn build(config: &Config) -> anyhow::Result<App> {
        install_tls_provider();
        Self::build_with(config, FeedSettings::from_config(config)).await
    }

    /// As [`App::build`], with explicit feed settings (tests shorten the timeouts).
    pub async fn build_with(config: &Config, settings: FeedSettings) -> anyhow::Result<App> {
        let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let (tx, events) = mpsc::channel(settings.channel_capacity);
        let feed = Feed::new(settings, tx);
        let (updates_tx, updates) = mpsc::channel(1024);
        let engine = Engine::new(
            EngineSettings::default(),
            Arc::new(SystemClock),
            events,
            updates_tx,
        );
        let state = AppState {
            feed: feed.health(),
            engine: engine.stats(),
            simulated: !config.is_production_feed(),
            ws_url: config.coinbase_ws_url.clone(),
        };
        Ok(App {
            listener,
            feed,
            engine,
            updates,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Runs until `cancel`, then stops the feed (closing sockets politely), drains what it
    /// sent, and stops the HTTP server.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let App {
            listener,
            feed,
            engine,
            updates,
            state,
        } = self;
        if state.simulated {
            tracing::warn!(ws_url = %state.ws_url, "running on a SIMULATED feed, not Coinbase");
        }
        let feed_cancel = cancel.child_token();
        let feed_task = tokio::spawn(feed.run(feed_cancel.clone()));
        // The engine stops when the feed's channel closes, after the batches it holds.
        let engine_task = tokio::spawn(engine.run(CancellationToken::new()));
        let consumer = tokio::spawn(summarize(updates, state.engine.clone()));
        let http_cancel = CancellationToken::new();
        let server = tokio::spawn(
            axum::serve(listener, router(state))
                .with_graceful_shutdown(http_cancel.clone().cancelled_owned())
                .into_future(),
        );
        tracing::info!("serving");
        cancel.cancelled().await;
        tracing::info!("stopping");
        let stopped = async {
            report_exit("feed", feed_task.await);
            // The feed's sender is gone now: the engine and the consumer drain and end.
            report_exit("engine", engine_task.await);
            report_exit("consumer", consumer.await.map(Ok));
            http_cancel.cancel();
            report_exit("http", server.await.map(|r| r.map_err(anyhow::Error::from)));
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, stopped).await.is_err() {
            anyhow::bail!("stages did not stop within {SHUTDOWN_GRACE:?}");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

fn report_exit(name: &str, outcome: Result<anyhow::Result<()>, tokio::task::JoinError>) {
    match outcome {
        Ok(Ok(())) => tracing::info!(stage = name, "stage stopped"),
        Ok(Err(e)) => tracing::error!(stage = name, error = ?e, "stage failed"),
        Err(e) => tracing::error!(stage = name, error = %e, "stage panicked or was aborted"),
    }
}

/// Until storage and NATS consume the engine's output: takes the updates and logs a summary.
async fn summarize(mut updates: mpsc::Receiver<Vec<CandleUpdate>>, stats: Arc<EngineStats>) {
    let mut every = tokio::time::interval(Duration::from_secs(30));
    every.reset();
    loop {
        tokio::select! {
            batch = updates.recv() => if batch.is_none() { break },
            _ = every.tick() => {
                let report = stats.report();
                let completed: u64 = report.granularities.iter().map(|g| g.completed).sum();
                let updates: u64 = report.granularities.iter().map(|g| g.updates).sum();
                tracing::info!(
                    trades = report.trades,
                    updates,
                    completed,
                    duplicates = report.duplicates,
                    too_late = report.too_late,
                    "engine summary (since start)"
                );
            }
        }
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .with_state(state)
}

/// `GET /health`: the feed's connections and authentication; 503 while no connection is up.
async fn health(State(state): State<AppState>) -> Response {
    let feed = state.feed.report();
    let ok = feed.connected > 0;
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "simulated": state.simulated,
        "feed_url": state.ws_url,
        "feed": feed,
        "engine": state.engine.report(),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// rustls needs one process-wide crypto provider for `wss://` and `https://`.
fn install_tls_provider() {
    // Already installed (a second app in one process) is fine.
    let _already = rustls::crypto::ring::default_provider().install_default();
}

/// `spot-canvas serve`.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(?config, "starting");
    let app = App::build(&config).await?;
    tracing::info!(port = app.port(), "listening");
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        stop.cancel();
    });
    app.run_until_stopped(cancel).await
}
