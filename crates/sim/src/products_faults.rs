//! Faults of the REST products list (`GET /market/products`): what an exchange nobody on the
//! team wrote may send. Armed through `POST /sim/products-faults` (one [`ProductsFault`] as
//! JSON), or at start with `--products-fault JSON` (repeatable); `GET` lists them and `DELETE`
//! clears them all. They stay armed until cleared.
//!
//! In: the armed faults and the normal list. Out: the list as served: extra products with odd
//! ids ([`OddId`]), a normal product listed twice, a product whose currency and name fields
//! hold control characters, or instead of the list a huge body (`{"products":[` followed by
//! gigabytes generated on the fly, a fixed block sent again and again, never held whole) or one
//! that never ends (a product every so often, forever).
//!
//! The extra products are listed only: they are not markets of the [`Exchange`], so they never
//! trade, are not in the trade log and have no REST candles (404). A subscribe that names one is
//! acknowledged (Coinbase would take a product it lists), and nothing is ever sent for it.
//! Their ids stay plain strings on the wire, whatever they hold.
//!
//! [`Exchange`]: super::market::Exchange

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The default size of [`ProductsFault::Huge`]: 2 GiB.
pub const HUGE_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// The default pause between two products of [`ProductsFault::Endless`].
pub const ENDLESS_INTERVAL_MS: u64 = 100;
/// The product [`ProductsFault::ControlChars`] adds when it names none.
pub const CONTROL_PRODUCT: &str = "CTRL-USD";
/// The text [`ProductsFault::ControlChars`] puts in name fields: CR, LF, other C0 and DEL,
/// arranged as SSE fields would be if a stream passed them on.
pub const CONTROL_TEXT: &str = "Ctrl\rretry: 0\revent: datastar-patch-signals\ndata: signals {}\r\n\u{1}\u{7}\u{1b}[31m\t\u{7f}";

/// An odd product id, as [`ProductsFault::OddIds`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OddId {
    /// 8000 characters (pseudo-random letters and digits: past an index row even compressed).
    Long,
    /// A NUL byte inside.
    Nul,
    /// `/../` inside: a path to another endpoint when put in a URL unencoded.
    DotDot,
    /// `#`: cuts a URL's path short.
    Hash,
    /// `?`: starts a URL's query.
    Question,
    /// Lower case.
    Lower,
    /// A space inside.
    Space,
    /// Letters outside ASCII (one a Cyrillic look-alike of a Latin letter).
    Unicode,
    /// Two dashes.
    TwoDashes,
    /// Nothing before the dash.
    EmptyBase,
    /// Nothing after the dash.
    EmptyQuote,
}

impl OddId {
    pub const ALL: [OddId; 11] = [
        OddId::Long,
        OddId::Nul,
        OddId::DotDot,
        OddId::Hash,
        OddId::Question,
        OddId::Lower,
        OddId::Space,
        OddId::Unicode,
        OddId::TwoDashes,
        OddId::EmptyBase,
        OddId::EmptyQuote,
    ];

    /// The id as listed.
    pub fn id(self) -> String {
        match self {
            OddId::Long => {
                // A fixed xorshift sequence: the same id every time, hard to compress.
                const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
                let mut id = String::with_capacity(8004);
                for _ in 0..8000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    id.push(char::from(ALPHABET[(x % ALPHABET.len() as u64) as usize]));
                }
                id.push_str("-USD");
                id
            }
            OddId::Nul => "NUL\0X-USD".into(),
            OddId::DotDot => "DOT-USD/../../time".into(),
            OddId::Hash => "HASH-USD#frag".into(),
            OddId::Question => "QUERY-USD?limit=1".into(),
            OddId::Lower => "lower-usd".into(),
            OddId::Space => "SP ACE-USD".into(),
            // `С` is CYRILLIC CAPITAL LETTER ES: `BTС-USD` looks like `BTC-USD`.
            OddId::Unicode => "BT\u{421}-\u{dc}SD".into(),
            OddId::TwoDashes => "TWO-DASH-USD".into(),
            OddId::EmptyBase => "-USD".into(),
            OddId::EmptyQuote => "EMPTYQ-".into(),
        }
    }
}

