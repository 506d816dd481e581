//! The embedded default database: a local PostgreSQL cluster under `DATA_DIR`.
//!
//! In: the data directory. Out: a running server on a free loopback port and the URL to reach
//! it (with a generated password, kept in `DATA_DIR/postgres.password`, mode 0600). The first
//! run creates the cluster with `initdb`; later runs reuse it, so data persists. The server
//! binaries come from PATH or `/usr/lib/postgresql/*/bin`. As root (which `initdb` refuses) the
//! server runs as the `postgres` user; its directory must then be reachable by that user
//! through every parent. The unix socket lives inside the cluster directory.
//!
//! The postmaster is this process's own child, with a minimal environment (nothing of the
//! service's: no key, no `DATABASE_URL`). It is never left running: [`EmbeddedPostgres::stop`]
//! is the normal end, and dropping the last owner stops it otherwise (a failed or abandoned
//! start, a panic). A server of the same directory left by an earlier run (killed with -9) is
//! stopped at the next start; a stale `postmaster.pid` is removed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::children::{OwnedChild, Signal, StopPlan};

mod server;
mod setup;

/// The database the service uses inside the embedded cluster.
pub const DATABASE: &str = "spot_canvas";
const CREATE_DATABASE: &str = "CREATE DATABASE spot_canvas";
/// The role the service connects as.
pub const USER: &str = "spot";

/// How long one connection attempt to the embedded server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the embedded database could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found on PATH or under /usr/lib/postgresql/*/bin; install them (Debian: apt-get install postgresql) or set DATABASE_URL"
    )]
    BinariesNotFound,
    #[error(
        "running as root, the server must run as the `postgres` user, which does not exist; create it or set DATABASE_URL"
    )]
    NoPostgresUser,
    #[error(
        "the postgres user cannot reach {0} (a parent directory lacks execute permission for it); choose a DATA_DIR it can reach, such as /var/lib/spot-canvas, or set DATABASE_URL"
    )]
    Unreachable(PathBuf),
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running embedded cluster. Dropping it stops the server unless [`EmbeddedPostgres::stop`]
/// already did (share it through an `Arc`: the server stops when the last owner goes).
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    cluster: PathBuf,
    port: u16,
    password: SecretString,
    as_postgres: Option<(u32, u32)>,
    /// The postmaster; `None` once stopped. Dropping it stops the server.
    server: Mutex<Option<OwnedChild>>,
    /// Set by an explicit stop, cleared by a start: the watchdog leaves a stopped server alone.
    stopped: AtomicBool,
}

/// `pg_ctl`'s shutdown modes as signals to the postmaster, each escalating to the next.
const SMART: StopPlan = &[
    (Signal::TERM, Duration::from_secs(60)),
    (Signal::QUIT, Duration::from_secs(10)),
];
const FAST: StopPlan = &[
    (Signal::INT, Duration::from_secs(60)),
    (Signal::QUIT, Duration::from_secs(10)),
];
const IMMEDIATE: StopPlan = &[(Signal::QUIT, Duration::from_secs(10))];
/// How a server that nobody stopped is stopped when dropped (a bounded wait: `Drop` blocks).
const ON_DROP: StopPlan = &[
    (Signal::INT, Duration::from_secs(15)),
    (Signal::QUIT, Duration::from_secs(5)),
];

fn plan_for(mode: &str) -> Result<StopPlan, EmbeddedError> {
    match mode {
        "smart" => Ok(SMART),
        "fast" => Ok(FAST),
        "immediate" => Ok(IMMEDIATE),
        other => Err(EmbeddedError::Command {
            what: "stopping PostgreSQL".into(),
            detail: format!("unknown shutdown mode {other:?} (smart, fast or immediate)"),
        }),
    }
}

impl EmbeddedPostgres {
    /// Creates the cluster if needed and starts it.
    pub async fn start(data_dir: &Path) -> Result<EmbeddedPostgres, EmbeddedError> {
        let bin_dir = setup::find_bin_dir().ok_or(EmbeddedError::BinariesNotFound)?;
        std::fs::create_dir_all(data_dir)?;
        let data_dir = std::fs::canonicalize(data_dir)?;
        let cluster = data_dir.join("postgres");
        let as_postgres = if setup::is_root() {
            let ids = setup::postgres_user_ids().ok_or(EmbeddedError::NoPostgresUser)?;
            setup::check_reachable(&data_dir)?;
            Some(ids)
        } else {
            None
        };
        let initialized = cluster.join("PG_VERSION").exists();
        let password = setup::password(&data_dir.join("postgres.password"), initialized)?;
        let mut pg = EmbeddedPostgres {
            bin_dir,
            data_dir,
            cluster,
            port: 0,
            password,
            as_postgres,
            server: Mutex::new(None),
            stopped: AtomicBool::new(false),
        };
        if !initialized {
            pg.init().await?;
        }
        server::end_leftover(&pg.cluster).await?;
        pg.start_on_free_port().await?;
        pg.ensure_database().await?;
        tracing::info!(
            cluster = %pg.cluster.display(),
            port = pg.port,
            "embedded PostgreSQL running"
        );
        Ok(pg)
    }

