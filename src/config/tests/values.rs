//! Parsing: defaults, ranges and the error naming each invalid variable.

use secrecy::ExposeSecret;

use super::*;

#[test]
fn defaults_apply_when_nothing_is_set() {
    let config = config_with(&[]).expect("defaults are valid");
    assert_eq!(config.port, 8080);
    assert_eq!(config.data_dir, PathBuf::from(".data"));
    assert!(config.database_url.is_none());
    assert!(config.nats_url.is_none());
    assert_eq!(config.coinbase_ws_url, PRODUCTION_WS_URL);
    assert_eq!(config.coinbase_rest_url, PRODUCTION_REST_URL);
    assert!(config.coinbase_credentials.is_none());
    assert!(config.products.is_none());
    assert_eq!((config.shard_index, config.shard_count), (0, 1));
    assert_eq!(config.products_per_connection, 20);
    assert_eq!(config.log_format, LogFormat::Pretty);
    assert!(config.migrate_on_start);
    assert_eq!(
        (config.writer_batch_rows, config.writer_flush_ms),
        (50, 100)
    );
    assert!(config.is_production_feed());
}

#[test]
fn every_invalid_value_names_its_variable_and_what_is_accepted() {
    type Vars = &'static [(&'static str, &'static str)];
    let cases: &[(Vars, &str, &str)] = &[
        (&[("PORT", "http")], "PORT", "0-65535"),
        (&[("PORT", "70000")], "PORT", "0-65535"),
        (&[("PORT", "-1")], "PORT", "0-65535"),
        (&[("SHARD_COUNT", "0")], "SHARD_COUNT", "1-1024"),
        (
            &[("SHARD_INDEX", "2"), ("SHARD_COUNT", "2")],
            "SHARD_INDEX",
            "SHARD_COUNT",
        ),
        (&[("SHARD_INDEX", "x")], "SHARD_INDEX", "SHARD_COUNT"),
        (
            &[("PRODUCTS_PER_CONNECTION", "0")],
            "PRODUCTS_PER_CONNECTION",
            "1-1000",
        ),
        (
            &[("PRODUCTS_PER_CONNECTION", "5000")],
            "PRODUCTS_PER_CONNECTION",
            "1-1000",
        ),
        (
            &[("COINBASE_WS_URL", "https://example.com")],
            "COINBASE_WS_URL",
            "wss://",
        ),
        (
            &[("COINBASE_REST_URL", "ftp://example.com")],
            "COINBASE_REST_URL",
            "https://",
        ),
        (
            &[("DATABASE_URL", "mysql://u:p@h/db")],
            "DATABASE_URL",
            "postgres://",
        ),
        (
            &[("NATS_URL", "http://localhost:4222")],
            "NATS_URL",
            "nats://",
        ),
        (
            &[("NATS_URL", "nats://a:4222,bogus")],
            "NATS_URL",
            "nats://",
        ),
        (&[("PRODUCTS", "BTC-USD,,ETH-USD")], "PRODUCTS", "BTC-USD"),
        (&[("PRODUCTS", "BTCUSD")], "PRODUCTS", "BTC-USD"),
        (&[("PRODUCTS", "BTC-USD;DROP")], "PRODUCTS", "BTC-USD"),
        (&[("LOG_FORMAT", "xml")], "LOG_FORMAT", "json or pretty"),
        (&[("NATS_KV_REPLICAS", "7")], "NATS_KV_REPLICAS", "1-5"),
        (
            &[("MIGRATE_ON_START", "maybe")],
            "MIGRATE_ON_START",
            "true or false",
        ),
        (
            &[("WRITER_BATCH_ROWS", "0")],
            "WRITER_BATCH_ROWS",
            "1-10000",
        ),
        (&[("WRITER_FLUSH_MS", "soon")], "WRITER_FLUSH_MS", "1-60000"),
        (&[("RUST_LOG", "info,[bad")], "RUST_LOG", "EnvFilter"),
        (
            &[("COINBASE_API_KEY", "organizations/o/apiKeys/k")],
            "COINBASE_PRIVATE_KEY",
            "both",
        ),
        (
            &[("COINBASE_PRIVATE_KEY", "abcd")],
            "COINBASE_API_KEY",
            "both",
        ),
        (
            &[
                ("COINBASE_API_KEY", "k"),
                ("COINBASE_PRIVATE_KEY", "not a key!"),
            ],
            "COINBASE_PRIVATE_KEY",
            "base64",
        ),
    ];
    for (vars, var, accepted) in cases {
        let err = config_with(vars).expect_err(&format!("{vars:?} must be rejected"));
        assert_eq!(err.var, *var, "{vars:?}");
        let message = err.to_string();
        assert!(message.contains(var), "{message}");
        assert!(
            message.contains(accepted),
            "{message} should say {accepted}"
        );
    }
}

#[test]
fn products_are_trimmed_upper_cased_and_deduplicated() {
    let config = config_with(&[("PRODUCTS", " btc-usd, ETH-USD ,BTC-USD")]).expect("valid");
    assert_eq!(
        config.products,
        Some(vec![
            crate::model::ProductId::from_static("BTC-USD"),
            crate::model::ProductId::from_static("ETH-USD")
        ])
    );
}

#[test]
fn empty_values_count_as_unset() {
    let config = config_with(&[("PORT", ""), ("DATABASE_URL", "  ")]).expect("valid");
    assert_eq!(config.port, 8080);
    assert!(config.database_url.is_none());
}