/// A fault of the products list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProductsFault {
    /// Extra online spot products with odd ids (every [`OddId`] when `ids` is absent).
    OddIds {
        #[serde(default)]
        ids: Option<Vec<OddId>>,
    },
    /// A normal product (the first listed when `product_id` is absent) listed twice.
    Duplicate {
        #[serde(default)]
        product_id: Option<String>,
    },
    /// [`CONTROL_TEXT`] in the name fields (`base_name`, `quote_name`, `display_name`, the
    /// display symbols) of `product_id` (a normal product), or of an extra product
    /// [`CONTROL_PRODUCT`] when absent; with `currency_ids`, in `base_currency_id` and
    /// `quote_currency_id` too.
    ControlChars {
        #[serde(default)]
        product_id: Option<String>,
        #[serde(default)]
        currency_ids: bool,
    },
    /// Instead of the list: `{"products":[` and products up to about `bytes` (default
    /// [`HUGE_BYTES`]), generated as sent; with `content_length`, announced in the header.
    Huge {
        #[serde(default)]
        bytes: Option<u64>,
        #[serde(default)]
        content_length: bool,
    },
    /// Instead of the list: `{"products":[` and then one product every `interval_ms` (default
    /// [`ENDLESS_INTERVAL_MS`]), never closed.
    Endless {
        #[serde(default)]
        interval_ms: Option<u64>,
    },
}

/// The products list faults armed now.
#[derive(Debug, Default)]
pub struct ProductsFaults {
    armed: Mutex<Vec<ProductsFault>>,
}

impl ProductsFaults {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ProductsFault>> {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms `fault` (beside the others); returns how many are armed.
    pub fn arm(&self, fault: ProductsFault) -> usize {
        let mut armed = self.lock();
        armed.push(fault);
        armed.len()
    }

    /// Clears every fault: the list is normal again.
    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn all(&self) -> Vec<ProductsFault> {
        self.lock().clone()
    }

    /// The ids of the extra products the faults list now (subscribes naming them are taken).
    pub fn extra_ids(&self) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        for fault in self.lock().iter() {
            match fault {
                ProductsFault::OddIds { ids: odd } => {
                    let odd = odd.as_deref().unwrap_or(&OddId::ALL);
                    ids.extend(odd.iter().map(|o| o.id()));
                }
                ProductsFault::ControlChars {
                    product_id: None, ..
                } => {
                    ids.insert(CONTROL_PRODUCT.to_owned());
                }
                _ => {}
            }
        }
        ids
    }

    /// Whether a fault lists `product_id` as an extra product.
    pub fn lists(&self, product_id: &str) -> bool {
        // Cheap when nothing is armed, as is usual.
        !self.lock().is_empty() && self.extra_ids().contains(product_id)
    }

    /// The body that replaces the list, when a huge or endless fault is armed (the last one
    /// armed wins).
    pub fn replacement(&self) -> Option<ProductsFault> {
        self.lock()
            .iter()
            .rev()
            .find(|f| {
                matches!(
                    f,
                    ProductsFault::Huge { .. } | ProductsFault::Endless { .. }
                )
            })
            .cloned()
    }

    /// Applies the list faults to `products` (the normal entries); `entry` builds an extra
    /// online spot product from its id.
    pub fn apply(&self, products: &mut Vec<Value>, entry: &dyn Fn(&str) -> Value) {
        let faults = self.all();
        for fault in faults {
            match fault {
                ProductsFault::OddIds { ids } => {
                    for odd in ids.as_deref().unwrap_or(&OddId::ALL) {
                        products.push(entry(&odd.id()));
                    }
                }
                ProductsFault::Duplicate { product_id } => {
                    let copy = products
                        .iter()
                        .find(|p| product_id.as_deref().is_none_or(|id| p["product_id"] == id))
                        .cloned();
                    if let Some(copy) = copy {
                        products.push(copy);
                    }
                }
                ProductsFault::ControlChars {
                    product_id,
                    currency_ids,
                } => {
                    let target = match &product_id {
                        Some(id) => products.iter_mut().find(|p| p["product_id"] == id.as_str()),
                        None => {
                            products.push(entry(CONTROL_PRODUCT));
                            products.last_mut()
                        }
                    };
                    if let Some(p) = target {
                        for field in [
                            "base_name",
                            "quote_name",
                            "display_name",
                            "base_display_symbol",
                            "quote_display_symbol",
                        ] {
                            p[field] = json!(CONTROL_TEXT);
                        }
                        if currency_ids {
                            p["base_currency_id"] = json!(format!("CT{CONTROL_TEXT}"));
                            p["quote_currency_id"] = json!(format!("US{CONTROL_TEXT}"));
                        }
                    }
                }
                ProductsFault::Huge { .. } | ProductsFault::Endless { .. } => {}
            }
        }
    }
}

