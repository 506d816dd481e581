//! What the page streams share: their subscription, the development reload, the heartbeat and
//! the connection signal.
//!
//! In: an admitted [`Session`], the page's query and a [`View`] (the board, a chart). Out: the
//! stream's response: the view's series and the one-minute candles the rolling day moves with,
//! at the page settings (resynced, never cut off for falling behind), gzip-encoded when the
//! browser accepts it, with a heartbeat and, in development, the reload script.

use axum::http::HeaderMap;
use axum::response::Response;
use datastar::prelude::PatchSignals;

use super::dev::DevReload;
use super::query::PageQuery;
use crate::live::Filter;
use crate::model::{Granularity, ProductId};
use crate::web::AppState;
use crate::web::session::{Events, KeepAlive, Session, View};

/// `view`'s stream: the series of `products` (`None`: every product) in the query's
/// granularity.
pub(super) fn respond<V: View>(
    state: &AppState,
    session: Session,
    query: &PageQuery,
    products: Option<&[ProductId]>,
    headers: &HeaderMap,
    view: V,
) -> Response {
    let granularity = query.granularity;
    let mut granularities = vec![granularity];
    if granularity != Granularity::OneMinute {
        // The rolling day moves with the one-minute candles.
        granularities.push(Granularity::OneMinute);
    }
    let filter = match products {
        None => Filter {
            products: None,
            granularities,
        },
        Some(products) => Filter::of(products, &granularities),
    };
    let (subscription, initial) =
        session.subscribe(&state.live, filter, state.streams.page_settings());
    let stale = state.pages.dev.is_some()
        && query
            .build
            .as_deref()
            .is_some_and(|b| b != state.pages.build);
    let reload = state.pages.dev.as_ref().map(DevReload::subscribe);
    session
        .reloading(reload, stale)
        .negotiating(headers)
        .respond(view, initial, subscription, KeepAlive::Beat)
}

/// The signal that tells the page its stream is live.
pub(super) fn live_signal(out: &mut Events) {
    out.push(PatchSignals::new(r#"{"_link":"live"}"#).into_datastar_event());
}
