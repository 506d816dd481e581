//! The variables table: every environment variable the service reads, with its default and
//! meaning.
//!
//! In: nothing (constants). Out: [`VARIABLES`], read by the parser for defaults and by the
//! `config` command, README and deployment checks for the documentation. Coinbase's production
//! URLs live here because they are defaults, and configuration is the one place defaults are
//! written; the Coinbase client reads them from here.

/// Coinbase's production market-data WebSocket endpoint.
pub const PRODUCTION_WS_URL: &str = "wss://advanced-trade-ws.coinbase.com";
/// Coinbase's production public REST base (`/market/products` and so on hang below it).
pub const PRODUCTION_REST_URL: &str = "https://api.coinbase.com/api/v3/brokerage";

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