const HEAD: &str = r#"{"products":["#;
const TAIL: &str = r#"],"num_products":0,"pagination":{"prev_cursor":"","next_cursor":"","has_next":false,"has_prev":false}}"#;
/// Bytes of one block of the huge list (the same block is sent again and again).
const BLOCK: usize = 64 * 1024;

/// The body of [`ProductsFault::Huge`]: about `bytes` bytes, made as they are sent, ended early
/// when `cancel` fires (the simulator stops). `entry` is one product's JSON. Returns the body and
/// its exact length.
pub fn huge_body(bytes: u64, entry: &Value, cancel: CancellationToken) -> (Body, u64) {
    let one = entry.to_string();
    let first = Bytes::from(format!("{HEAD}{one}"));
    let per_block = (BLOCK / (one.len() + 1)).max(1);
    let mut block = String::with_capacity(per_block * (one.len() + 1));
    for _ in 0..per_block {
        block.push(',');
        block.push_str(&one);
    }
    let block = Bytes::from(block);
    let fixed = (first.len() + TAIL.len()) as u64;
    let blocks = bytes.saturating_sub(fixed).div_ceil(block.len() as u64);
    let length = fixed + blocks * block.len() as u64;
    let tail = Bytes::from_static(TAIL.as_bytes());
    // States: 0 = first, 1..=blocks = a block, blocks + 1 = tail, then the end.
    let stream = futures_util::stream::unfold(0u64, move |n| {
        let (first, block, tail, cancel) =
            (first.clone(), block.clone(), tail.clone(), cancel.clone());
        async move {
            if cancel.is_cancelled() {
                return None;
            }
            let chunk = match n {
                0 => first,
                n if n <= blocks => block,
                n if n == blocks + 1 => tail,
                _ => return None,
            };
            Some((Ok::<Bytes, Infallible>(chunk), n + 1))
        }
    });
    (Body::from_stream(stream), length)
}

/// The body of [`ProductsFault::Endless`]: the head, then one product every `interval`,
/// forever (until the client leaves or `cancel` fires).
pub fn endless_body(interval: Duration, entry: &Value, cancel: CancellationToken) -> Body {
    let one = entry.to_string();
    let first = Bytes::from(format!("{HEAD}{one}"));
    let next = Bytes::from(format!(",{one}"));
    let stream = futures_util::stream::unfold(false, move |started| {
        let (first, next, cancel) = (first.clone(), next.clone(), cancel.clone());
        async move {
            if !started {
                return Some((Ok::<Bytes, Infallible>(first), true));
            }
            tokio::select! {
                () = cancel.cancelled() => None,
                () = tokio::time::sleep(interval) => Some((Ok(next), true)),
            }
        }
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_ids_are_of_every_kind_and_distinct() {
        let ids: BTreeSet<String> = OddId::ALL.iter().map(|o| o.id()).collect();
        assert_eq!(ids.len(), OddId::ALL.len());
        assert!(OddId::Long.id().len() > 8000);
        assert_eq!(OddId::Long.id(), OddId::Long.id(), "the same every time");
        assert!(OddId::Nul.id().contains('\0'));
        assert!(OddId::DotDot.id().contains("/../"));
    }

    #[test]
    fn faults_add_to_the_list_and_are_cleared() {
        let faults = ProductsFaults::default();
        let entry = |id: &str| json!({"product_id": id, "base_name": "B"});
        let normal = || vec![entry("BTC-USD"), entry("ETH-USD")];
        faults.arm(ProductsFault::Duplicate { product_id: None });
        faults.arm(ProductsFault::ControlChars {
            product_id: Some("ETH-USD".into()),
            currency_ids: false,
        });
        faults.arm(ProductsFault::OddIds {
            ids: Some(vec![OddId::Lower]),
        });
        let mut list = normal();
        faults.apply(&mut list, &entry);
        let ids: Vec<&str> = list
            .iter()
            .filter_map(|p| p["product_id"].as_str())
            .collect();
        assert_eq!(ids, ["BTC-USD", "ETH-USD", "BTC-USD", "lower-usd"]);
        assert_eq!(list[1]["base_name"], CONTROL_TEXT);
        assert!(faults.lists("lower-usd"));
        assert!(!faults.lists("BTC-USD"));
        faults.clear();
        let mut list = normal();
        faults.apply(&mut list, &entry);
        assert_eq!(list, normal());
        assert!(!faults.lists("lower-usd"));
    }
}
