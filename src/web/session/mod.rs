//! The SSE session every stream runs in: admission, the stop, the cut-off, keep-alive, and the
//! driver that writes a view's events.
//!
//! In: a stream request's connection and headers, and a [`View`] (what one stream shows: the
//! candle stream, the board, a chart). Out: the refusals (503 while stopping or when the
//! instance is full, 429 beyond the per-address cap, each with `Retry-After`) or a
//! `text/event-stream` response whose body the [`driver`] writes until the stop, a cut-off or
//! the client going away; a page stream gzip-encoded when the client accepts it ([`gzip`]). A
//! view renders its events only through [`Events`], so every byte of outside text passes
//! through [`crate::sse::render`].
//!
//! Why one session: the three streams differ in what they show, not in how a stream is
//! admitted, kept alive and ended.

pub(crate) mod driver;
pub(crate) mod gate;
pub mod gzip;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use driver::{Events, KeepAlive, View};
pub use gate::{Permit, Refusal, StreamGate};

use super::error::ApiError;
use super::serve::Connection;
use crate::config::StreamConfig;
use crate::live::{ClientSettings, Filter, LiveEntry, LiveState, Subscription};

/// What the stream handlers share.
#[derive(Debug, Clone)]
pub struct Streams {
    pub config: StreamConfig,
    pub gate: Arc<StreamGate>,
    /// Cancelled at the start of the stop: every stream ends (clients reconnect elsewhere).
    pub stop: CancellationToken,
    /// The places among the gzip-encoded page streams.
    pub encoded: Arc<gzip::Budget>,
}

impl Streams {
    pub fn new(config: StreamConfig) -> Streams {
        Streams {
            gate: StreamGate::new(config.max_clients, config.max_per_address),
            config,
            stop: CancellationToken::new(),
            encoded: Arc::default(),
        }
    }

    pub(crate) fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            capacity: self.config.queue,
            stall: self.config.stall,
            ..ClientSettings::default()
        }
    }

    /// The settings of a page stream (board, chart). A page keeps only the latest state of
    /// each row and coalesces anyway, so a resync (the latest state of its series) loses it
    /// nothing: a slow reader, a phone on a poor link, is resynced as often as it falls behind
    /// instead of being cut off after a few resyncs and coming back for a whole new board. One
    /// that stops reading is still cut off after the stall limit.
    pub(crate) fn page_settings(&self) -> ClientSettings {
        ClientSettings {
            max_resyncs: u32::MAX,
            ..self.client_settings()
        }
    }

    /// The answer while the service stops: 503, come back in a second (elsewhere).
    pub(crate) fn open(&self) -> Result<(), ApiError> {
        if self.stop.is_cancelled() {
            return Err(ApiError::unavailable(
                "the service is stopping; reconnect",
                "1",
            ));
        }
        Ok(())
    }

    /// A place among the instance's streams for this client, or the 503/429 that refuses it.
    pub(crate) fn admit(
        &self,
        connection: Option<&Connection>,
        headers: &HeaderMap,
    ) -> Result<Session, ApiError> {
        let address = client_address(headers, connection, self.config.trust_forwarded_for);
        let permit = self
            .gate
            .try_acquire(address)
            .map_err(|refusal| match refusal {
                Refusal::Full { max } => ApiError::unavailable(
                    format!("this instance serves its maximum of {max} streams; retry later"),
                    "5",
                ),
                Refusal::TooManyFromAddress { max } => ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("at most {max} concurrent streams per client address; close one first"),
                )
                .retry_after("5"),
            })?;
        Ok(Session {
            permit,
            // Cut off for staying behind: the connection is dropped (the peer may not be
            // reading).
            cut_off: connection.map(|c| c.close.clone()).unwrap_or_default(),
            stop: self.stop.clone(),
            keepalive: self.config.keepalive,
            reload: None,
            opening: Events::default(),
            budget: self.encoded.clone(),
            encoding: Encoding::Plain,
        })
    }
}

