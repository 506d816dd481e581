//! Product ids and currency codes: the one parser every id from outside goes through.
//!
//! In: text from the exchange (products list, trades, error frames, REST answers), from
//! clients (query strings, paths) and from NATS (messages, subjects). Out: a [`ProductId`] or
//! a [`Currency`] that cannot hold anything but the grammar below, or a [`BadProductId`] /
//! [`BadCurrency`] carrying an escaped, clipped copy of what was refused.
//!
//! The grammar (Coinbase's spot ids, e.g. `BTC-USD`, `1INCH-EUR`, `USDT-USDC`):
//!
//! ```text
//! currency   = 1*16( "A"-"Z" / "0"-"9" )
//! product-id = currency "-" currency           ; so at most 33 bytes
//! ```
//!
//! Nothing else: no lower case, no second dash, no space, no control character, no byte
//! outside ASCII. So a `ProductId` is safe by type in SQL text, NATS subjects and KV keys,
//! REST path segments, HTML text and attributes, and CSS attribute selectors. (An id may begin
//! with a digit, so `#1INCH-USD` is not a valid CSS id selector: pages select by attribute.)
//! Clients may write ids in lower case: [`ProductId::from_client`] upper-cases first.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest currency code.
pub const MAX_CURRENCY_LEN: usize = 16;
/// Longest product id: two currency codes and the dash.
pub const MAX_PRODUCT_ID_LEN: usize = 2 * MAX_CURRENCY_LEN + 1;
/// Characters of a refused value quoted back in an error or a log line.
const SHOWN: usize = 160;

/// A product id of the grammar in the module doc. Cheap to clone (shared text).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProductId(Arc<str>);

/// A currency code of the grammar in the module doc.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency(Arc<str>);

/// Text that is not a product id. Holds the refused text escaped and clipped, safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{shown} is not a product id (two codes of 1 to {MAX_CURRENCY_LEN} upper-case letters or digits around one '-', such as BTC-USD)"
)]
pub struct BadProductId {
    shown: String,
}

/// Text that is not a currency code. Holds the refused text escaped and clipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not a currency code (1 to {MAX_CURRENCY_LEN} upper-case letters or digits)")]
pub struct BadCurrency {
    shown: String,
}

impl BadProductId {
    fn of(raw: &str) -> Self {
        BadProductId { shown: shown(raw) }
    }

    /// The refused text, escaped (`"a\r\nb"`) and clipped: safe in a log line or an answer.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// What an answer to a client says is accepted.
    pub const ACCEPTED: &'static str =
        "a product id such as BTC-USD (two codes of 1 to 16 letters or digits around one '-')";
}

