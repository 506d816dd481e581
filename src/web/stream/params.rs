//! The stream's query parameters.
//!
//! In: the raw query string. Out: which series the client wants, or a message saying what is
//! wrong and what is accepted ([`BadStreamRequest`]). `products` or `product`, and `granularities` or `granularity`,
//! each repeated or comma-separated; no products means every product (exempt from the series
//! cap), no granularity means all eight. Other parameters (such as the `datastar` signals a
//! Datastar client sends) are ignored.

use std::collections::BTreeSet;

use crate::live::Filter;
use crate::model::{BadProductId, Granularity, ProductId, UnknownGranularity};

/// What is wrong with a stream request, and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadStreamRequest {
    #[error("invalid product {}; accepted: {}", .0.shown(), BadProductId::ACCEPTED)]
    Product(BadProductId),
    /// The granularity as given, clipped.
    #[error(transparent)]
    Granularity(UnknownGranularity),
    #[error(
        "subscription over the cap: {products} product(s) × {granularities} granularity(ies) \
         is more than {max} series; accepted: at most {max} series, or no products for every product"
    )]
    OverCap {
        products: usize,
        granularities: usize,
        max: usize,
    },
}

/// A valid stream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    /// Named products, upper case, sorted; empty: every product.
    pub products: Vec<ProductId>,
    pub granularities: Vec<Granularity>,
}

impl StreamRequest {
    pub fn filter(&self) -> Filter {
        Filter {
            products: (!self.products.is_empty()).then(|| self.products.iter().cloned().collect()),
            granularities: self.granularities.clone(),
        }
    }
}

/// Parses and checks the query; at most `max_series` named series.
pub fn parse(query: Option<&str>, max_series: usize) -> Result<StreamRequest, BadStreamRequest> {
    let mut products = BTreeSet::new();
    let mut granularities = BTreeSet::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let pieces = value.split(',').map(str::trim).filter(|p| !p.is_empty());
        match key.as_ref() {
            "products" | "product" => {
                for piece in pieces {
                    products
                        .insert(ProductId::from_client(piece).map_err(BadStreamRequest::Product)?);
                    // Checked as they come: a huge list is refused before it is all read.
                    if products.len() > max_series {
                        return Err(over_cap(products.len(), 1, max_series));
                    }
                }
            }
            "granularities" | "granularity" => {
                for piece in pieces {
                    let g = piece.parse::<Granularity>().map_err(|_| {
                        BadStreamRequest::Granularity(UnknownGranularity(clip(piece)))
                    })?;
                    granularities.insert(g);
                }
            }
            _ => {}
        }
    }
    let granularities: Vec<Granularity> = if granularities.is_empty() {
        Granularity::ALL.to_vec()
    } else {
        granularities.into_iter().collect()
    };
    let series = products.len().saturating_mul(granularities.len());
    if series > max_series {
        return Err(over_cap(products.len(), granularities.len(), max_series));
    }
    Ok(StreamRequest {
        products: products.into_iter().collect(),
        granularities,
    })
}

fn over_cap(products: usize, granularities: usize, max: usize) -> BadStreamRequest {
    BadStreamRequest::OverCap {
        products,
        granularities,
        max,
    }
}

/// A parameter as quoted back in an error: not more than 80 characters.
fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_repeated_or_comma_separated() {
        let a = parse(
            Some("products=btc-usd,ETH-USD&product=SOL-USD&granularity=1m&granularities=FIVE_MINUTE,ONE_HOUR"),
            100,
        )
        .expect("valid");
        assert_eq!(a.products, ["BTC-USD", "ETH-USD", "SOL-USD"]);
        assert_eq!(
            a.granularities,
            [
                Granularity::OneMinute,
                Granularity::FiveMinutes,
                Granularity::OneHour
            ]
        );
        let all = parse(Some("datastar=%7B%7D"), 1).expect("nothing named");
        assert!(all.products.is_empty());
        assert_eq!(all.granularities, Granularity::ALL);
        assert_eq!(all.filter(), Filter::all());
        assert_eq!(parse(None, 1).expect("no query"), all);
    }

    #[test]
    fn bad_parameters_say_what_is_wrong_and_what_is_accepted() {
        let cases = [
            ("products=BTC%20USD", "invalid product \"BTC USD\""),
            ("products=BTC-USD;DROP", "invalid product"),
            (
                "granularity=7m",
                "unknown granularity \"7m\"; accepted: ONE_MINUTE",
            ),
            (
                "products=A-X,B-X,C-X&granularity=1m,5m",
                "subscription over the cap: 3 product(s) × 2",
            ),
        ];
        for (query, expected) in cases {
            let error = parse(Some(query), 5).expect_err(query).to_string();
            assert!(error.contains(expected), "{query}: {error}");
        }
        let many: Vec<String> = (0..10_000).map(|i| format!("P{i}-USD")).collect();
        let query = format!("products={}", many.join(","));
        let error = parse(Some(&query), 800).expect_err("too many").to_string();
        assert!(error.contains("more than 800 series"), "{error}");
    }
}
