//! Secrets: hidden in `Debug`, in the config dump and in every error.

use super::*;

#[test]
fn secrets_never_appear_in_debug_output() {
    let config = config_with(&[
        (
            "DATABASE_URL",
            "postgres://spot:hunter2pw@db.internal:5432/spot?sslmode=require",
        ),
        ("NATS_URL", "nats://natsuser:natspass42@nats.internal:4222"),
        ("COINBASE_API_KEY", "organizations/o/apiKeys/k"),
        (
            "COINBASE_PRIVATE_KEY",
            "U2VjcmV0U2VlZEJ5dGVzMDEyMzQ1Njc4OWFiY2RlZg==",
        ),
    ])
    .expect("valid");
    let debug = format!("{config:?}");
    for secret in ["hunter2pw", "natspass42", "U2VjcmV0U2VlZEJ5dGVz"] {
        assert!(!debug.contains(secret), "{secret} leaked: {debug}");
    }
    assert!(debug.contains("db.internal:5432"), "{debug}");
    assert!(debug.contains("organizations/o/apiKeys/k"), "{debug}");
}

#[test]
fn invalid_secrets_are_not_echoed_in_errors() {
    let err = config_with(&[("DATABASE_URL", "mysql://u:hunter2pw@h/db")]).expect_err("invalid");
    assert!(!err.to_string().contains("hunter2pw"), "{err}");
    let err = config_with(&[
        ("COINBASE_API_KEY", "k"),
        ("COINBASE_PRIVATE_KEY", "secret material!"),
    ])
    .expect_err("invalid");
    assert!(!err.to_string().contains("secret material"), "{err}");
    let err = config_with(&[("NATS_URL", "http://u:natspass42@h")]).expect_err("invalid");
    assert!(!err.to_string().contains("natspass42"), "{err}");
}

#[test]
fn redact_url_hides_user_info_and_password_queries() {
    assert_eq!(
        redact_url("postgres://u:pw@host:5432/db"),
        "postgres://[REDACTED]@host:5432/db"
    );
    assert_eq!(
        redact_url("postgres://host/db?user=u&password=pw"),
        "postgres://host/db?user=u&password=[REDACTED]"
    );
    assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
    assert_eq!(
        redact_url("nats://a:pw1@h1:4222,nats://b:pw2@h2:4222"),
        "nats://[REDACTED]@h1:4222,nats://[REDACTED]@h2:4222"
    );
}

#[test]
fn every_password_of_every_shape_is_hidden_in_the_config_dump() {
    let config = config_with(&[
        (
            "DATABASE_URL",
            "postgres://spot:dbpw1@db:5432/spot?sslpassword=dbpw2&sslmode=require",
        ),
        (
            "NATS_URL",
            "nats://u1:natspw1@n1:4222,nats://u2:natspw2@n2:4222,tls://natstoken3@n3:4222",
        ),
        ("COINBASE_WS_URL", "wss://feed.example/ws?token=wstoken1"),
        (
            "COINBASE_REST_URL",
            "https://rest:restpw1@api.example/v3?password=restpw2",
        ),
    ])
    .expect("valid");
    let debug = format!("{config:?}");
    for secret in [
        "dbpw1",
        "dbpw2",
        "natspw1",
        "natspw2",
        "natstoken3",
        "wstoken1",
        "restpw1",
        "restpw2",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked: {debug}");
    }
    for kept in [
        "db:5432/spot",
        "n1:4222",
        "n2:4222",
        "n3:4222",
        "sslmode=require",
        "feed.example/ws",
        "api.example/v3",
    ] {
        assert!(debug.contains(kept), "{kept} should stay readable: {debug}");
    }
}

#[test]
fn invalid_urls_with_credentials_are_not_echoed_in_errors() {
    let cases: &[(&str, &str)] = &[
        ("NATS_URL", "nats://a:okpw1@h1,http://b:natspw2@h2"),
        ("NATS_URL", "nats://a:okpw1@h1,b:natspw2@h2"),
        ("COINBASE_WS_URL", "https://u:wspw1@feed/ws?token=wstoken2"),
        ("COINBASE_REST_URL", "ftp://u:restpw1@api/?password=restpw2"),
        ("DATABASE_URL", "host=db password=dbpw1"),
    ];
    for (var, value) in cases {
        let err = config_with(&[(var, value)]).expect_err(value);
        let message = format!("{err} {err:?}");
        for secret in [
            "okpw1", "natspw2", "wspw1", "wstoken2", "restpw1", "restpw2", "dbpw1",
        ] {
            assert!(!message.contains(secret), "{secret} leaked: {message}");
        }
    }
}
