//! The product catalog: the products in `trading_pairs`, behind one cache, for the API, the
//! streams and the pages.
//!
//! In: reads of `trading_pairs` (through the API pool), product ids to check, the feed's
//! connections. Out: a [`Listing`] (every product's row, sorted by id, and the ingestible ones
//! the pages show with their price increments), whether ids are known ([`Catalog::unknown`]),
//! and which products this instance's feed carries ([`carried`]; the shard of a product is
//! [`crate::feed::shard::instance_for`]).
//!
//! The cache policy: the listing is read again when older than [`MAX_AGE`] (or empty), and on
//! a miss, at most once per [`MISS_RETRY`], so a product inserted into `trading_pairs` is known
//! about a second later while a flood of requests for unknown products costs the database one
//! read per second. One request reads at a time: the others get the listing at hand at once
//! when it answers them (a stale list beats a page waiting on the database), and wait for the
//! read in flight when it does not (no listing yet, or a miss). Every read has a
//! [`READ_TIMEOUT`]; when the database cannot answer, the last listing stays in use; with none
//! read yet, the answer is a [`CatalogError`] (the handlers answer 503).
//!
//! Product ids reach HTML attributes, URL paths and JavaScript strings of the pages (the
//! stream's `@get('/markets/<id>/stream')`): they are [`ProductId`]s, which hold nothing but
//! upper-case letters, digits and one inner dash; a stored row that does not parse is left
//! out by the repository.

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rust_decimal::Decimal;
use tokio::time::Instant;

use super::error::StoreFailure;
use crate::feed::FeedHealth;
use crate::model::{Currency, Product, ProductId};
use crate::store::Repository;

/// A listing older than this is read again before it answers.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// A miss (or a failed read) reads again, at most this often.
pub const MISS_RETRY: Duration = Duration::from_secs(1);
/// Longest wait for the database.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// What a page or a stream answers (503) when the catalog has no listing.
pub const UNAVAILABLE: &str = "the product list is not available; retry shortly";

/// The database could not say which products exist, and no earlier answer is at hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the product list is not available: the database did not answer and no earlier list is at hand"
)]
pub struct CatalogError;

impl StoreFailure for CatalogError {}

/// A product as the pages need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductInfo {
    pub id: ProductId,
    pub base: Currency,
    pub quote: Currency,
    pub price_increment: Option<Decimal>,
}

/// One read of `trading_pairs`.
#[derive(Debug)]
pub struct Listing {
    /// Every product's row, sorted by id.
    pub rows: Vec<Product>,
    known: HashSet<ProductId>,
    /// The ingestible products (online spot markets, not aliases), sorted by id.
    pub shown: Arc<Vec<ProductInfo>>,
}

impl Listing {
    fn new(mut rows: Vec<Product>) -> Listing {
        rows.sort_by(|a, b| a.product_id.cmp(&b.product_id));
        let shown = rows
            .iter()
            .filter(|p| p.is_ingestible())
            .map(|p| ProductInfo {
                id: p.product_id.clone(),
                base: p.base.clone(),
                quote: p.quote.clone(),
                price_increment: p.price_increment,
            })
            .collect();
        Listing {
            known: rows.iter().map(|p| p.product_id.clone()).collect(),
            rows,
            shown: Arc::new(shown),
        }
    }

    /// The ids of `ids` not listed.
    fn missing<'a>(&self, ids: &'a [ProductId]) -> Vec<&'a ProductId> {
        ids.iter().filter(|id| !self.known.contains(*id)).collect()
    }
}

#[derive(Debug, Default)]
struct Cache {
    listing: Option<Arc<Listing>>,
    /// When `listing` was read.
    loaded_at: Option<Instant>,
    /// The end of the last read, successful or not.
    attempted_at: Option<Instant>,
}

impl Cache {
    fn may_retry(&self, now: Instant) -> bool {
        self.attempted_at.is_none_or(|t| now - t >= MISS_RETRY)
    }

    /// Stale or empty (a service that has not listed its products yet), and a read may be
    /// tried.
    fn wants_read(&self, now: Instant) -> bool {
        let fresh = self.listing.as_ref().is_some_and(|l| !l.rows.is_empty())
            && self.loaded_at.is_some_and(|t| now - t < MAX_AGE);
        !fresh && self.may_retry(now)
    }
}

/// Reads every product's row; the error says what went wrong.
type Reader = Arc<dyn Fn() -> BoxFuture<'static, Result<Vec<Product>, String>> + Send + Sync>;

/// The product catalog; cheap to clone (one shared cache).
#[derive(Clone)]
pub struct Catalog {
    read: Reader,
    cache: Arc<Mutex<Cache>>,
    /// Held by the one request reading.
    reading: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    pub fn new(repository: Repository) -> Self {
        Self::with_reader(Arc::new(move || {
            let repository = repository.clone();
            Box::pin(async move { repository.products().await.map_err(|e| e.to_string()) })
        }))
    }

