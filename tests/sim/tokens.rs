//! Authentication: the simulator verifies the JWT of a subscribe as Coinbase does.

use super::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

const KEY_NAME: &str = "organizations/o/apiKeys/k";

fn key(byte: u8) -> p256::SecretKey {
    p256::SecretKey::from_slice(&[byte; 32]).expect("key")
}

fn public_pem(byte: u8) -> String {
    key(byte)
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem")
}

/// A token made here with jsonwebtoken directly, as Coinbase documents it.
fn token(byte: u8, iss: &str, kid: &str, nbf: i64, exp: i64) -> String {
    let der = key(byte).to_pkcs8_der().expect("der");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    header.nonce = Some("00112233445566778899aabbccddeeff".into());
    let claims = json!({"iss": iss, "sub": KEY_NAME, "nbf": nbf, "exp": exp});
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(der.as_bytes()))
        .expect("signs")
}

async fn answer(sim: &Simulator, jwt: String) -> Value {
    let mut ws = connect(sim).await;
    let message = json!({"type": "subscribe", "channel": "heartbeats", "jwt": jwt});
    ws.send(Message::Text(message.to_string().into()))
        .await
        .expect("sends");
    next_json(&mut ws).await
}

#[tokio::test]
async fn subscribe_tokens_are_verified_with_the_public_key() {
    let sim = start(SimConfig {
        jwt_public_key: Some(public_pem(0x42)),
        jwt_key_name: Some(KEY_NAME.into()),
        ..quick(1)
    })
    .await;
    let now = Utc::now().timestamp();
    let ok = answer(&sim, token(0x42, "cdp", KEY_NAME, now, now + 120)).await;
    assert_eq!(ok["channel"], "subscriptions", "{ok}");
    let failure = json!({"type": "error", "message": "authentication failure"});
    for (what, jwt) in [
        ("another key", token(0x43, "cdp", KEY_NAME, now, now + 120)),
        (
            "wrong issuer",
            token(0x42, "coinbase", KEY_NAME, now, now + 120),
        ),
        ("wrong kid", token(0x42, "cdp", "other", now, now + 120)),
        (
            "expired",
            token(0x42, "cdp", KEY_NAME, now - 300, now - 180),
        ),
        ("too long", token(0x42, "cdp", KEY_NAME, now, now + 3600)),
        (
            "not yet valid",
            token(0x42, "cdp", KEY_NAME, now + 60, now + 180),
        ),
        ("garbage", "not.a.token".to_owned()),
    ] {
        assert_eq!(answer(&sim, jwt).await, failure, "{what}");
    }
    assert_eq!(sim.state.stats.jwt_accepted.get(), 1);
    assert_eq!(sim.state.stats.jwt_rejected.get(), 7);
    sim.stop().await;
}

#[tokio::test]
async fn ed25519_tokens_are_verified_too() {
    use base64::Engine as _;
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let public =
        base64::engine::general_purpose::STANDARD.encode(signing.verifying_key().as_bytes());
    let sim = start(SimConfig {
        jwt_public_key: Some(public),
        jwt_key_name: Some(KEY_NAME.into()),
        ..quick(1)
    })
    .await;
    let der = signing.to_pkcs8_der().expect("der");
    let sign = |key: &EncodingKey| {
        let now = Utc::now().timestamp();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(KEY_NAME.into());
        header.nonce = Some("0123456789abcdef".into());
        let claims = json!({"iss": "cdp", "sub": KEY_NAME, "nbf": now, "exp": now + 120});
        jsonwebtoken::encode(&header, &claims, key).expect("signs")
    };
    let ok = answer(&sim, sign(&EncodingKey::from_ed_der(der.as_bytes()))).await;
    assert_eq!(ok["channel"], "subscriptions", "{ok}");
    let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32])
        .to_pkcs8_der()
        .expect("der");
    let refused = answer(&sim, sign(&EncodingKey::from_ed_der(other.as_bytes()))).await;
    assert_eq!(refused["type"], "error", "{refused}");
    // An ES256 token is refused by an Ed25519 key whatever its signature.
    let now = Utc::now().timestamp();
    let es = answer(&sim, token(0x42, "cdp", KEY_NAME, now, now + 120)).await;
    assert_eq!(es["type"], "error", "{es}");
    assert_eq!(sim.state.stats.jwt_accepted.get(), 1);
    sim.stop().await;
}