    /// The connection URL (holds the password: keep it secret).
    pub fn url(&self) -> SecretString {
        SecretString::from(self.url_for(DATABASE))
    }

    fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{database}",
            self.password.expose_secret(),
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster directory (`-D`).
    pub fn cluster_dir(&self) -> &Path {
        &self.cluster
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut slot = self.slot();
        let child = slot.as_mut()?;
        child.exited().is_none().then(|| child.id())
    }

    fn slot(&self) -> MutexGuard<'_, Option<OwnedChild>> {
        self.server.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn ensure_database(&self) -> Result<(), EmbeddedError> {
        use sqlx::Connection;
        let failed = |what: &str, e: &dyn std::fmt::Display| EmbeddedError::Command {
            what: what.to_owned(),
            detail: e.to_string(),
        };
        let mut conn = self.connect("postgres").await?;
        let exists = tokio::time::timeout(
            CONNECT_TIMEOUT,
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            )
            .bind(DATABASE)
            .fetch_one(&mut conn),
        )
        .await
        .map_err(|e| failed("checking the database", &e))?
        .map_err(|e| failed("checking the database", &e))?;
        if !exists {
            tokio::time::timeout(
                Duration::from_secs(60),
                sqlx::query(CREATE_DATABASE).execute(&mut conn),
            )
            .await
            .map_err(|e| failed("creating the database", &e))?
            .map_err(|e| failed("creating the database", &e))?;
        }
        let _closed = conn.close().await;
        Ok(())
    }

    /// One connection to `database`, with a deadline.
    async fn connect(&self, database: &str) -> Result<sqlx::PgConnection, EmbeddedError> {
        use sqlx::Connection;
        let url = self.url_for(database);
        let failed = |detail: String| EmbeddedError::Command {
            what: "connecting to the embedded server".into(),
            detail,
        };
        tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect(&url))
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(e.to_string()))
    }

    /// Whether the server (our child) is running.
    pub async fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Starts the server again on the same port (after it died or was stopped).
    pub async fn restart(&self) -> Result<(), EmbeddedError> {
        {
            let mut slot = self.slot();
            if let Some(child) = slot.as_mut()
                && child.exited().is_none()
            {
                self.stopped.store(false, Ordering::SeqCst);
                return Ok(());
            }
            *slot = None;
        }
        server::end_leftover(&self.cluster).await?;
        self.launch().await.map_err(server::Launch::into_error)
    }

    /// Stops the server: `fast` lets sessions end and checkpoints; `immediate` does not;
    /// `smart` waits for sessions to end. Each escalates to the next, then to SIGKILL.
    pub async fn stop_with(&self, mode: &str) -> Result<(), EmbeddedError> {
        let plan = plan_for(mode)?;
        self.stopped.store(true, Ordering::SeqCst);
        let taken = self.slot().take();
        if let Some(mut child) = taken {
            // Dropped half-way (the caller gave up), the child's guard finishes the stop.
            if child.stop(plan).await.is_none() {
                return Err(EmbeddedError::Command {
                    what: "stopping PostgreSQL".into(),
                    detail: format!("process {} did not end", child.id()),
                });
            }
        }
        Ok(())
    }

    /// Stops the server cleanly.
    pub async fn stop(&self) -> Result<(), EmbeddedError> {
        self.stop_with("fast").await
    }

    /// Stops the server from synchronous code (a `Drop`), ignoring failures.
    pub fn stop_blocking(&self, mode: &str) {
        let plan = plan_for(mode).unwrap_or(ON_DROP);
        self.stopped.store(true, Ordering::SeqCst);
        let taken = self.slot().take();
        if let Some(mut child) = taken {
            child.stop_blocking(plan);
        }
    }

    /// A URL for another database of the same cluster (tests create one per test).
    pub fn url_of(&self, database: &str) -> SecretString {
        SecretString::from(self.url_for(database))
    }

    /// Restarts the server whenever it is found dead, until `cancel`. A server stopped on
    /// purpose ([`EmbeddedPostgres::stop_with`]) is left alone.
    pub async fn supervise(&self, cancel: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            if self.stopped.load(Ordering::SeqCst) || self.is_running().await {
                continue;
            }
            tracing::warn!("embedded PostgreSQL is not running, restarting it");
            if let Err(e) = self.restart().await {
                tracing::error!(error = %e, "cannot restart embedded PostgreSQL");
            }
        }
    }
}