#[test]
fn private_key_newline_escapes_are_unescaped() {
    let config = config_with(&[
        ("COINBASE_API_KEY", "organizations/o/apiKeys/k"),
        (
            "COINBASE_PRIVATE_KEY",
            "-----BEGIN EC PRIVATE KEY-----\\nMHcCAQEE\\n-----END EC PRIVATE KEY-----\\n",
        ),
    ])
    .expect("valid");
    let creds = config.coinbase_credentials.expect("credentials");
    assert_eq!(
        creds.private_key.expose_secret(),
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----"
    );
}

#[test]
fn every_default_is_read_from_the_variables_table() {
    let defaults = format!("{:?}", config_with(&[]).expect("defaults are valid"));
    for var in VARIABLES.iter().filter(|v| !v.default.is_empty()) {
        // Setting a variable to its documented default changes nothing: the parser's
        // default is the documented one.
        let explicit = config_with(&[(var.name, var.default)])
            .unwrap_or_else(|e| panic!("the documented default of {} is invalid: {e}", var.name));
        assert_eq!(format!("{explicit:?}"), defaults, "{}", var.name);
    }
    // And a documented default is what an unset variable yields.
    let config = config_with(&[]).expect("defaults");
    let documented = |name: &str| {
        VARIABLES
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.default)
            .expect("documented")
    };
    assert_eq!(config.port.to_string(), documented("PORT"));
    assert_eq!(
        config.backfill_horizon_hours.to_string(),
        documented("BACKFILL_HORIZON_HOURS")
    );
    assert_eq!(
        config.history_buckets.to_string(),
        documented("HISTORY_BUCKETS")
    );
    assert_eq!(
        config.rest_requests_per_second.to_string(),
        documented("REST_REQUESTS_PER_SECOND")
    );
    assert_eq!(
        config.crosscheck_interval_secs.to_string(),
        documented("CROSSCHECK_INTERVAL_SECS")
    );
    assert_eq!(config.log_filter, documented("RUST_LOG"));
}

#[test]
fn reconciler_numbers_are_range_checked() {
    // (variable, lowest, highest, what the error says is accepted)
    let ranges = [
        ("BACKFILL_HORIZON_HOURS", 0u64, 720u64, "0-720"),
        ("HISTORY_BUCKETS", 0, 5_000, "0-5000"),
        ("REST_REQUESTS_PER_SECOND", 1, 100, "1-100"),
        ("CROSSCHECK_INTERVAL_SECS", 0, 86_400, "0-86400"),
    ];
    for (var, low, high, accepted) in ranges {
        for ok in [low, high, (low + high) / 2] {
            let text = format!(" {ok} ");
            config_with(&[(var, &text)]).unwrap_or_else(|e| panic!("{var}={ok}: {e}"));
        }
        let below = low.checked_sub(1).map(|n| n.to_string());
        let mut bad: Vec<String> = vec![
            (high + 1).to_string(),
            "-1".into(),
            "ten".into(),
            "1.5".into(),
            "1e3".into(),
            "0x10".into(),
            "99999999999999999999999".into(),
        ];
        bad.extend(below);
        for value in bad {
            let err = config_with(&[(var, &value)])
                .expect_err(&format!("{var}={value} must be rejected"));
            assert_eq!(err.var, var);
            let message = err.to_string();
            assert!(
                message.contains(accepted) && message.contains(value.trim()),
                "{var}={value}: {message}"
            );
        }
    }
}

#[test]
fn variables_are_listed_once_each() {
    let mut names: Vec<_> = VARIABLES.iter().map(|v| v.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len());
}

#[test]
fn cors_origins_are_none_any_or_a_list_of_origins() {
    let config = config_with(&[]).expect("defaults");
    assert_eq!(config.cors_origins, CorsOrigins::None);
    assert_eq!(config.request_timeout_secs, 10);
    let config = config_with(&[("CORS_ORIGINS", " * ")]).expect("any");
    assert_eq!(config.cors_origins, CorsOrigins::Any);
    let config = config_with(&[(
        "CORS_ORIGINS",
        "https://Charts.example.com, http://localhost:3000,https://charts.example.com",
    )])
    .expect("a list");
    assert_eq!(
        config.cors_origins,
        CorsOrigins::List(vec![
            "https://charts.example.com".to_owned(),
            "http://localhost:3000".to_owned()
        ])
    );
    for bad in [
        "charts.example.com",
        "https://charts.example.com/",
        "https://a.com,,https://b.com",
        "ftp://a.com",
        "https://a.com/path",
    ] {
        let error = config_with(&[("CORS_ORIGINS", bad)]).expect_err(bad);
        assert_eq!(error.var, "CORS_ORIGINS", "{bad}");
        assert!(error.accepted.contains("origins"), "{bad}: {error}");
    }
    for bad in ["0", "601", "ten"] {
        let error = config_with(&[("REQUEST_TIMEOUT_SECS", bad)]).expect_err(bad);
        assert_eq!(error.var, "REQUEST_TIMEOUT_SECS", "{bad}");
        assert!(error.to_string().contains("1-600"), "{error}");
    }
    let config = config_with(&[("REQUEST_TIMEOUT_SECS", "600")]).expect("the cap");
    assert_eq!(config.request_timeout_secs, 600);
}
