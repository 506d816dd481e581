//! The service: builds the stages from the configuration, serves HTTP, and supervises them
//! until a stop signal.
//!
//! In: the [`Config`] and a cancellation token. Out: the running pipeline
//! feed → engine → fan-out → batch writer (PostgreSQL) and publisher (NATS), the reconciler
//! beside the engine (feed windows in, REST backfills out), and the HTTP server (`GET /health`,
//! `GET /api/v1/candles`).
//! On cancel, the stages stop in order: the feed closes its sockets politely, the engine
//! finishes what it holds, the writer flushes everything to the database, then the embedded
//! database (if any) and the HTTP server stop.

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

use crate::bus::{EmbeddedNats, LiveState, Publisher, PublisherStats};
use crate::candles::{Engine, EngineSettings, EngineStats};
use crate::config::Config;
use crate::feed::{Feed, FeedHealth, FeedSettings};
use crate::model::{CandleUpdate, Clock, SystemClock};
use crate::reconcile::{ReconcileSettings, ReconcileStats, Reconciler};
use crate::store::{
    BatchWriter, EmbeddedPostgres, Repository, TableKind, WriterSettings, WriterStats,
};

/// How long stages get to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
/// Capacity of the channels between engine, fan-out and writer (batches of updates).
const UPDATE_CHANNEL: usize = 1024;

/// State the HTTP handlers read.
#[derive(Debug, Clone)]
pub struct AppState {
    pub feed: Arc<FeedHealth>,
    pub engine: Arc<EngineStats>,
    pub writer: Arc<WriterStats>,
    pub publisher: Arc<PublisherStats>,
    pub reconcile: Arc<ReconcileStats>,
    pub live: LiveState,
    pub table: Option<TableKind>,
    pub repository: Repository,
    /// The feed is the exchange simulator, not Coinbase.
    pub simulated: bool,
    pub ws_url: String,
}

/// Where NATS is, and the embedded servers started for this process (stopped with it).
#[derive(Debug)]
struct Servers {
    nats_url: String,
    embedded: Option<EmbeddedPostgres>,
    embedded_nats: Option<EmbeddedNats>,
}

/// A built, not yet running, service.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    feed: Feed,
    engine: Engine,
    reconciler: Reconciler,
    writer: BatchWriter,
    publisher: Publisher,
    /// Engine output; the fan-out hands it to the writer and the publisher.
    updates: mpsc::Receiver<Vec<CandleUpdate>>,
    to_writer: mpsc::Sender<Vec<CandleUpdate>>,
    to_publisher: mpsc::Sender<Vec<CandleUpdate>>,
    nats: (async_nats::Client, async_nats::jetstream::kv::Store),
    embedded: Option<Arc<EmbeddedPostgres>>,
    embedded_nats: Option<EmbeddedNats>,
    state: AppState,
}

