//! Optional JWT authentication of subscribe messages with a CDP API key.
//!
//! In: the key name and private key from the configuration. Out: one fresh token per
//! subscribe message: header `alg` (ES256 or EdDSA), `kid` = key name, `nonce` = random hex;
//! claims `iss=cdp`, `sub` = key name, `nbf` = now, `exp` = now + 120 s, and no `uri` (that is
//! for REST). Coinbase hands out EC keys as SEC1 PEM (`BEGIN EC PRIVATE KEY`), which
//! jsonwebtoken does not take: they are converted to PKCS#8. Ed25519 secrets come as base64 of
//! the 32-byte seed followed by the 32-byte public key.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::Rng;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::config::CoinbaseCredentials;

/// Lifetime of a token: Coinbase rejects tokens after two minutes.
pub const TOKEN_LIFETIME_SECS: i64 = 120;

/// Claims of a WebSocket token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub nbf: i64,
    pub exp: i64,
}

/// Why a key could not be loaded. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the EC private key is not a valid SEC1 or PKCS#8 P-256 PEM key")]
    BadEcKey,
    #[error("the Ed25519 key is not base64 of a 32-byte seed and its 32-byte public key")]
    BadEd25519Key,
    #[error("the Ed25519 key's public half does not match its seed")]
    Ed25519Mismatch,
    #[error("cannot sign a token: {0}")]
    Sign(String),
}

/// Signs subscribe tokens with one CDP key.
pub struct JwtSigner {
    key_name: String,
    algorithm: Algorithm,
    key: EncodingKey,
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("key_name", &self.key_name)
            .field("algorithm", &self.algorithm)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl JwtSigner {
    /// Loads the key: PEM (SEC1 or PKCS#8 P-256, or PKCS#8 Ed25519) or base64 Ed25519.
    pub fn new(credentials: &CoinbaseCredentials) -> Result<Self, KeyError> {
        let secret = credentials.private_key.expose_secret();
        let (algorithm, key) = if secret.contains("-----BEGIN EC PRIVATE KEY-----") {
            let sec1 = p256::SecretKey::from_sec1_pem(secret).map_err(|_| KeyError::BadEcKey)?;
            let pkcs8 = sec1.to_pkcs8_der().map_err(|_| KeyError::BadEcKey)?;
            (Algorithm::ES256, EncodingKey::from_ec_der(pkcs8.as_bytes()))
        } else if secret.contains("-----BEGIN") {
            match EncodingKey::from_ec_pem(secret.as_bytes()) {
                Ok(key) => (Algorithm::ES256, key),
                Err(_) => (
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_pem(secret.as_bytes()).map_err(|_| KeyError::BadEcKey)?,
                ),
            }
        } else {
            let bytes = STANDARD
                .decode(secret.trim())
                .map_err(|_| KeyError::BadEd25519Key)?;
            let (seed, public) = match bytes.len() {
                64 => (&bytes[..32], Some(&bytes[32..])),
                32 => (&bytes[..], None),
                _ => return Err(KeyError::BadEd25519Key),
            };
            let seed: [u8; 32] = seed.try_into().map_err(|_| KeyError::BadEd25519Key)?;
            let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
            if let Some(public) = public
                && signing.verifying_key().as_bytes() != public
            {
                return Err(KeyError::Ed25519Mismatch);
            }
            let der = signing
                .to_pkcs8_der()
                .map_err(|_| KeyError::BadEd25519Key)?;
            (Algorithm::EdDSA, EncodingKey::from_ed_der(der.as_bytes()))
        };
        let signer = JwtSigner {
            key_name: credentials.api_key.clone(),
            algorithm,
            key,
        };
        // Fail at start, not at the first subscribe, if the key cannot sign.
        signer.token(0)?;
        Ok(signer)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// A fresh token valid from `now` (Unix seconds) for two minutes.
    pub fn token(&self, now: i64) -> Result<String, KeyError> {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.key_name.clone());
        let nonce: [u8; 16] = rand::rng().random();
        header.nonce = Some(nonce.iter().map(|b| format!("{b:02x}")).collect());
        let claims = Claims {
            iss: "cdp".into(),
            sub: self.key_name.clone(),
            nbf: now,
            exp: now + TOKEN_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| KeyError::Sign(e.to_string()))
    }
}
