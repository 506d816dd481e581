//! The pages' and page streams' query: the granularity, and the page's build in development.
//!
//! In: the raw query string. `granularity` comes as a plain parameter (`?granularity=1h`, a
//! link or a bookmark) or inside Datastar's `datastar` parameter (the page's signals as JSON,
//! sent by `@get`); the signal wins, being the page's current choice. Every spelling of a
//! granularity is accepted (`ONE_HOUR`, `1h`, Coinbase's `ONE_HOUR`). `page` names the board
//! page's rendering its stream may skip (a [`PageToken`]). Out: a [`PageQuery`], or a
//! [`BadPageQuery`] saying what is wrong and what is accepted. Unknown parameters are ignored.

use super::handoff::PageToken;
use crate::model::{ACCEPTED_GRANULARITIES, Granularity};

/// Longest `datastar` parameter read (the pages' signals are a few dozen bytes).
const MAX_SIGNALS: usize = 4096;

/// What is wrong with a page's query, and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPageQuery {
    #[error("the datastar parameter is longer than {MAX_SIGNALS} bytes")]
    SignalsTooLong,
    /// The JSON parser's message.
    #[error("the datastar parameter is not JSON: {0}")]
    SignalsNotJson(String),
    #[error("the granularity signal must be a string; accepted: {ACCEPTED_GRANULARITIES}")]
    SignalNotString,
    /// The granularity as given, clipped.
    #[error(
        "unknown granularity {0:?}; accepted: {ACCEPTED_GRANULARITIES} (or 1m, 5m, 15m, 30m, 1h, 2h, 6h, 1d)"
    )]
    Granularity(String),
    #[error("the page parameter must be 16 hex digits, as the board page writes it")]
    Page,
}

/// What a page or page stream was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    pub granularity: Granularity,
    /// The build the page came from (development reload).
    pub build: Option<String>,
    /// The board page's rendering the stream opens from.
    pub page: Option<PageToken>,
}

pub fn parse(query: Option<&str>) -> Result<PageQuery, BadPageQuery> {
    let mut plain = None;
    let mut signal = None;
    let mut build = None;
    let mut page = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "granularity" => plain = Some(value.into_owned()),
            "build" if value.len() <= 64 => build = Some(value.into_owned()),
            "page" => page = Some(PageToken::parse(&value).ok_or(BadPageQuery::Page)?),
            "datastar" => {
                if value.len() > MAX_SIGNALS {
                    return Err(BadPageQuery::SignalsTooLong);
                }
                let signals: serde_json::Value = serde_json::from_str(&value)
                    .map_err(|e| BadPageQuery::SignalsNotJson(e.to_string()))?;
                if let Some(g) = signals.get("granularity") {
                    match g.as_str() {
                        Some(g) => signal = Some(g.to_owned()),
                        None => return Err(BadPageQuery::SignalNotString),
                    }
                }
            }
            _ => {}
        }
    }
    let granularity = match signal.or(plain) {
        None => Granularity::OneMinute,
        Some(text) => text
            .parse()
            .map_err(|_| BadPageQuery::Granularity(text.chars().take(40).collect()))?,
    };
    Ok(PageQuery {
        granularity,
        build,
        page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granularity_from_a_parameter_or_the_signals() {
        assert_eq!(
            parse(None).expect("default").granularity,
            Granularity::OneMinute
        );
        assert_eq!(
            parse(Some("granularity=1h")).expect("short").granularity,
            Granularity::OneHour
        );
        let signals = "granularity=1h&datastar=%7B%22granularity%22%3A%22FIVE_MINUTES%22%2C%22other%22%3A1%7D";
        let q = parse(Some(signals)).expect("signals");
        assert_eq!(q.granularity, Granularity::FiveMinutes);
        assert_eq!(
            parse(Some("build=abc&x=1"))
                .expect("build")
                .build
                .as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn bad_queries_say_what_is_accepted() {
        for bad in [
            "granularity=2m",
            "datastar=%7B",
            "datastar=%7B%22granularity%22%3A5%7D",
        ] {
            let message = parse(Some(bad)).expect_err(bad).to_string();
            assert!(
                message.contains("granularity") || message.contains("JSON"),
                "{bad}: {message}"
            );
        }
        assert_eq!(parse(Some("page=12")), Err(BadPageQuery::Page));
        assert_eq!(
            parse(Some("page=00000000000000ff"))
                .expect("a token")
                .page
                .map(|t| t.to_string())
                .as_deref(),
            Some("00000000000000ff")
        );
        let long = format!("datastar={}", "a".repeat(MAX_SIGNALS + 1));
        assert!(parse(Some(&long)).is_err());
    }
}
