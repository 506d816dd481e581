//! Validation of each variable into its typed value.
//!
//! In: a variable lookup. Out: the whole [`Config`], or the first [`ConfigError`].

use std::path::PathBuf;

use secrecy::SecretString;

use super::lookup::{Lookup, boolean, number, value_or_default};
use super::{CoinbaseCredentials, Config, ConfigError, CorsOrigins, LogFormat, Role};
use crate::model::ProductId;

pub(super) fn config(lookup: Lookup<'_>) -> Result<Config, ConfigError> {
    let shard_count: u32 = number(lookup, "SHARD_COUNT", 1, 1024, "an integer 1-1024")?;
    let shard_index: u32 = number(
        lookup,
        "SHARD_INDEX",
        0,
        1023,
        "an integer 0 ≤ SHARD_INDEX < SHARD_COUNT",
    )?;
    if shard_index >= shard_count {
        return Err(ConfigError {
            var: "SHARD_INDEX",
            problem: format!("{shard_index} is not below SHARD_COUNT ({shard_count})"),
            accepted: "an integer 0 ≤ SHARD_INDEX < SHARD_COUNT",
        });
    }
    let port = number(lookup, "PORT", 0, 65_535, "an integer 0-65535")?;
    let metrics_port = match lookup("METRICS_PORT") {
        None => None,
        Some(_) => {
            let metrics: u16 = number(
                lookup,
                "METRICS_PORT",
                1,
                65_535,
                "an integer 1-65535, not PORT",
            )?;
            if metrics == port {
                return Err(ConfigError {
                    var: "METRICS_PORT",
                    problem: format!("{metrics} is PORT too"),
                    accepted: "an integer 1-65535, not PORT",
                });
            }
            Some(metrics)
        }
    };
    Ok(Config {
        role: role(lookup)?,
        port,
        metrics_port,
        data_dir: PathBuf::from(value_or_default(lookup, "DATA_DIR")),
        database_url: database_url(lookup)?,
        migrate_on_start: boolean(lookup, "MIGRATE_ON_START")?,
        writer_batch_rows: number(lookup, "WRITER_BATCH_ROWS", 1, 10_000, "an integer 1-10000")?,
        writer_flush_ms: number(lookup, "WRITER_FLUSH_MS", 1, 60_000, "an integer 1-60000")?,
        nats_url: nats_url(lookup)?,
        nats_kv_replicas: number(lookup, "NATS_KV_REPLICAS", 1, 5, "an integer 1-5")?,
        nats_server_bin: lookup("NATS_SERVER_BIN").map(PathBuf::from),
        coinbase_ws_url: url(
            lookup,
            "COINBASE_WS_URL",
            &["ws://", "wss://"],
            "a ws:// or wss:// URL",
        )?,
        coinbase_rest_url: url(
            lookup,
            "COINBASE_REST_URL",
            &["http://", "https://"],
            "an http:// or https:// URL",
        )?
        .trim_end_matches('/')
        .to_owned(),
        coinbase_credentials: credentials(lookup)?,
        products: products(lookup)?,
        shard_index,
        shard_count,
        products_per_connection: number(
            lookup,
            "PRODUCTS_PER_CONNECTION",
            1,
            1000,
            "an integer 1-1000",
        )?,
        backfill_horizon_hours: number(
            lookup,
            "BACKFILL_HORIZON_HOURS",
            0,
            720,
            "an integer 0-720",
        )?,
        history_buckets: number(lookup, "HISTORY_BUCKETS", 0, 5_000, "an integer 0-5000")?,
        rest_requests_per_second: number(
            lookup,
            "REST_REQUESTS_PER_SECOND",
            1,
            100,
            "an integer 1-100",
        )?,
        crosscheck_interval_secs: number(
            lookup,
            "CROSSCHECK_INTERVAL_SECS",
            0,
            86_400,
            "an integer 0-86400",
        )?,
        clock_check_secs: number(lookup, "CLOCK_CHECK_SECS", 0, 86_400, "an integer 0-86400")?,
        cors_origins: cors_origins(lookup)?,
        request_timeout_secs: number(lookup, "REQUEST_TIMEOUT_SECS", 1, 600, "an integer 1-600")?,
        static_dir: PathBuf::from(value_or_default(lookup, "STATIC_DIR")),
        dev_reload: boolean(lookup, "DEV_RELOAD")?,
        log_filter: log_filter(lookup)?,
        log_format: log_format(lookup)?,
        stream: super::stream::parse(lookup)?,
    })
}

fn url(
    lookup: Lookup<'_>,
    var: &'static str,
    schemes: &[&str],
    accepted: &'static str,
) -> Result<String, ConfigError> {
    let value = value_or_default(lookup, var).trim().to_owned();
    let has_scheme = schemes
        .iter()
        .any(|s| value.len() > s.len() && value[..s.len()].eq_ignore_ascii_case(s));
    if !has_scheme || value.contains(char::is_whitespace) {
        return Err(ConfigError {
            var,
            problem: format!(
                "{:?} is not a URL with a supported scheme",
                super::redact(&value)
            ),
            accepted,
        });
    }
    Ok(value)
}

fn database_url(lookup: Lookup<'_>) -> Result<Option<SecretString>, ConfigError> {
    let Some(value) = lookup("DATABASE_URL") else {
        return Ok(None);
    };
    let value = value.trim();
    if !(value.starts_with("postgres://") || value.starts_with("postgresql://")) {
        // Do not echo the value: it may hold a password.
        return Err(ConfigError {
            var: "DATABASE_URL",
            problem: "the value does not start with postgres:// or postgresql://".into(),
            accepted: "a postgres:// or postgresql:// URL, or unset for the embedded database",
        });
    }
    Ok(Some(SecretString::from(value.to_owned())))
}

