//! The products list and one product.
//!
//! In: the body of `GET /market/products` or `GET /market/products/{id}`. Out: a
//! [`ProductList`] (one malformed product costs only itself, the list is capped) or a
//! [`Product`].

use crate::coinbase::frame::{FrameError, parse_decimal};
use crate::model::{Currency, Product, ProductId, shown};

/// A product of a products list that was skipped, or kept with some fields left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductIssue {
    /// The product's id as sent, escaped and clipped ([`shown`]) when it named one as text,
    /// else empty: safe to log.
    pub product_id: String,
    /// What was wrong, naming the field and the value.
    pub reason: String,
}

/// A parsed products list. One malformed product costs only that product: it is listed in
/// `skipped`, and the others are kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProductList {
    pub products: Vec<Product>,
    /// Products left out: not an object, a `product_id` that is not a product id (see
    /// [`ProductId`]), a product listed a second time, or a field the service selects
    /// products by (`status`, `product_type`, currencies, `alias`, `alias_to`,
    /// `trading_disabled`) of the wrong type.
    pub skipped: Vec<ProductIssue>,
    /// Products of another type than `SPOT` (futures, whose ids follow another grammar):
    /// left out, as the service never ingests them. Coinbase sends none when asked for spot
    /// products only.
    pub not_spot: usize,
    /// Products kept with an optional size or increment left out (`None`) because it was not
    /// an exact decimal string (`"1e10"`, a JSON number, ...).
    pub degraded: Vec<ProductIssue>,
    /// Products left out in all (`skipped` keeps the first [`ISSUES_KEPT`] of them).
    pub skipped_count: usize,
    /// Products kept degraded in all (`degraded` keeps the first [`ISSUES_KEPT`]).
    pub degraded_count: usize,
}

/// Most products a list may hold (Coinbase lists about 800): a longer list is refused whole,
/// so that no outside count sizes the service's memory.
pub const MAX_PRODUCTS: usize = 20_000;
/// Issues of a list kept as examples; the rest are counted.
pub const ISSUES_KEPT: usize = 100;

impl ProductList {
    fn skip(&mut self, issue: ProductIssue) {
        self.skipped_count += 1;
        if self.skipped.len() < ISSUES_KEPT {
            self.skipped.push(issue);
        }
    }

    fn degrade(&mut self, issue: ProductIssue) {
        self.degraded_count += 1;
        if self.degraded.len() < ISSUES_KEPT {
            self.degraded.push(issue);
        }
    }

    /// Takes one element of the list.
    fn take(&mut self, value: &serde_json::Value, seen: &mut std::collections::HashSet<ProductId>) {
        let kind = value
            .get("product_type")
            .and_then(serde_json::Value::as_str);
        if kind.is_some_and(|kind| !kind.eq_ignore_ascii_case("SPOT")) {
            self.not_spot += 1;
            return;
        }
        let product_id = value
            .get("product_id")
            .and_then(serde_json::Value::as_str)
            .map(shown)
            .unwrap_or_default();
        let mut left_out = Vec::new();
        match product_from_value(value, &mut left_out) {
            Ok(product) if !seen.insert(product.product_id.clone()) => {
                self.skip(ProductIssue {
                    product_id,
                    reason: "listed more than once: the first listing is kept".into(),
                });
            }
            Ok(product) => {
                if !left_out.is_empty() {
                    self.degrade(ProductIssue {
                        product_id,
                        reason: left_out.join("; "),
                    });
                }
                self.products.push(product);
            }
            Err(e) => self.skip(ProductIssue {
                product_id,
                reason: e.to_string(),
            }),
        }
    }
}

/// `{"products": [...], ...}` read one element at a time: no element is held longer than it
/// takes to parse it, and the list is refused past [`MAX_PRODUCTS`] elements.
struct ListVisitor;

struct ProductsSeq<'a>(&'a mut ProductList);

impl<'de> serde::de::DeserializeSeed<'de> for ProductsSeq<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ProductsSeq<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of products")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut elements = 0usize;
        while let Some(value) = seq.next_element::<serde_json::Value>()? {
            elements += 1;
            if elements > MAX_PRODUCTS {
                return Err(serde::de::Error::custom(format!(
                    "the list holds more than {MAX_PRODUCTS} products"
                )));
            }
            self.0.take(&value, &mut seen);
        }
        Ok(())
    }
}

impl<'de> serde::de::Visitor<'de> for ListVisitor {
    type Value = ProductList;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a products list object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ProductList, A::Error> {
        let mut list = ProductList::default();
        let mut found = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "products" && !found {
                found = true;
                map.next_value_seed(ProductsSeq(&mut list))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        if !found {
            return Err(serde::de::Error::missing_field("products"));
        }
        Ok(list)
    }
}

/// Parses a products list answer, each product on its own, one element at a time. Only a
/// body that is not a products list at all, or one of more than [`MAX_PRODUCTS`] elements,
/// is an error.
pub fn parse_products(body: &[u8]) -> Result<ProductList, FrameError> {
    use serde::Deserializer as _;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let list = (&mut deserializer).deserialize_map(ListVisitor)?;
    deserializer.end()?;
    Ok(list)
}

/// Parses a single product answer (`GET /market/products/{id}`). Optional sizes and
/// increments that cannot be read are left out, as in a list.
pub fn parse_product(body: &[u8]) -> Result<Product, FrameError> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    product_from_value(&value, &mut Vec::new())
}

