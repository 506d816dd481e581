//! JWTs for authenticated subscribes: made from a SEC1 PEM EC key, a PKCS#8 PEM EC key, a
//! PKCS#8 PEM Ed25519 key and a base64 Ed25519 key (also with `\n` escapes, as they come from
//! the environment), verified with the matching public key, with Coinbase's claims and header.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use secrecy::SecretString;
use spot_canvas::coinbase::auth::{Claims, JwtSigner};
use spot_canvas::config::{CoinbaseCredentials, Config};

const KEY_NAME: &str = "organizations/org-1234/apiKeys/key-5678";
const NOW: i64 = 1_790_000_000;

fn credentials(private_key: &str) -> CoinbaseCredentials {
    CoinbaseCredentials {
        api_key: KEY_NAME.into(),
        private_key: SecretString::from(private_key.to_owned()),
    }
}

fn validation(algorithm: Algorithm) -> Validation {
    let mut v = Validation::new(algorithm);
    v.set_issuer(&["cdp"]);
    v.sub = Some(KEY_NAME.into());
    v.validate_nbf = false;
    v.validate_exp = false;
    v.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
    v
}

fn check_token(token: &str, algorithm: Algorithm, key: &DecodingKey) {
    let header = decode_header(token).expect("header");
    assert_eq!(header.alg, algorithm);
    assert_eq!(header.kid.as_deref(), Some(KEY_NAME));
    let nonce = header.nonce.expect("nonce in the header");
    assert_eq!(nonce.len(), 32);
    assert!(nonce.bytes().all(|b| b.is_ascii_hexdigit()));
    let data = decode::<Claims>(token, key, &validation(algorithm)).expect("verifies");
    assert_eq!(
        data.claims,
        Claims {
            iss: "cdp".into(),
            sub: KEY_NAME.into(),
            nbf: NOW,
            exp: NOW + 120,
        }
    );
    // No `uri` claim on WebSocket tokens.
    let payload = token.split('.').nth(1).expect("payload");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    let payload: serde_json::Value = serde_json::from_slice(&payload).expect("json");
    assert!(payload.get("uri").is_none(), "{payload}");
}

fn ec_key() -> p256::SecretKey {
    p256::SecretKey::from_slice(&[0x42; 32]).expect("a valid scalar")
}

#[test]
fn es256_tokens_from_a_sec1_pem_key_verify_with_its_public_key() {
    let sec1 = ec_key()
        .to_sec1_pem(LineEnding::LF)
        .expect("pem")
        .to_string();
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"));
    let signer = JwtSigner::new(&credentials(&sec1)).expect("loads SEC1");
    assert_eq!(signer.algorithm(), Algorithm::ES256);
    let public = ec_key()
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public pem");
    let key = DecodingKey::from_ec_pem(public.as_bytes()).expect("public key");
    let first = signer.token(NOW).expect("token");
    check_token(&first, Algorithm::ES256, &key);
    let second = signer.token(NOW).expect("token");
    assert_ne!(first, second, "a fresh token (new nonce) per message");
}

fn ec_public_key() -> DecodingKey {
    let public = ec_key()
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public pem");
    DecodingKey::from_ec_pem(public.as_bytes()).expect("public key")
}

/// The credentials the configuration makes of `private_key` as set in the environment.
fn from_environment(private_key: &str) -> CoinbaseCredentials {
    Config::from_lookup(|name| match name {
        "COINBASE_API_KEY" => Some(KEY_NAME.into()),
        "COINBASE_PRIVATE_KEY" => Some(private_key.to_owned()),
        _ => None,
    })
    .expect("valid config")
    .coinbase_credentials
    .expect("credentials")
}

#[test]
fn es256_keys_with_escaped_newlines_from_the_environment_sign_verifiable_tokens() {
    let sec1 = ec_key()
        .to_sec1_pem(LineEnding::LF)
        .expect("pem")
        .replace('\n', "\\n");
    assert!(!sec1.contains('\n') && sec1.contains("\\n"), "one line");
    let signer = JwtSigner::new(&from_environment(&sec1)).expect("loads");
    assert_eq!(signer.algorithm(), Algorithm::ES256);
    check_token(
        &signer.token(NOW).expect("token"),
        Algorithm::ES256,
        &ec_public_key(),
    );
}

