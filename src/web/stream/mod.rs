//! `GET /stream` and `GET /api/v1/stream`: candle changes as Datastar server-sent events.
//!
//! In: the query (see `params.rs`), the client's address, `Last-Event-ID`. Out:
//! `text/event-stream` with one `datastar-patch-elements` event per candle change holding a
//! `<spot-candle>` element (see `live::element`): first the current candle of every subscribed
//! series, then the live changes, then keep-alive comments when idle. Each event has an `id:`;
//! a client that comes back with `Last-Event-ID` gets a full, consistent snapshot again (the
//! latest state of each series, then the changes after it). A client that falls behind is
//! resynced to the latest state of each series; one that stays behind is disconnected. 400 for
//! bad parameters, 429 beyond the per-address cap, 503 beyond the instance's cap or while
//! stopping.

mod body;
pub(crate) mod gate;
pub mod params;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

pub use gate::{Refusal, StreamGate};
pub use params::{StreamRequest, parse};

use super::AppState;
use super::json::error;
use super::serve::Connection;
use crate::config::StreamConfig;
use crate::live::ClientSettings;
use crate::model::ProductId;

/// What the stream handlers share.
#[derive(Debug, Clone)]
pub struct Streams {
    pub config: StreamConfig,
    pub gate: Arc<StreamGate>,
    /// Cancelled at the start of the stop: every stream ends (clients reconnect elsewhere).
    pub stop: CancellationToken,
}

impl Streams {
    pub fn new(config: StreamConfig) -> Streams {
        Streams {
            gate: StreamGate::new(config.max_clients, config.max_per_address),
            config,
            stop: CancellationToken::new(),
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
}

/// The handler of both stream routes.
pub async fn stream(
    State(state): State<AppState>,
    connection: Option<Extension<Connection>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let streams = &state.streams;
    if streams.stop.is_cancelled() {
        return stopping();
    }
    let request = match parse(query.as_deref(), streams.config.max_series) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let connection = connection.map(|Extension(c)| c);
    let permit = match admit(streams, connection.as_ref(), &headers) {
        Ok(permit) => permit,
        Err(refusal) => return *refusal,
    };
    // After the caps (a refused client costs no database read). A product is unknown when it
    // is not in `trading_pairs` (not merely outside this shard) and this instance's feed does
    // not carry it (its list reaches `trading_pairs` a moment after the feed subscribes: a
    // client of a fresh instance must not be refused what it streams).
    match state
        .products
        .unknown(&request.products)
        .await
        .map(|unknown| not_carried(&state, unknown))
    {
        Ok(unknown) if unknown.is_empty() => {}
        Ok(unknown) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown product(s): {}{}; accepted: products Coinbase lists (GET /api/v1/products)",
                    unknown
                        .iter()
                        .take(10)
                        .map(|id| id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if unknown.len() > 10 { ", …" } else { "" }
                ),
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the stream's products");
            return retry_after(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the product list is not available; retry shortly",
                ),
                "5",
            );
        }
    }
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let opening = match resumed {
        // Any id, ours or not: the snapshot that follows replaces whatever the client holds.
        Some(id) if id.len() <= 32 && id.bytes().all(|b| b.is_ascii_digit()) => {
            format!(": resumed after event {id}: full snapshot follows\n\n")
        }
        _ => ": spot-canvas candle stream\n\n".to_owned(),
    };
    // Cut off for staying behind: the connection is dropped (the peer may not be reading).
    let cut_off = connection
        .as_ref()
        .map(|c| c.close.clone())
        .unwrap_or_default();
    let (subscription, initial) =
        state
            .live
            .subscribe(request.filter(), streams.client_settings(), cut_off);
    let body = body::body(
        opening,
        initial,
        subscription,
        permit,
        streams.stop.clone(),
        streams.config.keepalive,
    );
    event_stream(body)
}

/// A place among the instance's streams for this client, or the 503/429 that refuses it.
pub(crate) fn admit(
    streams: &Streams,
    connection: Option<&Connection>,
    headers: &HeaderMap,
) -> Result<gate::Permit, Box<Response>> {
    let address = client_address(headers, connection, streams.config.trust_forwarded_for);
    match streams.gate.try_acquire(address) {
        Ok(permit) => Ok(permit),
        Err(Refusal::Full { max }) => Err(Box::new(retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("this instance serves its maximum of {max} streams; retry later"),
            ),
            "5",
        ))),
        Err(Refusal::TooManyFromAddress { max }) => Err(Box::new(retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("at most {max} concurrent streams per client address; close one first"),
            ),
            "5",
        ))),
    }
}

/// The products of `ids` this instance's feed does not carry.
fn not_carried<'a>(state: &AppState, ids: Vec<&'a ProductId>) -> Vec<&'a ProductId> {
    if ids.is_empty() {
        return ids;
    }
    let report = state.feed.report();
    ids.into_iter()
        .filter(|id| {
            !report
                .connections
                .iter()
                .any(|c| c.products.iter().any(|p| p == *id))
        })
        .collect()
}

/// The answer while the service stops: 503, come back in a second (elsewhere).
pub(crate) fn stopping() -> Response {
    retry_after(
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is stopping; reconnect",
        ),
        "1",
    )
}

/// The headers of an event stream.
pub(crate) fn event_stream(body: axum::body::Body) -> Response {
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

/// `response` with a `Retry-After` of `seconds`.
pub(crate) fn retry_after(mut response: Response, seconds: &'static str) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
    response
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