/// One product. Fields the service selects products by must be right (else the error);
/// optional decimals that are not exact decimal strings become `None`, each noted in
/// `left_out`. Absent text fields are empty and `trading_disabled` absent or `null` is false,
/// as Coinbase omits them.
fn product_from_value(
    value: &serde_json::Value,
    left_out: &mut Vec<String>,
) -> Result<Product, FrameError> {
    let object = value.as_object().ok_or(FrameError::BadValue {
        field: "product",
        value: "(not an object)".into(),
    })?;
    let text = |field: &'static str| -> Result<String, FrameError> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Ok(String::new()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(FrameError::BadValue {
                field,
                value: other.to_string(),
            }),
        }
    };
    // Status and type are short words (`online`, `SPOT`): anything else is not stored.
    let word = |field: &'static str| -> Result<String, FrameError> {
        let value = text(field)?;
        let plain = value.len() <= 32
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if plain {
            Ok(value)
        } else {
            Err(FrameError::BadValue { field, value })
        }
    };
    let product_id = text("product_id")?;
    if product_id.is_empty() {
        return Err(FrameError::MissingField {
            channel: "products",
            field: "product_id",
        });
    }
    let product_id = ProductId::parse(&product_id).map_err(|_| FrameError::BadValue {
        field: "product_id",
        value: product_id.clone(),
    })?;
    let currency = |field: &'static str| -> Result<Currency, FrameError> {
        let code = text(field)?;
        Currency::parse(&code).map_err(|_| FrameError::BadValue { field, value: code })
    };
    let alias = match text("alias")? {
        alias if alias.is_empty() => None,
        alias => Some(ProductId::parse(&alias).map_err(|_| FrameError::BadValue {
            field: "alias",
            value: alias.clone(),
        })?),
    };
    let trading_disabled = match object.get("trading_disabled") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(other) => {
            return Err(FrameError::BadValue {
                field: "trading_disabled",
                value: other.to_string(),
            });
        }
    };
    let alias_to = match object.get("alias_to") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => {
            let mut ids = Vec::with_capacity(items.len());
            for item in items {
                let Some(text) = item.as_str() else {
                    return Err(FrameError::BadValue {
                        field: "alias_to",
                        value: item.to_string(),
                    });
                };
                // An alias that is no product id can never be listed as a product: only it
                // is left out.
                match ProductId::parse(text) {
                    Ok(id) => ids.push(id),
                    Err(e) => left_out.push(format!("field `alias_to`: {e}")),
                }
            }
            ids
        }
        Some(other) => {
            return Err(FrameError::BadValue {
                field: "alias_to",
                value: other.to_string(),
            });
        }
    };
    let mut decimal = |field: &'static str| match object.get(field) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        Some(serde_json::Value::String(s)) => match parse_decimal(field, s) {
            Ok(d) => Some(d),
            Err(e) => {
                left_out.push(e.to_string());
                None
            }
        },
        Some(other) => {
            left_out.push(format!("field `{field}` is not a decimal string: {other}"));
            None
        }
    };
    let base_min_size = decimal("base_min_size");
    let base_max_size = decimal("base_max_size");
    let base_increment = decimal("base_increment");
    let price_increment = decimal("price_increment");
    Ok(Product {
        product_id,
        base: currency("base_currency_id")?,
        quote: currency("quote_currency_id")?,
        status: word("status")?,
        product_type: word("product_type")?,
        trading_disabled,
        base_min_size,
        base_max_size,
        base_increment,
        price_increment,
        alias,
        alias_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: &str) -> String {
        let (base, quote) = id.split_once('-').unwrap_or(("X", "Y"));
        format!(
            r#"{{"product_id":"{id}","base_currency_id":"{base}","quote_currency_id":"{quote}","status":"online","product_type":"SPOT"}}"#
        )
    }

    #[test]
    fn a_list_of_junk_elements_keeps_a_bounded_number_of_issues() {
        let junk = vec!["0"; 5_000].join(",");
        let body = format!(
            r#"{{"products":[{},{junk},{}],"num_products":2}}"#,
            product("A-B"),
            product("C-D")
        );
        let list = parse_products(body.as_bytes()).expect("a list");
        assert_eq!(list.products.len(), 2);
        assert_eq!(list.skipped_count, 5_000);
        assert_eq!(list.skipped.len(), ISSUES_KEPT);
    }

    #[test]
    fn a_list_of_more_than_the_most_products_is_refused_whole() {
        let body = format!(
            r#"{{"products":[{}]}}"#,
            vec!["{}"; MAX_PRODUCTS + 1].join(",")
        );
        let error = parse_products(body.as_bytes()).expect_err("too many");
        assert!(
            error.to_string().contains("more than 20000 products"),
            "{error}"
        );
    }

    #[test]
    fn a_body_that_is_no_products_list_is_an_error() {
        for body in [
            r#"{"items":[]}"#,
            r#"[]"#,
            r#"{"products":{}}"#,
            r#"{"products":[]} x"#,
        ] {
            assert!(parse_products(body.as_bytes()).is_err(), "{body}");
        }
        let empty = parse_products(br#"{"products":[],"products":[1]}"#).expect("first key taken");
        assert!(empty.products.is_empty());
    }
}