    /// A catalog of exactly `ids` (tests).
    #[cfg(test)]
    pub(crate) fn fixed(ids: Vec<ProductId>) -> Self {
        Self::with_reader(Arc::new(move || {
            let products = ids.iter().map(|id| bare_product(id)).collect::<Vec<_>>();
            Box::pin(async move { Ok(products) })
        }))
    }

    fn with_reader(read: Reader) -> Self {
        Catalog {
            read,
            cache: Arc::default(),
            reading: Arc::default(),
        }
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // Fields are set whole: a panic elsewhere cannot leave them inconsistent.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listing, read again as the policy says.
    pub async fn listing(&self) -> Result<Arc<Listing>, CatalogError> {
        self.listing_for(|_| true).await
    }

    /// The products the pages show.
    pub async fn shown(&self) -> Result<Arc<Vec<ProductInfo>>, CatalogError> {
        Ok(self.listing().await?.shown.clone())
    }

    /// One product the pages show, if listed.
    pub async fn product(&self, id: &ProductId) -> Result<Option<ProductInfo>, CatalogError> {
        let shown = self.shown().await?;
        Ok(shown
            .binary_search_by(|p| p.id.cmp(id))
            .ok()
            .map(|i| shown[i].clone()))
    }

    /// Whether `product_id` is in `trading_pairs`.
    pub async fn contains(&self, product_id: &ProductId) -> Result<bool, CatalogError> {
        let ids = [product_id.clone()];
        Ok(self.unknown(&ids).await?.is_empty())
    }

    /// The ids of `ids` that are not in `trading_pairs`.
    pub async fn unknown<'a>(
        &self,
        ids: &'a [ProductId],
    ) -> Result<Vec<&'a ProductId>, CatalogError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let listing = self.listing_for(|l| l.missing(ids).is_empty()).await?;
        let unknown = listing.missing(ids);
        if unknown.is_empty() {
            return Ok(unknown);
        }
        // A miss: the product may have been added since the last read.
        let _reading = self.reading.lock().await;
        if !self.cache().may_retry(Instant::now()) {
            let latest = self.cache().listing.clone();
            return Ok(latest.map_or(unknown, |l| l.missing(ids)));
        }
        Ok(self.read().await.map_or(unknown, |l| l.missing(ids)))
    }

    /// The listing; while another request reads, the one at hand when `answers` says it
    /// settles the caller's question.
    async fn listing_for(
        &self,
        answers: impl Fn(&Listing) -> bool,
    ) -> Result<Arc<Listing>, CatalogError> {
        let at_hand = {
            let cache = self.cache();
            if !cache.wants_read(Instant::now()) {
                return cache.listing.clone().ok_or(CatalogError);
            }
            cache.listing.clone()
        };
        let _reading = match self.reading.try_lock() {
            Ok(guard) => guard,
            Err(_) => match at_hand.filter(|l| answers(l)) {
                Some(listing) => return Ok(listing),
                None => self.reading.lock().await,
            },
        };
        // The read may have been done while this request waited.
        {
            let cache = self.cache();
            if !cache.wants_read(Instant::now()) {
                return cache.listing.clone().ok_or(CatalogError);
            }
        }
        self.read().await.ok_or(CatalogError)
    }

    /// Reads the listing (the caller holds `reading`); on failure keeps the one it had. The
    /// attempt counts from its end, so requests that waited on a failed read do not each read
    /// again.
    async fn read(&self) -> Option<Arc<Listing>> {
        let started = Instant::now();
        let answer = super::error::read("the product list read", READ_TIMEOUT, (self.read)()).await;
        let mut cache = self.cache();
        cache.attempted_at = Some(Instant::now());
        if let Ok(rows) = answer {
            cache.listing = Some(Arc::new(Listing::new(rows)));
            cache.loaded_at = Some(started);
        }
        cache.listing.clone()
    }
}

/// The products a feed connection of this instance carries now.
pub fn carried(feed: &FeedHealth) -> HashSet<ProductId> {
    feed.report()
        .connections
        .into_iter()
        .flat_map(|c| c.products)
        .collect()
}

/// A product with only its id (tests).
#[cfg(test)]
pub(crate) fn bare_product(id: &str) -> Product {
    let id = ProductId::parse(id).expect("a product id");
    Product {
        base: id.base().parse().expect("a code"),
        quote: id.quote().parse().expect("a code"),
        product_id: id,
        status: "online".to_owned(),
        product_type: "SPOT".to_owned(),
        trading_disabled: false,
        base_min_size: None,
        base_max_size: None,
        base_increment: None,
        price_increment: None,
        alias: None,
        alias_to: Vec::new(),
    }
}
