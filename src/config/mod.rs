//! Configuration: one typed [`Config`] read from environment variables (and an optional
//! `.env`, loaded by `main`), validated at start.
//!
//! In: a variable lookup (the process environment, or a map in tests). Out: a [`Config`], or a
//! [`ConfigError`] naming the variable, what is wrong with it and what is accepted. Secrets
//! (the Coinbase private key, the database URL's password) are wrapped so that `Debug` and
//! logs never show them.

mod parse;
mod redact;
mod stream;

use std::fmt;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use crate::coinbase::{PRODUCTION_REST_URL, PRODUCTION_WS_URL};

pub use redact::{REDACTED, redact};
pub use stream::StreamConfig;

/// Documentation of one environment variable the service reads.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    /// Default when unset, as text ("" when there is none). The only place a default is
    /// written: the parser reads it from here (and validates it like a set value).
    pub default: &'static str,
    pub description: &'static str,
}

/// Every environment variable the service reads. README, `.env.example` and the deployment
/// files must name each of them (a test checks).
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "ROLE",
        default: "both",
        description: "What `serve` runs: `ingest` (feed, engine, writer, publisher; serves health and metrics), `web` (dashboard, API and streams from NATS and PostgreSQL), or `both`",
    },
    Variable {
        name: "PORT",
        default: "8080",
        description: "HTTP port to listen on (0 picks a free port)",
    },
    Variable {
        name: "METRICS_PORT",
        default: "",
        description: "Serve `/metrics` on this second port only (0.0.0.0), not on PORT: for a metrics collector beside the service; unset serves it on PORT",
    },
    Variable {
        name: "DATA_DIR",
        default: ".data",
        description: "Directory for the embedded PostgreSQL cluster and NATS store, and the writer's spool of rows not written by the stop (written at the next start)",
    },
    Variable {
        name: "DATABASE_URL",
        default: "",
        description: "PostgreSQL URL; unset starts an embedded local cluster under DATA_DIR (secret: holds the password)",
    },
    Variable {
        name: "MIGRATE_ON_START",
        default: "true",
        description: "Apply pending database migrations when `serve` starts (`true` or `false`)",
    },
    Variable {
        name: "WRITER_BATCH_ROWS",
        default: "50",
        description: "The batch writer flushes once this many candles are pending (1–10000)",
    },
    Variable {
        name: "WRITER_FLUSH_MS",
        default: "100",
        description: "The batch writer flushes at least this often, in milliseconds (1–60000)",
    },
    Variable {
        name: "NATS_URL",
        default: "",
        description: "NATS server or cluster URL(s), comma-separated; unset starts an embedded nats-server",
    },
    Variable {
        name: "NATS_KV_REPLICAS",
        default: "1",
        description: "Replicas of the JetStream KV bucket `live-candles` (1–5; 3 on a 3-node cluster)",
    },
    Variable {
        name: "NATS_SERVER_BIN",
        default: "",
        description: "The `nats-server` binary for the embedded default; unset looks on PATH",
    },
    Variable {
        name: "COINBASE_WS_URL",
        default: PRODUCTION_WS_URL,
        description: "Coinbase Advanced Trade market-data WebSocket (point at `spot-canvas sim` for demos and tests)",
    },
    Variable {
        name: "COINBASE_REST_URL",
        default: PRODUCTION_REST_URL,
        description: "Coinbase Advanced Trade REST base URL, for products and candle backfill",
    },
    Variable {
        name: "COINBASE_API_KEY",
        default: "",
        description: "Optional CDP API key name (`organizations/…/apiKeys/…`); set together with COINBASE_PRIVATE_KEY",
    },
    Variable {
        name: "COINBASE_PRIVATE_KEY",
        default: "",
        description: "Optional CDP private key: PEM (SEC1 EC, or PKCS#8 EC or Ed25519) or base64 Ed25519; `\\n` escapes accepted (secret)",
    },
    Variable {
        name: "PRODUCTS",
        default: "",
        description: "Comma-separated product ids to ingest; unset discovers all online spot products",
    },
    Variable {
        name: "SHARD_INDEX",
        default: "0",
        description: "This instance's shard, 0 ≤ SHARD_INDEX < SHARD_COUNT",
    },
    Variable {
        name: "SHARD_COUNT",
        default: "1",
        description: "Number of instances sharing the products",
    },
    Variable {
        name: "PRODUCTS_PER_CONNECTION",
        default: "20",
        description: "Products per Coinbase WebSocket connection (1–1000)",
    },
    Variable {
        name: "BACKFILL_HORIZON_HOURS",
        default: "48",
        description: "How far back (hours, 0–720) a start reaches to fill the gap since the newest stored minute from REST; 0 turns backfill off",
    },
    Variable {
        name: "HISTORY_BUCKETS",
        default: "300",
        description: "Buckets of each granularity a product without recent stored history gets from REST (0–5000)",
    },
    Variable {
        name: "REST_REQUESTS_PER_SECOND",
        default: "5",
        description: "Most Coinbase REST candle requests per second (1–100; Coinbase allows about 10 per IP)",
    },
    Variable {
        name: "CROSSCHECK_INTERVAL_SECS",
        default: "60",
        description: "Seconds between rounds comparing stored one-minute candles with REST (0–86400; 0 turns it off)",
    },
    Variable {
        name: "CLOCK_CHECK_SECS",
        default: "60",
        description: "Seconds between comparisons of this machine's clock with Coinbase's server time (0–86400; 0 turns it off); a drift over 1 s raises an alarm",
    },
    Variable {
        name: "STREAM_MAX_CLIENTS",
        default: "10000",
        description: "Most concurrent SSE streams of the instance (1–1000000); beyond it a new stream gets 503",
    },
    Variable {
        name: "STREAM_MAX_PER_ADDRESS",
        default: "100",
        description: "Most concurrent SSE streams from one client address, an IPv6 /64 counting as one address (1–1000000); beyond it a new stream gets 429",
    },
    Variable {
        name: "STREAM_MAX_SERIES",
        default: "800",
        description: "Most series (products × granularities) one stream may name (1–100000); a stream of all products is exempt",
    },
    Variable {
        name: "STREAM_QUEUE",
        default: "1024",
        description: "Events a stream client's queue holds (1–1000000); a client that overflows it is resynced to the latest state",
    },
    Variable {
        name: "STREAM_STALL_SECS",
        default: "10",
        description: "Seconds a resynced-but-not-reading stream client may stay behind before it is disconnected (1–3600)",
    },
    Variable {
        name: "STREAM_KEEPALIVE_SECS",
        default: "15",
        description: "Seconds between keep-alive comments on an idle stream (1–300)",
    },
    Variable {
        name: "TRUST_FORWARDED_FOR",
        default: "false",
        description: "Count streams per address by the last `X-Forwarded-For` entry (the one a trusted proxy such as Cloud Run's front end added) instead of the peer address",
    },
    Variable {
        name: "CORS_ORIGINS",
        default: "",
        description: "Origins allowed to call the HTTP API from a browser: comma-separated `https://host[:port]` origins, or `*` for any; unset sends no CORS headers",
    },
    Variable {
        name: "REQUEST_TIMEOUT_SECS",
        default: "10",
        description: "Longest time (seconds, 1–600) an HTTP request may take before it is answered 503; the SSE streams are exempt",
    },
    Variable {
        name: "STATIC_DIR",
        default: "static",
        description: "Directory of the dashboard's built assets (`app.css`, `app.js`, `datastar.js`; `task assets` builds them), served under `/static`",
    },
    Variable {
        name: "DEV_RELOAD",
        default: "false",
        description: "Development: open pages reload when the server restarts or an asset in `STATIC_DIR` changes, and assets are not cached (`task live` sets it)",
    },
    Variable {
        name: "RUST_LOG",
        default: "info",
        description: "Log filter (tracing EnvFilter syntax)",
    },
    Variable {
        name: "LOG_FORMAT",
        default: "pretty",
        description: "Log output: `pretty` or `json`",
    },
];

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
