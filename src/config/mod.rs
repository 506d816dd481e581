//! Configuration: one typed [`Config`] read from environment variables (and an optional
//! `.env`, loaded by `main`), validated at start.
//!
//! In: a variable lookup (the process environment, or a map in tests). Out: a [`Config`], or a
//! [`ConfigError`] naming the variable, what is wrong with it and what is accepted. Secrets
//! (the Coinbase private key, the database URL's password) are wrapped so that `Debug` and
//! logs never show them.

mod lookup;
mod parse;
mod redact;
mod stream;
mod variables;

use std::fmt;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

pub use redact::{REDACTED, redact};
pub use stream::StreamConfig;
pub use variables::{PRODUCTION_REST_URL, PRODUCTION_WS_URL, VARIABLES, Variable};

/// What `serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The feed, the engine, the reconciler, the writer and the publisher; HTTP serves
    /// health and metrics only.
    Ingest,
    /// The dashboard, the API and the streams, fed by NATS and PostgreSQL.
    Web,
    /// Both in one process (the default).
    Both,
}

impl Role {
    pub fn ingests(self) -> bool {
        matches!(self, Role::Ingest | Role::Both)
    }

    pub fn serves_web(self) -> bool {
        matches!(self, Role::Web | Role::Both)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Web => "web",
            Role::Both => "both",
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Which browser origins may call the HTTP API (CORS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No CORS headers: browsers refuse cross-origin reads.
    #[default]
    None,
    /// `*`: any origin.
    Any,
    /// These origins exactly (`scheme://host[:port]`, lowercase).
    List(Vec<String>),
}

/// Optional CDP credentials for authenticated subscribes.
#[derive(Clone)]
pub struct CoinbaseCredentials {
    /// Key name, `organizations/{org}/apiKeys/{key}`: not secret, it names the key.
    pub api_key: String,
    /// The private key, with `\n` escapes already turned into newlines.
    pub private_key: SecretString,
}

impl fmt::Debug for CoinbaseCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoinbaseCredentials")
            .field("api_key", &self.api_key)
            .field("private_key", &"[REDACTED]")
            .finish()
    }
}

/// The service's configuration.
#[derive(Clone)]
pub struct Config {
    pub role: Role,
    pub port: u16,
    /// `Some`: `/metrics` is served on this port only.
    pub metrics_port: Option<u16>,
    pub data_dir: PathBuf,
    /// `None`: start an embedded PostgreSQL cluster.
    pub database_url: Option<SecretString>,
    pub migrate_on_start: bool,
    pub writer_batch_rows: usize,
    pub writer_flush_ms: u64,
    /// `None`: start an embedded nats-server.
    pub nats_url: Option<String>,
    pub nats_kv_replicas: usize,
    pub nats_server_bin: Option<PathBuf>,
    pub coinbase_ws_url: String,
    pub coinbase_rest_url: String,
    pub coinbase_credentials: Option<CoinbaseCredentials>,
    /// `None`: discover products from the REST products list.
    pub products: Option<Vec<crate::model::ProductId>>,
    pub shard_index: u32,
    pub shard_count: u32,
    pub products_per_connection: usize,
    pub backfill_horizon_hours: u32,
    pub history_buckets: u32,
    pub rest_requests_per_second: u32,
    pub crosscheck_interval_secs: u64,
    /// 0: the clock is not compared with the exchange's.
    pub clock_check_secs: u64,
    pub cors_origins: CorsOrigins,
    pub request_timeout_secs: u64,
    pub static_dir: PathBuf,
    pub dev_reload: bool,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub stream: StreamConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("role", &self.role)
            .field("port", &self.port)
            .field("metrics_port", &self.metrics_port)
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self
                    .database_url
                    .as_ref()
                    .map(|u| redact(u.expose_secret())),
            )
            .field("migrate_on_start", &self.migrate_on_start)
            .field("writer_batch_rows", &self.writer_batch_rows)
            .field("writer_flush_ms", &self.writer_flush_ms)
            .field("nats_url", &self.nats_url.as_deref().map(redact))
            .field("nats_kv_replicas", &self.nats_kv_replicas)
            .field("nats_server_bin", &self.nats_server_bin)
            .field("coinbase_ws_url", &redact(&self.coinbase_ws_url))
            .field("coinbase_rest_url", &redact(&self.coinbase_rest_url))
            .field("coinbase_credentials", &self.coinbase_credentials)
            .field("products", &self.products)
            .field("shard_index", &self.shard_index)
            .field("shard_count", &self.shard_count)
            .field("products_per_connection", &self.products_per_connection)
            .field("backfill_horizon_hours", &self.backfill_horizon_hours)
            .field("history_buckets", &self.history_buckets)
            .field("rest_requests_per_second", &self.rest_requests_per_second)
            .field("crosscheck_interval_secs", &self.crosscheck_interval_secs)
            .field("clock_check_secs", &self.clock_check_secs)
            .field("cors_origins", &self.cors_origins)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("log_filter", &self.log_filter)
            .field("log_format", &self.log_format)
            .field("stream", &self.stream)
            .field("static_dir", &self.static_dir)
            .field("dev_reload", &self.dev_reload)
            .finish()
    }
}

/// An invalid configuration value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}: {problem}; accepted: {accepted}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
    pub accepted: &'static str,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable name → its value, if set). Empty
    /// values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        parse::config(&|name| lookup(name).filter(|v| !v.trim().is_empty()))
    }

    /// Whether the feed points at Coinbase's production endpoint (as opposed to a simulator).
    pub fn is_production_feed(&self) -> bool {
        self.coinbase_ws_url.trim_end_matches('/') == PRODUCTION_WS_URL
    }
}

/// Hides the credentials of a URL, or of a comma-separated list of URLs, for display: see
/// [`redact`] (which it is), kept under this name for callers that show one URL.
pub fn redact_url(url: &str) -> String {
    redact(url)
}

#[cfg(test)]
mod tests;