impl BadCurrency {
    /// The refused text, escaped and clipped.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// `raw` as a quoted, escaped string of at most [`SHOWN`] characters, with its length when
/// clipped: control characters, quotes and non-ASCII come out as escapes.
pub fn shown(raw: &str) -> String {
    let count = raw.chars().count();
    let head: String = raw.chars().take(SHOWN).collect();
    let escaped: String = head.escape_default().collect();
    if count > SHOWN {
        format!("\"{escaped}\"… ({} bytes)", raw.len())
    } else {
        format!("\"{escaped}\"")
    }
}

fn is_code(bytes: &[u8]) -> bool {
    (1..=MAX_CURRENCY_LEN).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

impl ProductId {
    /// Parses an id exactly as the grammar says (the exchange's and NATS's ids).
    pub fn parse(raw: &str) -> Result<ProductId, BadProductId> {
        if raw.len() > MAX_PRODUCT_ID_LEN {
            return Err(BadProductId::of(raw));
        }
        let bytes = raw.as_bytes();
        let Some(dash) = bytes.iter().position(|&b| b == b'-') else {
            return Err(BadProductId::of(raw));
        };
        if is_code(&bytes[..dash]) && is_code(&bytes[dash + 1..]) {
            Ok(ProductId(Arc::from(raw)))
        } else {
            Err(BadProductId::of(raw))
        }
    }

    /// Parses an id a client wrote: surrounding spaces trimmed, letters upper-cased
    /// (`btc-usd` is `BTC-USD`), then [`ProductId::parse`].
    pub fn from_client(raw: &str) -> Result<ProductId, BadProductId> {
        let trimmed = raw.trim();
        if trimmed.len() > MAX_PRODUCT_ID_LEN {
            return Err(BadProductId::of(raw));
        }
        ProductId::parse(&trimmed.to_ascii_uppercase()).map_err(|_| BadProductId::of(raw))
    }

    /// An id written in the code (a literal, as in tests and fixtures).
    ///
    /// # Panics
    /// When `id` is not a product id: a mistake in the code, never an outside value.
    pub fn from_static(id: &'static str) -> ProductId {
        match ProductId::parse(id) {
            Ok(id) => id,
            Err(e) => panic!("{e}"),
        }
    }

    /// Builds an id from two codes.
    pub fn from_codes(base: &Currency, quote: &Currency) -> ProductId {
        ProductId(Arc::from(format!("{base}-{quote}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The base currency code (before the dash).
    pub fn base(&self) -> &str {
        self.0.split_once('-').map_or("", |(base, _)| base)
    }

    /// The quote currency code (after the dash).
    pub fn quote(&self) -> &str {
        self.0.split_once('-').map_or("", |(_, quote)| quote)
    }
}

impl Currency {
    /// A code written in the code (a literal).
    ///
    /// # Panics
    /// When `code` is not a currency code: a mistake in the code, never an outside value.
    pub fn from_static(code: &'static str) -> Currency {
        match Currency::parse(code) {
            Ok(code) => code,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn parse(raw: &str) -> Result<Currency, BadCurrency> {
        if is_code(raw.as_bytes()) {
            Ok(Currency(Arc::from(raw)))
        } else {
            Err(BadCurrency { shown: shown(raw) })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! text_type {
    ($name:ident, $err:ident) => {
        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, $err> {
                $name::parse(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = $err;
            fn try_from(s: &str) -> Result<Self, $err> {
                $name::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = $err;
            fn try_from(s: String) -> Result<Self, $err> {
                $name::parse(&s)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == &*other.0
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &*self.0 == other.as_str()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                $name::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_type!(ProductId, BadProductId);
text_type!(Currency, BadCurrency);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coinbase_ids_parse_and_split_into_their_codes() {
        for good in ["BTC-USD", "1INCH-EUR", "USDT-USDC", "A-B", "00-USD"] {
            let id = ProductId::parse(good).expect(good);
            assert_eq!(id, good);
            assert_eq!(format!("{}-{}", id.base(), id.quote()), good);
        }
        let longest = format!("{}-{}", "A".repeat(16), "9".repeat(16));
        assert_eq!(ProductId::parse(&longest).expect("33 bytes").len(), 33);
    }

    #[test]
    fn every_kind_of_odd_id_is_refused() {
        let long = "A".repeat(5000) + "-USD";
        let too_long_code = format!("{}-USD", "A".repeat(17));
        for bad in [
            "",
            "-",
            "BTC",
            "BTC-",
            "-USD",
            "BTC--USD",
            "BTC-USD-PERP",
            "btc-usd",
            "BTC-USD ",
            " BTC-USD",
            "BTC_USD",
            "BTC-US\0",
            "BTC-US\r",
            "BTC/../USD",
            "BTC-USD#x",
            "BTC-USD?x",
            "BTC-ÜSD",
            "BTC.USD",
            "BTC-USD\u{7f}",
            long.as_str(),
            too_long_code.as_str(),
        ] {
            let err = ProductId::parse(bad).expect_err(bad);
            let text = err.to_string();
            assert!(
                !text.chars().any(|c| c.is_control()),
                "the error holds no control character: {text:?}"
            );
            assert!(text.len() < 400, "the error is clipped: {}", text.len());
        }
    }

    #[test]
    fn client_ids_are_upper_cased_and_trimmed_first() {
        assert_eq!(
            ProductId::from_client(" btc-usd ").expect("lower case"),
            "BTC-USD"
        );
        assert!(ProductId::from_client("btc usd").is_err());
        assert!(ProductId::from_client(&"a".repeat(100)).is_err());
    }

    #[test]
    fn ids_round_trip_through_serde_and_refuse_bad_text() {
        let id: ProductId = serde_json::from_str("\"ETH-USD\"").expect("good");
        assert_eq!(serde_json::to_string(&id).expect("ser"), "\"ETH-USD\"");
        assert!(serde_json::from_str::<ProductId>("\"ETH-USD\\r\"").is_err());
        assert!(serde_json::from_str::<Currency>("\"E\\u0000\"").is_err());
    }

    #[test]
    fn currencies_follow_the_same_code_rule() {
        assert!(Currency::parse("USDC").is_ok());
        for bad in ["", "usd", "U SD", "US\r", &"X".repeat(17)] {
            assert!(Currency::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shown_text_is_escaped_and_clipped() {
        assert_eq!(shown("a\r\nb"), "\"a\\r\\nb\"");
        let long = shown(&"x".repeat(1000));
        assert!(long.ends_with("(1000 bytes)"), "{long}");
    }
}
