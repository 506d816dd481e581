//! The known products: those in `trading_pairs`, cached in memory.
//!
//! In: product ids to check. Out: whether each is known, and the products' rows for
//! `/api/v1/products` ([`ProductDirectory::products`]), from the same cached read. The set is read again when it is
//! older than [`MAX_AGE`], and on a miss at most once per [`MISS_RETRY`], so a product inserted
//! into `trading_pairs` is known about a second later while a flood of requests for unknown
//! products costs the database one read per second. Every read has a [`READ_TIMEOUT`]. When the
//! database cannot answer, the last set read stays in use; with none read yet, the answer is a
//! [`DirectoryError`] (the handlers answer 503).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::model::{Product, ProductId};
use crate::store::Repository;

/// A set older than this is read again before it answers.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// A miss reads the set again, at most this often.
pub const MISS_RETRY: Duration = Duration::from_secs(1);
/// Longest wait for the database.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The database could not say which products exist, and no earlier answer is at hand.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the product list is not available: {0}")]
pub struct DirectoryError(String);

#[derive(Debug, Default)]
struct Cache {
    known: Option<Arc<HashSet<ProductId>>>,
    /// The rows `known` was made from, sorted by id.
    rows: Option<Arc<Vec<Product>>>,
    /// When `known` was read.
    loaded_at: Option<Instant>,
    /// The last read, successful or not.
    attempted_at: Option<Instant>,
}

impl Cache {
    fn fresh(&self, now: Instant) -> bool {
        self.known.is_some() && self.loaded_at.is_some_and(|t| now - t < MAX_AGE)
    }

    fn may_retry(&self, now: Instant) -> bool {
        self.attempted_at.is_none_or(|t| now - t >= MISS_RETRY)
    }
}

/// Reads every product's row; the error says what went wrong, without secrets.
type Reader = Arc<dyn Fn() -> BoxFuture<'static, Result<Vec<Product>, String>> + Send + Sync>;

/// The products in `trading_pairs`; cheap to clone (one shared cache).
#[derive(Clone)]
pub struct ProductDirectory {
    read: Reader,
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for ProductDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProductDirectory").finish_non_exhaustive()
    }
}

impl ProductDirectory {
    pub fn new(repository: Repository) -> Self {
        Self::with_reader(Arc::new(move || {
            let repository = repository.clone();
            Box::pin(async move {
                repository
                    .products()
                    .await
                    .map_err(|e| crate::config::redact(&e.to_string()))
            })
        }))
    }

    /// A directory of exactly `ids` (tests).
    #[cfg(test)]
    pub(crate) fn fixed(ids: Vec<ProductId>) -> Self {
        Self::with_reader(Arc::new(move || {
            let products = ids.iter().map(|id| bare_product(id)).collect::<Vec<_>>();
            Box::pin(async move { Ok(products) })
        }))
    }

