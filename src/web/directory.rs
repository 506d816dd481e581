//! The known products: those in `trading_pairs`, cached in memory.
//!
//! In: product ids to check. Out: whether each is known. The set is read again when it is
//! older than [`MAX_AGE`], and on a miss at most once per [`MISS_RETRY`], so a product inserted
//! into `trading_pairs` is known about a second later while a flood of requests for unknown
//! products costs the database one read per second. Every read has a [`READ_TIMEOUT`]. When the
//! database cannot answer, the last set read stays in use; with none read yet, the answer is a
//! [`DirectoryError`] (the handlers answer 503).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

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
    known: Option<Arc<HashSet<String>>>,
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

/// The products in `trading_pairs`; cheap to clone (one shared cache).
#[derive(Clone, Debug)]
pub struct ProductDirectory {
    repository: Repository,
    cache: Arc<Mutex<Cache>>,
}

impl ProductDirectory {
    pub fn new(repository: Repository) -> Self {
        ProductDirectory {
            repository,
            cache: Arc::new(Mutex::new(Cache::default())),
        }
    }

    /// Whether `product_id` is in `trading_pairs`.
    pub async fn contains(&self, product_id: &str) -> Result<bool, DirectoryError> {
        let ids = [product_id.to_owned()];
        Ok(self.unknown(&ids).await?.is_empty())
    }

    /// The ids of `ids` that are not in `trading_pairs` (one read of the database at most).
    pub async fn unknown<'a>(&self, ids: &'a [String]) -> Result<Vec<&'a str>, DirectoryError> {
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
        let missing = |known: &HashSet<String>| -> Vec<&'a str> {
            ids.iter()
                .map(String::as_str)
                .filter(|id| !known.contains(*id))
                .collect()
        };
        let unknown = missing(&known);
        if unknown.is_empty() || read || !cache.may_retry(now) {
            return Ok(unknown);
        }
        // A miss: the product may have been added since the last read.
        self.read(&mut cache, now).await;
        Ok(cache.known.as_deref().map(missing).unwrap_or(unknown))
    }

    /// Reads the set; on failure keeps the one it had.
    async fn read(&self, cache: &mut Cache, now: Instant) {
        cache.attempted_at = Some(now);
        let result = tokio::time::timeout(READ_TIMEOUT, self.repository.product_ids()).await;
        match result {
            Ok(Ok(ids)) => {
                cache.known = Some(Arc::new(ids.into_iter().collect()));
                cache.loaded_at = Some(now);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::config::redact(&e.to_string()), "cannot read the product list");
            }
            Err(_elapsed) => {
                tracing::warn!(timeout = ?READ_TIMEOUT, "the product list read timed out");
            }
        }
    }
}