/// An admitted stream: its place among the instance's streams until it ends.
#[derive(Debug)]
pub struct Session {
    permit: Permit,
    cut_off: CancellationToken,
    stop: CancellationToken,
    keepalive: Duration,
    reload: Option<watch::Receiver<u64>>,
    /// Events before the view's own (a reload).
    opening: Events,
    budget: Arc<gzip::Budget>,
    encoding: Encoding,
}

/// How a stream's body is encoded.
#[derive(Debug)]
enum Encoding {
    /// Never negotiated (the candle stream: programs read it).
    Plain,
    /// Negotiated, and the client did not take gzip or the budget was full.
    Declined,
    Gzip(gzip::Gzip),
}

impl Session {
    /// Subscribes to `filter` of the live state, cut off through this session's connection:
    /// the subscription and the current entries.
    pub fn subscribe(
        &self,
        live: &LiveState,
        filter: Filter,
        settings: ClientSettings,
    ) -> (Subscription, Vec<Arc<LiveEntry>>) {
        live.subscribe(filter, settings, self.cut_off.clone())
    }

    /// Sends what `reload` says (development): a reload script each time it moves, and one
    /// at once when the page is `stale` (it came from another build).
    pub fn reloading(mut self, reload: Option<watch::Receiver<u64>>, stale: bool) -> Session {
        if stale {
            self.opening.push(driver::reload_event());
        }
        self.reload = reload;
        self
    }

    /// Encodes the stream with gzip when `headers` accept it and the budget has room (a page
    /// stream: rows of the same markup, which a browser decodes).
    pub fn negotiating(mut self, headers: &HeaderMap) -> Session {
        self.encoding = match self.budget.negotiate(headers) {
            Some(gzip) => Encoding::Gzip(gzip),
            None => Encoding::Declined,
        };
        self
    }

    /// The response: `view`'s opening events from `initial` (the subscription's current
    /// entries), then its live events, kept alive as `keepalive` says.
    pub fn respond<V: View>(
        mut self,
        view: V,
        initial: Vec<Arc<LiveEntry>>,
        subscription: Subscription,
        keepalive: KeepAlive,
    ) -> Response {
        let (encoding, negotiated) = match std::mem::replace(&mut self.encoding, Encoding::Plain) {
            Encoding::Plain => (None, false),
            Encoding::Declined => (None, true),
            Encoding::Gzip(gzip) => (Some(gzip), true),
        };
        let encoded = encoding.is_some();
        let driver = driver::Driver::new(self, view, initial, subscription, keepalive);
        let mut response = event_stream(driver::body(driver, encoding));
        let headers = response.headers_mut();
        if negotiated {
            headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        if encoded {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    }
}

/// The headers of an event stream.
fn event_stream(body: axum::body::Body) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The address streams are counted by.
fn client_address(
    headers: &HeaderMap,
    connection: Option<&Connection>,
    trust_forwarded_for: bool,
) -> IpAddr {
    if trust_forwarded_for
        && let Some(last) = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|v| !v.is_empty())
        && let Some(address) = parse_address(last)
    {
        return address;
    }
    connection
        .map(|c| c.peer.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// An address as proxies write it: `ip`, `ip:port`, `[v6]` or `[v6]:port`.
fn parse_address(text: &str) -> Option<IpAddr> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = text.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_in_every_form_proxies_write() {
        for (text, expected) in [
            ("203.0.113.7", "203.0.113.7"),
            ("203.0.113.7:5123", "203.0.113.7"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
        ] {
            assert_eq!(
                parse_address(text),
                Some(expected.parse().expect("ip")),
                "{text}"
            );
        }
        assert_eq!(parse_address("unknown"), None);
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("10.0.0.1, 198.51.100.2:80"),
        );
        assert_eq!(
            client_address(&headers, None, true),
            "198.51.100.2".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            client_address(&headers, None, false),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            "not trusted: the peer"
        );
    }
}