    /// Every product's row, sorted by id: the list at hand while it is fresh (and not empty),
    /// else read again (at most once per [`MISS_RETRY`]; concurrent callers wait for one read).
    pub async fn products(&self) -> Result<Arc<Vec<Product>>, DirectoryError> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        // An empty table (a service that has not listed its products yet) is read again as a
        // miss is: at most once a second.
        let empty = cache.rows.as_ref().is_some_and(|rows| rows.is_empty());
        if (!cache.fresh(now) || empty) && cache.may_retry(now) {
            self.read(&mut cache, now).await;
        }
        cache.rows.clone().ok_or_else(|| {
            DirectoryError("the database did not answer and no earlier list is at hand".into())
        })
    }

    fn with_reader(read: Reader) -> Self {
        ProductDirectory {
            read,
            cache: Arc::new(Mutex::new(Cache::default())),
        }
    }

    /// Whether `product_id` is in `trading_pairs`.
    pub async fn contains(&self, product_id: &ProductId) -> Result<bool, DirectoryError> {
        let ids = [product_id.clone()];
        Ok(self.unknown(&ids).await?.is_empty())
    }

    /// The ids of `ids` that are not in `trading_pairs` (one read of the database at most).
    pub async fn unknown<'a>(
        &self,
        ids: &'a [ProductId],
    ) -> Result<Vec<&'a ProductId>, DirectoryError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One reader at a time: concurrent requests wait for the read in flight instead of
        // each starting their own.
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        let mut read = false;
        if !cache.fresh(now) && cache.may_retry(now) {
            self.read(&mut cache, now).await;
            read = true;
        }
        let Some(known) = cache.known.clone() else {
            return Err(DirectoryError(
                "the database did not answer and no earlier list is at hand".into(),
            ));
        };
        let missing = |known: &HashSet<ProductId>| -> Vec<&'a ProductId> {
            ids.iter().filter(|id| !known.contains(*id)).collect()
        };
        let unknown = missing(&known);
        if unknown.is_empty() || read || !cache.may_retry(now) {
            return Ok(unknown);
        }
        // A miss: the product may have been added since the last read.
        self.read(&mut cache, Instant::now()).await;
        Ok(cache.known.as_deref().map(missing).unwrap_or(unknown))
    }

    /// Reads the set; on failure keeps the one it had. The attempt counts from its end, so
    /// requests that waited on a failed read do not each read again.
    async fn read(&self, cache: &mut Cache, now: Instant) {
        let result = tokio::time::timeout(READ_TIMEOUT, (self.read)()).await;
        cache.attempted_at = Some(Instant::now());
        match result {
            Ok(Ok(mut rows)) => {
                rows.sort_by(|a, b| a.product_id.cmp(&b.product_id));
                cache.known = Some(Arc::new(
                    rows.iter().map(|p| p.product_id.clone()).collect(),
                ));
                cache.rows = Some(Arc::new(rows));
                cache.loaded_at = Some(now);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the product list");
            }
            Err(_elapsed) => {
                tracing::warn!(timeout = ?READ_TIMEOUT, "the product list read timed out");
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// What the fake database answers.
    #[derive(Debug, Clone)]
    enum Db {
        Lists(Vec<&'static str>),
        Fails,
        Hangs,
    }

    /// A directory over a fake database; the counter counts reads.
    fn directory() -> (
        ProductDirectory,
        Arc<std::sync::Mutex<Db>>,
        Arc<AtomicUsize>,
    ) {
        let db = Arc::new(std::sync::Mutex::new(Db::Lists(vec!["BTC-USD"])));
        let reads = Arc::new(AtomicUsize::new(0));
        let (db2, reads2) = (db.clone(), reads.clone());
        let directory = ProductDirectory::with_reader(Arc::new(move || {
            reads2.fetch_add(1, Ordering::SeqCst);
            let answer = db2.lock().expect("lock").clone();
            Box::pin(async move {
                match answer {
                    Db::Lists(ids) => Ok(ids.into_iter().map(bare_product).collect()),
                    Db::Fails => Err("connection refused".to_owned()),
                    Db::Hangs => std::future::pending().await,
                }
            })
        }));
        (directory, db, reads)
    }

    fn ids(list: &[&str]) -> Vec<ProductId> {
        list.iter()
            .map(|s| ProductId::parse(s).expect("a product id"))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn hits_are_served_from_memory_until_the_list_is_30_s_old() {
        let (directory, _db, reads) = directory();
        for _ in 0..100 {
            assert!(
                directory
                    .contains(&crate::model::ProductId::from_static("BTC-USD"))
                    .await
                    .expect("known")
            );
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        tokio::time::advance(MAX_AGE - Duration::from_millis(1)).await;
        assert!(
            directory
                .contains(&crate::model::ProductId::from_static("BTC-USD"))
                .await
                .expect("known")
        );
        assert_eq!(reads.load(Ordering::SeqCst), 1, "still fresh");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            directory
                .contains(&crate::model::ProductId::from_static("BTC-USD"))
                .await
                .expect("known")
        );
        assert_eq!(reads.load(Ordering::SeqCst), 2, "30 s old: read again");
    }

    #[tokio::test(start_paused = true)]
    async fn misses_read_again_at_most_once_a_second() {
        let (directory, db, reads) = directory();
        assert!(
            directory
                .contains(&crate::model::ProductId::from_static("BTC-USD"))
                .await
                .expect("known")
        );
        // A flood of unknown products right after a read: no read at all.
        for _ in 0..100 {
            assert!(
                !directory
                    .contains(&crate::model::ProductId::from_static("NOPE-USD"))
                    .await
                    .expect("answers")
            );
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // A product added meanwhile is found by the first miss a second later, once.
        *db.lock().expect("lock") = Db::Lists(vec!["BTC-USD", "ETH-USD"]);
        tokio::time::advance(MISS_RETRY).await;
        assert!(
            directory
                .contains(&crate::model::ProductId::from_static("ETH-USD"))
                .await
                .expect("answers")
        );
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        for _ in 0..100 {
            assert_eq!(
                directory
                    .unknown(&ids(&["ETH-USD", "NOPE-USD", "BTC-USD"]))
                    .await
                    .expect("answers"),
                vec!["NOPE-USD"]
            );
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        tokio::time::advance(MISS_RETRY).await;
        assert!(
            !directory
                .contains(&crate::model::ProductId::from_static("NOPE-USD"))
                .await
                .expect("answers")
        );
        assert_eq!(
            reads.load(Ordering::SeqCst),
            3,
            "one read per second of misses"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_list_a_failing_or_hanging_database_is_an_error_and_is_not_hammered() {
        let (directory, db, reads) = directory();
        *db.lock().expect("lock") = Db::Fails;
        let error = directory
            .contains(&crate::model::ProductId::from_static("BTC-USD"))
            .await
            .expect_err("no list");
        assert!(error.to_string().contains("not available"), "{error}");
        for _ in 0..10 {
            directory
                .contains(&crate::model::ProductId::from_static("BTC-USD"))
                .await
                .expect_err("no list");
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read per second");
        // A database that does not answer at all: the read times out.
        *db.lock().expect("lock") = Db::Hangs;
        tokio::time::advance(MISS_RETRY).await;
        let started = Instant::now();
        directory
            .contains(&crate::model::ProductId::from_static("BTC-USD"))
            .await
            .expect_err("no list");
        assert_eq!(started.elapsed(), READ_TIMEOUT);
        // Back: the next read (a second later) answers.
        *db.lock().expect("lock") = Db::Lists(vec!["BTC-USD"]);
        tokio::time::advance(MISS_RETRY).await;
        assert!(
            directory
                .contains(&crate::model::ProductId::from_static("BTC-USD"))
                .await
                .expect("known")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_wait_for_one_hung_read_not_one_each() {
        let (directory, db, reads) = directory();
        *db.lock().expect("lock") = Db::Hangs;
        let started = Instant::now();
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let directory = directory.clone();
                tokio::spawn(async move {
                    directory
                        .contains(&crate::model::ProductId::from_static("BTC-USD"))
                        .await
                })
            })
            .collect();
        for request in waiting {
            request.await.expect("join").expect_err("no list");
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for all of them");
        assert_eq!(started.elapsed(), READ_TIMEOUT, "not ten timeouts in a row");
        // Every product stream (no product named) never waits on the database.
        *db.lock().expect("lock") = Db::Hangs;
        assert_eq!(
            directory.unknown(&[]).await.expect("nothing to check"),
            Vec::<&str>::new()
        );
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn rows_come_from_the_same_cache_as_the_ids() {
        let (directory, db, reads) = directory();
        *db.lock().expect("lock") = Db::Lists(vec!["ETH-USD", "BTC-USD"]);
        for _ in 0..100 {
            let rows = directory.products().await.expect("rows");
            let ids: Vec<&str> = rows.iter().map(|p| p.product_id.as_str()).collect();
            assert_eq!(ids, ["BTC-USD", "ETH-USD"], "sorted by id");
            assert!(
                directory
                    .contains(&ProductId::from_static("ETH-USD"))
                    .await
                    .expect("known")
            );
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for rows and ids");
        // Stale and the database gone: the old rows stay in use, read again once a second.
        *db.lock().expect("lock") = Db::Fails;
        tokio::time::advance(MAX_AGE).await;
        for _ in 0..10 {
            assert_eq!(directory.products().await.expect("the old rows").len(), 2);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_read_before_stays_in_use_while_the_database_fails() {
        let (directory, db, reads) = directory();
        assert!(
            directory
                .contains(&crate::model::ProductId::from_static("BTC-USD"))
                .await
                .expect("known")
        );
        *db.lock().expect("lock") = Db::Fails;
        tokio::time::advance(MAX_AGE * 2).await;
        assert!(
            directory
                .contains(&crate::model::ProductId::from_static("BTC-USD"))
                .await
                .expect("the old list")
        );
        assert!(
            !directory
                .contains(&crate::model::ProductId::from_static("NOPE-USD"))
                .await
                .expect("the old list")
        );
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "the stale list was read again, once"
        );
    }
}