fn nats_url(lookup: Lookup<'_>) -> Result<Option<String>, ConfigError> {
    let Some(value) = lookup("NATS_URL") else {
        return Ok(None);
    };
    const ACCEPTED: &str =
        "comma-separated nats://, tls://, ws:// or wss:// URLs, or unset for the embedded server";
    for part in value.split(',') {
        let part = part.trim();
        let ok = ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|s| part.starts_with(s) && part.len() > s.len());
        if !ok {
            return Err(ConfigError {
                var: "NATS_URL",
                problem: format!("{:?} is not a NATS URL", super::redact(part)),
                accepted: ACCEPTED,
            });
        }
    }
    Ok(Some(value.trim().to_owned()))
}

fn credentials(lookup: Lookup<'_>) -> Result<Option<CoinbaseCredentials>, ConfigError> {
    match (lookup("COINBASE_API_KEY"), lookup("COINBASE_PRIVATE_KEY")) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError {
            var: "COINBASE_PRIVATE_KEY",
            problem: "unset while COINBASE_API_KEY is set".into(),
            accepted: "both COINBASE_API_KEY and COINBASE_PRIVATE_KEY, or neither",
        }),
        (None, Some(_)) => Err(ConfigError {
            var: "COINBASE_API_KEY",
            problem: "unset while COINBASE_PRIVATE_KEY is set".into(),
            accepted: "both COINBASE_API_KEY and COINBASE_PRIVATE_KEY, or neither",
        }),
        (Some(api_key), Some(private_key)) => {
            let private_key = private_key.replace("\\n", "\n").trim().to_owned();
            let pem = private_key.contains("-----BEGIN ");
            let base64 = !pem
                && private_key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
            if !pem && !base64 {
                // Never echo the key itself.
                return Err(ConfigError {
                    var: "COINBASE_PRIVATE_KEY",
                    problem: "the value is neither a PEM block nor base64".into(),
                    accepted: "a PEM private key (SEC1 `EC PRIVATE KEY` or PKCS#8), `\\n` escapes allowed, or a base64 Ed25519 key",
                });
            }
            Ok(Some(CoinbaseCredentials {
                api_key: api_key.trim().to_owned(),
                private_key: SecretString::from(private_key),
            }))
        }
    }
}

fn products(lookup: Lookup<'_>) -> Result<Option<Vec<ProductId>>, ConfigError> {
    let Some(value) = lookup("PRODUCTS") else {
        return Ok(None);
    };
    const ACCEPTED: &str = "comma-separated product ids such as BTC-USD,ETH-USD (two codes of 1 to 16 letters or digits around one '-')";
    let mut products: Vec<ProductId> = Vec::new();
    for part in value.split(',') {
        let id = ProductId::from_client(part).map_err(|e| ConfigError {
            var: "PRODUCTS",
            problem: format!("{} is not a product id", e.shown()),
            accepted: ACCEPTED,
        })?;
        if !products.contains(&id) {
            products.push(id);
        }
    }
    Ok(Some(products))
}

fn cors_origins(lookup: Lookup<'_>) -> Result<CorsOrigins, ConfigError> {
    let Some(value) = lookup("CORS_ORIGINS") else {
        return Ok(CorsOrigins::None);
    };
    const ACCEPTED: &str = "`*`, or comma-separated origins such as https://charts.example.com,http://localhost:3000 (scheme, host and optional port; no path)";
    if value.trim() == "*" {
        return Ok(CorsOrigins::Any);
    }
    let mut origins: Vec<String> = Vec::new();
    for part in value.split(',') {
        let origin = part.trim().to_ascii_lowercase();
        let host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .unwrap_or("");
        let valid = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']')
            });
        if !valid {
            return Err(ConfigError {
                var: "CORS_ORIGINS",
                problem: format!("{:?} is not an origin", part.trim()),
                accepted: ACCEPTED,
            });
        }
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    Ok(CorsOrigins::List(origins))
}

fn log_filter(lookup: Lookup<'_>) -> Result<String, ConfigError> {
    let value = value_or_default(lookup, "RUST_LOG");
    tracing_subscriber::EnvFilter::try_new(&value).map_err(|e| ConfigError {
        var: "RUST_LOG",
        problem: format!("{value:?} is not a filter ({e})"),
        accepted: "tracing EnvFilter directives such as `info` or `spot_canvas=debug,info`",
    })?;
    Ok(value)
}

fn log_format(lookup: Lookup<'_>) -> Result<LogFormat, ConfigError> {
    match value_or_default(lookup, "LOG_FORMAT").trim() {
        v if v.eq_ignore_ascii_case("pretty") => Ok(LogFormat::Pretty),
        v if v.eq_ignore_ascii_case("json") => Ok(LogFormat::Json),
        other => Err(ConfigError {
            var: "LOG_FORMAT",
            problem: format!("{other:?} is not a log format"),
            accepted: "json or pretty",
        }),
    }
}

fn role(lookup: Lookup<'_>) -> Result<Role, ConfigError> {
    match value_or_default(lookup, "ROLE")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "ingest" => Ok(Role::Ingest),
        "web" => Ok(Role::Web),
        "both" => Ok(Role::Both),
        other => Err(ConfigError {
            var: "ROLE",
            problem: format!("{other:?} is not a role"),
            accepted: "ingest, web or both",
        }),
    }
}
