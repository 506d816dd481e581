//! What the live state keeps of a series and what a client asks for.
//!
//! In: applied candle updates. Out: [`LiveEntry`] (the newest update of a series, its event
//! rendered once when a client first wants it) and [`Filter`] (the series a client wants).

use std::collections::HashSet;
use std::sync::OnceLock;

use bytes::Bytes;

use super::element::{ElementId, candle_event};
use crate::model::{CandleUpdate, Granularity, ProductId};

/// A candle series: product and granularity.
pub type Series = (ProductId, Granularity);

/// The newest update of a series, with its event text.
#[derive(Debug)]
pub struct LiveEntry {
    pub update: CandleUpdate,
    /// Position in the order of applied updates (the event's `id:`).
    pub seq: u64,
    /// Which element it patches.
    pub(super) element: ElementId,
    /// The event, once a client wanted it.
    event: OnceLock<Bytes>,
    /// When this instance applied it (Unix seconds, its own clock: a producer's times are not
    /// trusted to decide what is forgotten).
    pub(super) applied: i64,
}

impl LiveEntry {
    pub(super) fn new(
        update: CandleUpdate,
        seq: u64,
        element: ElementId,
        applied: i64,
    ) -> LiveEntry {
        LiveEntry {
            update,
            seq,
            element,
            event: OnceLock::new(),
            applied,
        }
    }

    /// The `datastar-patch-elements` event, shared by every client: rendered by the first
    /// that needs it (an update no client wants, such as a granularity nobody watches, costs
    /// no rendering), the same bytes for all.
    pub fn event(&self) -> &Bytes {
        self.event
            .get_or_init(|| candle_event(&self.update, self.seq, self.element))
    }
}

/// Which series a client wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// `None`: every product.
    pub products: Option<HashSet<ProductId>>,
    /// At least one.
    pub granularities: Vec<Granularity>,
}

impl Filter {
    /// Every series.
    pub fn all() -> Filter {
        Filter {
            products: None,
            granularities: Granularity::ALL.to_vec(),
        }
    }

    /// Only these series' products and granularities.
    pub fn of(products: &[ProductId], granularities: &[Granularity]) -> Filter {
        Filter {
            products: Some(products.iter().cloned().collect()),
            granularities: granularities.to_vec(),
        }
    }

    pub fn matches(&self, product: &ProductId, granularity: Granularity) -> bool {
        self.granularities.contains(&granularity)
            && self.products.as_ref().is_none_or(|p| p.contains(product))
    }
}
