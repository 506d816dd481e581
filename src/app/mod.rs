//! The service: builds the stages from the configuration, serves HTTP, and supervises them
//! until a stop signal.
//!
//! In: the [`Config`] and a cancellation token. Out: the running pipeline
//! feed → engine → fan-out → batch writer (PostgreSQL) and publisher (NATS), the reconciler
//! beside the engine (feed windows in, REST backfills out), and the HTTP server (health, candle
//! history, products).
//! On cancel, the stages stop in order: the feed closes its sockets politely, the engine
//! finishes what it holds, the writer flushes to the database (what it cannot write in time
//! waits for the next start in JetStream with an external NATS, else in its spool under
//! `DATA_DIR`), then the embedded
//! database (if any) and the HTTP server stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::{EmbeddedNats, Publisher};
use crate::candles::{Engine, EngineSettings};
use crate::config::Config;
use crate::feed::{Feed, FeedSettings};
use crate::live::LiveState;
use crate::model::{CandleUpdate, Clock, SystemClock};
use crate::ops::clock::ClockCheck;
use crate::reconcile::{ReconcileSettings, Reconciler};
use crate::store::{BatchWriter, EmbeddedPostgres, Repository, WriterSettings};
use crate::supervise::Stages;
use crate::telemetry::Channels;
use crate::web::AppState;

mod connect;
mod migrate;
mod run;

pub use connect::open_database;
use connect::{connect_bus, install_tls_provider, stop_embedded};
pub use migrate::migrate;

/// How long stages get to finish after a stop signal: with the HTTP server's last second and
/// the NATS flush, the whole stop fits in Cloud Run's 10 s between SIGTERM and SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(6);
/// Capacity of the channels between engine, fan-out and writer (batches of updates).
const UPDATE_CHANNEL: usize = 1024;

/// Where NATS is, and the embedded servers started for this process (stopped with it).
#[derive(Debug)]
struct Servers {
    /// May carry credentials (the embedded server's token): its `Debug` shows none of it.
    nats_url: SecretString,
    embedded: Option<EmbeddedPostgres>,
    embedded_nats: Option<EmbeddedNats>,
}

/// The ingest pipeline of an instance whose role ingests.
#[derive(Debug)]
struct Ingest {
    feed: Feed,
    engine: Engine,
    reconciler: Reconciler,
    writer: BatchWriter,
    publisher: Publisher,
    /// Engine output; the fan-out hands it to the writer and the publisher.
    updates: mpsc::Receiver<Vec<CandleUpdate>>,
    to_writer: mpsc::Sender<Vec<CandleUpdate>>,
    to_publisher: mpsc::Sender<Vec<CandleUpdate>>,
    /// The clock comparison with the exchange (`None`: `CLOCK_CHECK_SECS=0`).
    clock: Option<ClockCheck>,
}

