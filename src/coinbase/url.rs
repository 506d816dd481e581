//! REST endpoint addresses: the configured base URL with path segments appended by the URL
//! library, each percent-encoded on its own, so no id can add a segment (`/`), climb
//! (`..`), or end the path (`?`, `#`).
//!
//! In: the base URL (`COINBASE_REST_URL`) and the segments. Out: a [`reqwest::Url`].

use reqwest::Url;

use crate::model::ProductId;

/// A base URL that cannot take path segments (not `http(s)://host/...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the REST base URL is not a URL that takes a path")]
pub struct BadBaseUrl;

/// `base` with `segments` appended as path segments.
pub fn endpoint(base: &str, segments: &[&str]) -> Result<Url, BadBaseUrl> {
    let mut url = Url::parse(base).map_err(|_| BadBaseUrl)?;
    {
        let mut path = url.path_segments_mut().map_err(|_| BadBaseUrl)?;
        path.pop_if_empty();
        // A "." or ".." segment would still be taken as a step by a server: refuse them.
        if segments.iter().any(|s| matches!(*s, "." | "..")) {
            return Err(BadBaseUrl);
        }
        path.extend(segments);
    }
    Ok(url)
}

/// `GET {base}/market/products/{product}/candles`.
pub fn candles_url(base: &str, product: &ProductId) -> Result<Url, BadBaseUrl> {
    endpoint(base, &["market", "products", product.as_str(), "candles"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_appended_below_the_base_path() {
        let id = ProductId::parse("BTC-USD").expect("id");
        let url = candles_url("https://api.example.com/api/v3/brokerage/", &id).expect("url");
        assert_eq!(
            url.as_str(),
            "https://api.example.com/api/v3/brokerage/market/products/BTC-USD/candles"
        );
    }

    #[test]
    fn a_segment_cannot_walk_or_cut_the_path() {
        for (raw, expected) in [
            ("A/../B", "/base/market/products/A%2F..%2FB/candles"),
            ("A#B", "/base/market/products/A%23B/candles"),
            ("A?B", "/base/market/products/A%3FB/candles"),
        ] {
            let url = endpoint(
                "http://127.0.0.1:1/base",
                &["market", "products", raw, "candles"],
            )
            .expect("url");
            assert_eq!(url.path(), expected);
            assert_eq!(url.query(), None);
            assert_eq!(url.fragment(), None);
        }
        assert_eq!(
            endpoint("http://127.0.0.1:1/base", &[".."]),
            Err(BadBaseUrl)
        );
        assert_eq!(endpoint("mailto:x@y", &["a"]), Err(BadBaseUrl));
    }
}