impl App {
    /// Binds the port, opens (or starts) the database and builds the stages.
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
        let (pool, embedded) = open_database(config).await?;
        let (nats_url, embedded_nats) = match &config.nats_url {
            Some(url) => (url.clone(), None),
            None => {
                match EmbeddedNats::start(config.nats_server_bin.as_deref(), &config.data_dir).await
                {
                    Ok(nats) => (nats.url(), Some(nats)),
                    Err(e) => {
                        stop_embedded(embedded.as_ref(), None).await;
                        return Err(e);
                    }
                }
            }
        };
        let servers = Servers {
            nats_url,
            embedded,
            embedded_nats,
        };
        match Self::assemble(config, settings, listener, pool, servers).await {
            Ok(app) => Ok(app),
            Err((e, servers)) => {
                stop_embedded(servers.embedded.as_ref(), servers.embedded_nats.as_ref()).await;
                Err(e)
            }
        }
    }

    /// The stages, once the database and NATS are up. On error, hands the embedded servers
    /// back so the caller stops them.
    async fn assemble(
        config: &Config,
        settings: FeedSettings,
        listener: TcpListener,
        pool: sqlx::PgPool,
        servers: Servers,
    ) -> Result<App, (anyhow::Error, Servers)> {
        let table = if config.migrate_on_start {
            match crate::store::migrate_up(&pool).await {
                Ok(kind) => Some(kind),
                Err(e) => return Err((e, servers)),
            }
        } else {
            tracing::info!("MIGRATE_ON_START=false: not applying migrations");
            None
        };
        let live = LiveState::new();
        let nats = match connect_bus(&servers.nats_url, &live, config.nats_kv_replicas).await {
            Ok(nats) => nats,
            Err(e) => return Err((e, servers)),
        };
        let (tx, events) = mpsc::channel(settings.channel_capacity);
        let feed = Feed::new(settings, tx);
        let (updates_tx, updates) = mpsc::channel(UPDATE_CHANNEL);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let engine_settings = EngineSettings::default();
        let (backfills_tx, backfills) = mpsc::channel(64);
        let (notices_tx, notices) = mpsc::unbounded_channel();
        let engine = Engine::new(engine_settings, clock.clone(), events, updates_tx)
            .with_reconciler(backfills, notices_tx);
        let repository = Repository::new(pool);
        let reconcile_settings = ReconcileSettings::from_config(config, engine_settings.timing);
        let reconciler = Reconciler::new(
            reconcile_settings,
            clock,
            repository.clone(),
            notices,
            backfills_tx,
        );
        let (to_writer, writer_rx) = mpsc::channel(UPDATE_CHANNEL);
        let writer = BatchWriter::new(
            repository.clone(),
            WriterSettings {
                max_rows: config.writer_batch_rows,
                flush_interval: Duration::from_millis(config.writer_flush_ms),
                ..WriterSettings::default()
            },
            writer_rx,
        );
        let (to_publisher, publisher_rx) = mpsc::channel(UPDATE_CHANNEL);
        let publisher = Publisher::new(nats.0.clone(), nats.1.clone(), publisher_rx);
        let state = AppState {
            feed: feed.health(),
            engine: engine.stats(),
            writer: writer.stats(),
            publisher: publisher.stats(),
            reconcile: reconciler.stats(),
            live,
            table,
            repository,
            simulated: !config.is_production_feed(),
            ws_url: config.coinbase_ws_url.clone(),
        };
        Ok(App {
            listener,
            feed,
            engine,
            reconciler,
            writer,
            publisher,
            updates,
            to_writer,
            to_publisher,
            nats,
            embedded: servers.embedded.map(Arc::new),
            embedded_nats: servers.embedded_nats,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Runs until `cancel`, then stops the stages in order (see the module docs).
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let App {
            listener,
            feed,
            engine,
            reconciler,
            writer,
            publisher,
            updates,
            to_writer,
            to_publisher,
            nats,
            embedded,
            embedded_nats,
            state,
        } = self;
        if state.simulated {
            tracing::warn!(ws_url = %state.ws_url, "running on a SIMULATED feed, not Coinbase");
        }
        let supervisor_cancel = CancellationToken::new();
        let supervisor = embedded.clone().map(|pg| {
            let cancel = supervisor_cancel.clone();
            tokio::spawn(async move { pg.supervise(cancel).await })
        });
        let nats_supervisor = embedded_nats.clone().map(|n| {
            let cancel = supervisor_cancel.clone();
            tokio::spawn(async move { n.supervise(cancel).await })
        });
        let live_cancel = CancellationToken::new();
        let live_task = tokio::spawn(state.live.clone().run(
            nats.0.clone(),
            nats.1.clone(),
            live_cancel.clone(),
        ));
        let catalog_task = tokio::spawn(keep_products(feed.catalog(), state.repository.clone()));
        let feed_task = tokio::spawn(feed.run(cancel.child_token()));
        // The engine, fan-out and writer stop when their input closes, after what they hold.
        let engine_task = tokio::spawn(engine.run(CancellationToken::new()));
        // The reconciler stops when the engine does (its notices close).
        let reconciler_task = tokio::spawn(reconciler.run(CancellationToken::new()));
        let fanout_task = tokio::spawn(fan_out(updates, to_writer, to_publisher));
        let writer_task = tokio::spawn(writer.run());
        let publisher_task = tokio::spawn(publisher.run());
        let summary_cancel = CancellationToken::new();
        let summary = tokio::spawn(summarize(state.clone(), summary_cancel.clone()));
        let http_cancel = CancellationToken::new();
        let server = tokio::spawn(
            axum::serve(listener, router(state.clone()))
                .with_graceful_shutdown(http_cancel.clone().cancelled_owned())
                .into_future(),
        );
        tracing::info!("serving");
        cancel.cancelled().await;
        tracing::info!("stopping");
        let stopped = async {
            report_exit("feed", feed_task.await);
            catalog_task.abort();
            report_exit("engine", engine_task.await);
            report_exit("reconciler", reconciler_task.await);
            report_exit("fan-out", fanout_task.await.map(Ok));
            report_exit("writer", writer_task.await);
            report_exit("publisher", publisher_task.await);
            live_cancel.cancel();
            report_exit("live state", live_task.await);
            let _drained = nats.0.flush().await;
            let report = state.writer.report();
            tracing::info!(
                written = report.written_rows,
                pending = report.pending,
                "writer flushed"
            );
            summary_cancel.cancel();
            let _summary = summary.await;
            supervisor_cancel.cancel();
            for supervisor in [supervisor, nats_supervisor].into_iter().flatten() {
                let _supervisor = supervisor.await;
            }
            stop_embedded(embedded.as_deref(), embedded_nats.as_ref()).await;
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

/// Connects to NATS (reconnects and slow consumers make the live state reload from the KV)
/// and creates or updates the KV bucket.
async fn connect_bus(
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

async fn stop_embedded(pg: Option<&EmbeddedPostgres>, nats: Option<&EmbeddedNats>) {
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

fn report_exit(name: &str, outcome: Result<anyhow::Result<()>, tokio::task::JoinError>) {
    match outcome {
        Ok(Ok(())) => tracing::info!(stage = name, "stage stopped"),
        Ok(Err(e)) => tracing::error!(stage = name, error = ?e, "stage failed"),
        Err(e) => tracing::error!(stage = name, error = %e, "stage panicked or was aborted"),
    }
}

/// Keeps `trading_pairs` in step with the feed's product list.
async fn keep_products(
    mut catalog: tokio::sync::watch::Receiver<Vec<crate::model::Product>>,
    repository: Repository,
) {
    while catalog.changed().await.is_ok() {
        let products = catalog.borrow_and_update().clone();
        match repository.upsert_products(&products).await {
            Ok(n) => tracing::info!(products = n, "trading pairs updated"),
            // The next refresh (every 10 minutes) tries again.
            Err(e) => tracing::warn!(error = %e, "cannot update trading pairs"),
        }
    }
}

/// Hands every batch of the engine's output to the publisher and the writer. Neither blocks
/// on NATS or the database (they coalesce while writing), so this never holds up the engine.
async fn fan_out(
    mut updates: mpsc::Receiver<Vec<CandleUpdate>>,
    to_writer: mpsc::Sender<Vec<CandleUpdate>>,
    to_publisher: mpsc::Sender<Vec<CandleUpdate>>,
) {
    let (mut storing, mut publishing) = (true, true);
    while let Some(batch) = updates.recv().await {
        if publishing && to_publisher.send(batch.clone()).await.is_err() {
            tracing::error!("the publisher stopped; candle updates are no longer published");
            publishing = false;
        }
        if storing && to_writer.send(batch).await.is_err() {
            tracing::error!("the writer stopped; candle updates are no longer stored");
            storing = false;
        }
    }
}

/// Logs what the pipeline did, every 30 seconds.
async fn summarize(state: AppState, cancel: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(30));
    every.reset();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let engine = state.engine.report();
        let writer = state.writer.report();
        let feed = state.feed.report();
        tracing::info!(
            connected = feed.connected,
            products = feed.products,
            trades = engine.trades,
            updates = engine.granularities.iter().map(|g| g.updates).sum::<u64>(),
            completed = engine
                .granularities
                .iter()
                .map(|g| g.completed)
                .sum::<u64>(),
            duplicates = engine.duplicates,
            too_late = engine.too_late,
            rows_written = writer.written_rows,
            write_failures = writer.failures,
            pending = writer.pending,
            "pipeline summary (since start)"
        );
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/v1/candles", get(crate::web::api::candles))
        .with_state(state)
}

/// `GET /health`: the feed's connections, the engine's and the writer's counts; 503 while no
/// feed connection is up.
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
        "store": {
            "table": state.table,
            "writer": state.writer.report(),
        },
        "reconcile": state.reconcile.report(),
        "bus": {
            "publisher": state.publisher.report(),
            "live": state.live.report(),
        },
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

/// `spot-canvas migrate up|down|status`.
pub async fn migrate(config: Config, action: crate::cli::MigrateAction) -> anyhow::Result<()> {
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