#[test]
fn es256_tokens_from_a_pkcs8_pem_key_verify_with_its_public_key() {
    let pkcs8 = ec_key()
        .to_pkcs8_pem(LineEnding::LF)
        .expect("pkcs8 pem")
        .to_string();
    assert!(
        pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{}",
        &pkcs8[..30]
    );
    let signer = JwtSigner::new(&credentials(&pkcs8)).expect("loads PKCS#8 EC");
    assert_eq!(signer.algorithm(), Algorithm::ES256);
    check_token(
        &signer.token(NOW).expect("token"),
        Algorithm::ES256,
        &ec_public_key(),
    );
    // The same key, one line with `\n` escapes, through the configuration.
    let escaped = pkcs8.replace('\n', "\\n");
    let signer = JwtSigner::new(&from_environment(&escaped)).expect("loads escaped PKCS#8");
    check_token(
        &signer.token(NOW).expect("token"),
        Algorithm::ES256,
        &ec_public_key(),
    );
}

#[test]
fn eddsa_tokens_from_a_pkcs8_pem_ed25519_key_verify_with_its_public_key() {
    let signing = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .expect("pkcs8 pem")
        .to_string();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{}",
        &pem[..30]
    );
    let signer = JwtSigner::new(&credentials(&pem)).expect("loads PKCS#8 Ed25519");
    assert_eq!(signer.algorithm(), Algorithm::EdDSA);
    let key = DecodingKey::from_ed_der(signing.verifying_key().as_bytes());
    check_token(&signer.token(NOW).expect("token"), Algorithm::EdDSA, &key);
    // Another Ed25519 key does not verify it.
    let other = ed25519_dalek::SigningKey::from_bytes(&[10u8; 32]);
    let wrong = DecodingKey::from_ed_der(other.verifying_key().as_bytes());
    let token = signer.token(NOW).expect("token");
    assert!(decode::<Claims>(&token, &wrong, &validation(Algorithm::EdDSA)).is_err());
}

#[test]
fn eddsa_tokens_from_a_base64_ed25519_key_verify_with_its_public_key() {
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let mut secret = signing.to_bytes().to_vec();
    secret.extend_from_slice(signing.verifying_key().as_bytes());
    let signer = JwtSigner::new(&credentials(&STANDARD.encode(&secret))).expect("loads");
    assert_eq!(signer.algorithm(), Algorithm::EdDSA);
    let key = DecodingKey::from_ed_der(signing.verifying_key().as_bytes());
    check_token(&signer.token(NOW).expect("token"), Algorithm::EdDSA, &key);

    // A public half that does not match the seed is refused.
    let mut wrong = secret.clone();
    wrong[40] ^= 1;
    assert!(JwtSigner::new(&credentials(&STANDARD.encode(&wrong))).is_err());
}

#[test]
fn a_token_does_not_verify_with_another_key() {
    let sec1 = ec_key()
        .to_sec1_pem(LineEnding::LF)
        .expect("pem")
        .to_string();
    let signer = JwtSigner::new(&credentials(&sec1)).expect("loads");
    let other = p256::SecretKey::from_slice(&[0x17; 32]).expect("scalar");
    let public = other
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    let key = DecodingKey::from_ec_pem(public.as_bytes()).expect("key");
    let token = signer.token(NOW).expect("token");
    assert!(decode::<Claims>(&token, &key, &validation(Algorithm::ES256)).is_err());
}

#[test]
fn bad_keys_are_refused_without_echoing_them() {
    for bad in [
        "-----BEGIN EC PRIVATE KEY-----\nbm90IGEga2V5\n-----END EC PRIVATE KEY-----",
        "c2hvcnQ=",
    ] {
        let err = JwtSigner::new(&credentials(bad)).expect_err("refused");
        let message = format!("{err} {err:?}");
        assert!(
            !message.contains("bm90IGEga2V5") && !message.contains("c2hvcnQ"),
            "{message}"
        );
    }
    let sec1 = ec_key()
        .to_sec1_pem(LineEnding::LF)
        .expect("pem")
        .to_string();
    let signer = JwtSigner::new(&credentials(&sec1)).expect("loads");
    let debug = format!("{signer:?}");
    let body: String = sec1
        .lines()
        .nth(1)
        .expect("a body line")
        .chars()
        .take(20)
        .collect();
    assert!(!debug.contains(&body), "{debug}");
}
