//! The simulator's check of the `jwt` in subscribe messages, when it is given the public half
//! of a CDP key: written against Coinbase's documented token, independently of the service's
//! signer.
//!
//! In: a token. Out: accepted, or the reason it is refused (the connection then answers
//! `authentication failure`, as Coinbase does). A token passes when its signature verifies
//! with the public key (ES256 for a P-256 key, EdDSA for an Ed25519 key), its header names the
//! key (`kid`) and carries a `nonce`, and its claims are `iss = "cdp"`, `sub` = the key name,
//! and a validity window `nbf..exp` of at most two minutes that contains now.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Longest validity window a token may claim.
const MAX_LIFETIME_SECS: i64 = 120;
/// Clock skew tolerated on `nbf` and `exp`.
const LEEWAY_SECS: i64 = 5;

/// The public key subscribe tokens must be signed with, and the key's name.
pub struct JwtVerifier {
    key_name: String,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("key_name", &self.key_name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    nbf: i64,
    exp: i64,
}

impl JwtVerifier {
    /// `public_key` is a PEM public key (`BEGIN PUBLIC KEY`, P-256 or Ed25519), or base64 of a
    /// raw 32-byte Ed25519 public key.
    pub fn new(key_name: &str, public_key: &str) -> anyhow::Result<JwtVerifier> {
        let (algorithm, key) = if public_key.contains("-----BEGIN") {
            match DecodingKey::from_ec_pem(public_key.as_bytes()) {
                Ok(key) => (Algorithm::ES256, key),
                Err(_) => (
                    Algorithm::EdDSA,
                    DecodingKey::from_ed_pem(public_key.as_bytes()).map_err(|e| {
                        anyhow::anyhow!("the JWT public key is neither P-256 nor Ed25519: {e}")
                    })?,
                ),
            }
        } else {
            let raw = STANDARD
                .decode(public_key.trim())
                .map_err(|_| anyhow::anyhow!("the JWT public key is neither PEM nor base64"))?;
            anyhow::ensure!(
                raw.len() == 32,
                "a raw Ed25519 public key has 32 bytes, not {}",
                raw.len()
            );
            (
                Algorithm::EdDSA,
                DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(raw))?,
            )
        };
        Ok(JwtVerifier {
            key_name: key_name.to_owned(),
            algorithm,
            key,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Checks `token` at `now` (Unix seconds); the error says why it is refused.
    pub fn verify(&self, token: &str, now: i64) -> Result<(), String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
        if header.alg != self.algorithm {
            return Err(format!(
                "algorithm {:?}, expected {:?}",
                header.alg, self.algorithm
            ));
        }
        if header.kid.as_deref() != Some(self.key_name.as_str()) {
            return Err("header kid is not the key name".into());
        }
        if header.nonce.as_deref().is_none_or(str::is_empty) {
            return Err("header has no nonce".into());
        }
        let mut validation = Validation::new(self.algorithm);
        // The time window is checked below against `now`, not the system clock.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &validation)
            .map_err(|e| format!("signature or claims: {e}"))?;
        let claims = data.claims;
        if claims.iss != "cdp" {
            return Err(format!("iss {:?}, expected \"cdp\"", claims.iss));
        }
        if claims.sub != self.key_name {
            return Err("sub is not the key name".into());
        }
        if claims.exp <= claims.nbf || claims.exp - claims.nbf > MAX_LIFETIME_SECS {
            return Err(format!(
                "validity window {}..{} is not within two minutes",
                claims.nbf, claims.exp
            ));
        }
        if now + LEEWAY_SECS < claims.nbf {
            return Err("not valid yet".into());
        }
        if now - LEEWAY_SECS >= claims.exp {
            return Err("expired".into());
        }
        Ok(())
    }
}