/// A built, not yet running, service.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    /// `METRICS_PORT`'s listener, when set.
    metrics_listener: Option<TcpListener>,
    /// `None` for a web-only instance.
    ingest: Option<Ingest>,
    /// The bounded channels the monitor samples.
    channels: Channels,
    nats: (async_nats::Client, async_nats::jetstream::kv::Store),
    embedded: Option<Arc<EmbeddedPostgres>>,
    embedded_nats: Option<EmbeddedNats>,
    state: AppState,
    stages: Arc<Stages>,
    /// The service's pool (the API reads through its own, in `state`).
    repository: Repository,
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
        let metrics_listener =
            match config.metrics_port {
                None => None,
                Some(port) => {
                    let addr = SocketAddr::from(([0, 0, 0, 0], port));
                    Some(TcpListener::bind(addr).await.map_err(|e| {
                        anyhow::anyhow!("cannot listen on {addr} (METRICS_PORT): {e}")
                    })?)
                }
            };
        let (pool, embedded) = open_database(config).await?;
        let (nats_url, embedded_nats) = match &config.nats_url {
            Some(url) => (SecretString::from(url.clone()), None),
            None => {
                match EmbeddedNats::start(config.nats_server_bin.as_deref(), &config.data_dir).await
                {
                    Ok(nats) => (SecretString::from(nats.client_url()), Some(nats)),
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
        match Self::assemble(
            config,
            settings,
            [Some(listener), metrics_listener],
            pool,
            servers,
        )
        .await
        {
            Ok(app) => Ok(app),
            Err((e, servers)) => {
                stop_embedded(servers.embedded.as_ref(), servers.embedded_nats.as_ref()).await;
                Err(e)
            }
        }
    }

    /// The stages, once the database and NATS are up. On error, hands the embedded servers
    /// back so the caller stops them.
    #[allow(clippy::too_many_lines)]
    async fn assemble(
        config: &Config,
        settings: FeedSettings,
        [listener, metrics_listener]: [Option<TcpListener>; 2],
        pool: sqlx::PgPool,
        servers: Servers,
    ) -> Result<App, (anyhow::Error, Servers)> {
        let metrics = crate::telemetry::recorder::install();
        crate::telemetry::recorder::register(config.role.ingests(), config.role.serves_web());
        let table = if config.migrate_on_start {
            match crate::store::migrate_up(&pool).await {
                Ok(kind) => Some(kind),
                Err(e) => return Err((e, servers)),
            }
        } else {
            tracing::info!("MIGRATE_ON_START=false: not applying migrations");
            None
        };
        // An instance that ingests applies its engine's updates to its live state directly and
        // names itself in what it publishes, so that their echo from NATS is skipped unread.
        let origin = config.role.ingests().then(crate::bus::new_origin);
        let live = match &origin {
            Some(origin) => LiveState::with_origin(origin.clone()),
            None => LiveState::new(),
        };
        let nats = match connect_bus(
            servers.nats_url.expose_secret(),
            &live,
            config.nats_kv_replicas,
        )
        .await
        {
            Ok(nats) => nats,
            Err(e) => return Err((e, servers)),
        };
        // The API reads through its own small pool: it cannot take the writer's connections.
        let api_repository = Repository::new(crate::store::api_pool(&pool));
        let repository = Repository::new(pool);
        let channels = Channels::new();
        let ingest = config
            .role
            .ingests()
            .then(|| build_ingest(config, settings, &repository, &nats, &channels, origin));
        let stages = Stages::new();
        let streams = crate::web::stream::Streams::new(config.stream);
        let dev = if config.dev_reload && config.role.serves_web() {
            tracing::warn!(dir = %config.static_dir.display(), "DEV_RELOAD: pages reload on restarts and asset changes");
            Some(
                crate::web::pages::dev::DevReload::start(
                    config.static_dir.clone(),
                    streams.stop.clone(),
                )
                .await,
            )
        } else {
            None
        };
        let pages = crate::web::pages::Pages::new(&config.static_dir, dev);
        let idle = crate::ops::reports::Reports::default();
        let reports = crate::ops::reports::Reports {
            feed: ingest.as_ref().map_or(idle.feed, |i| i.feed.health()),
            engine: ingest.as_ref().map_or(idle.engine, |i| i.engine.stats()),
            writer: ingest.as_ref().map_or(idle.writer, |i| i.writer.stats()),
            publisher: ingest
                .as_ref()
                .map_or(idle.publisher, |i| i.publisher.stats()),
            reconcile: ingest
                .as_ref()
                .map_or(idle.reconcile, |i| i.reconciler.stats()),
            stages: stages.clone(),
            alarms: idle.alarms,
            clock: ingest
                .as_ref()
                .and_then(|i| i.clock.as_ref())
                .map(ClockCheck::state),
        };
        let state = AppState {
            reports,
            instance: crate::web::Instance {
                role: config.role,
                shard_index: config.shard_index,
                shard_count: config.shard_count,
                simulated: !config.is_production_feed(),
                ws_url: config.coinbase_ws_url.clone(),
                table,
            },
            live,
            products: crate::web::ProductDirectory::new(api_repository.clone()),
            repository: api_repository,
            nats: Some(nats.0.clone()),
            http: crate::web::HttpSettings::from_config(config),
            streams,
            pages,
            exporter: crate::web::Exporter {
                handle: metrics,
                separate: metrics_listener.is_some(),
            },
            answers: crate::web::Answers::default(),
        };
        let Some(listener) = listener else {
            return Err((anyhow::anyhow!("no listener for PORT"), servers));
        };
        Ok(App {
            listener,
            metrics_listener,
            ingest,
            channels,
            nats,
            embedded: servers.embedded.map(Arc::new),
            embedded_nats: servers.embedded_nats,
            state,
            stages,
            repository,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// `METRICS_PORT`'s port, when it is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The stage registry (what `/health` reports; tests end a stage through it).
    pub fn stages(&self) -> Arc<Stages> {
        self.stages.clone()
    }
}

/// The feed → engine → fan-out → writer and publisher pipeline, with the reconciler and the
/// clock check; its bounded channels go into `channels` for the monitor.
fn build_ingest(
    config: &Config,
    settings: FeedSettings,
    repository: &Repository,
    nats: &(async_nats::Client, async_nats::jetstream::kv::Store),
    channels: &Channels,
    origin: Option<std::sync::Arc<str>>,
) -> Ingest {
    let (tx, events) = mpsc::channel(settings.channel_capacity);
    channels.register("feed_events", &tx);
    let feed = Feed::new(settings, tx);
    let (updates_tx, updates) = mpsc::channel(UPDATE_CHANNEL);
    channels.register("engine_updates", &updates_tx);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let engine_settings = EngineSettings::default();
    let (backfills_tx, backfills) = mpsc::channel(64);
    channels.register("backfills", &backfills_tx);
    let (notices_tx, notices) = mpsc::unbounded_channel();
    let engine = Engine::new(engine_settings, clock.clone(), events, updates_tx)
        .with_reconciler(backfills, notices_tx)
        .with_channels(channels.clone());
    let reconcile_settings = ReconcileSettings::from_config(config, engine_settings.timing);
    let reconciler = Reconciler::new(
        reconcile_settings,
        clock,
        repository.clone(),
        notices,
        backfills_tx,
    );
    let (to_writer, writer_rx) = mpsc::channel(UPDATE_CHANNEL);
    channels.register("writer", &to_writer);
    let writer = BatchWriter::new(
        repository.clone(),
        WriterSettings {
            max_rows: config.writer_batch_rows,
            flush_interval: Duration::from_millis(config.writer_flush_ms),
            ..WriterSettings::default()
        },
        writer_rx,
    )
    .with_spool(crate::store::Spool::in_dir(&config.data_dir));
    // An external NATS outlives the instance (on Cloud Run `DATA_DIR` is memory): the rows of
    // the stop go to JetStream first. The embedded server's store is in `DATA_DIR` anyway.
    let writer = if config.nats_url.is_some() {
        writer.with_stream_spool(crate::store::StreamSpool::new(
            nats.0.clone(),
            config.nats_kv_replicas,
        ))
    } else {
        writer
    };
    let (to_publisher, publisher_rx) = mpsc::channel(UPDATE_CHANNEL);
    channels.register("publisher", &to_publisher);
    let mut publisher = Publisher::new(nats.0.clone(), nats.1.clone(), publisher_rx)
        .with_channels(channels.clone());
    if let Some(origin) = origin {
        publisher = publisher.with_origin(origin);
    }
    let clock = (config.clock_check_secs > 0).then(|| {
        ClockCheck::new(
            &config.coinbase_rest_url,
            Duration::from_secs(config.clock_check_secs),
        )
    });
    Ingest {
        feed,
        engine,
        reconciler,
        writer,
        publisher,
        updates,
        to_writer,
        to_publisher,
        clock,
    }
}

/// `spot-canvas serve`. The stop signal is watched before anything starts: a SIGTERM while
/// the database is still being created or migrated drops the build, and the embedded servers'
/// guards stop them.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        stop.cancel();
    });
    tracing::info!(?config, "starting");
    let app = tokio::select! {
        app = App::build(&config) => app?,
        () = cancel.cancelled() => {
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    tracing::info!(
        port = app.port(),
        metrics_port = app.metrics_port(),
        "listening"
    );
    app.run_until_stopped(cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nats_url_with_its_token_never_shows_in_debug() {
        let servers = Servers {
            nats_url: SecretString::from("nats://0123456789abcdef@127.0.0.1:4222".to_owned()),
            embedded: None,
            embedded_nats: None,
        };
        let shown = format!("{servers:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }
}
