//! The products the pages show, with their price increments: `trading_pairs`, cached.
//!
//! In: the repository. Out: the ingestible products (online spot markets, not aliases), sorted
//! by id, as one shared list. The list is read again when older than [`MAX_AGE`], by one
//! request at a time: the others get the list at hand at once (a stale list beats a page
//! waiting on the database), and wait only when there is none yet. A read that fails or takes
//! longer than [`READ_TIMEOUT`] keeps the previous list; with none, the caller gets an error
//! (pages answer 503).
//!
//! Product ids reach HTML attributes, URL paths and JavaScript strings of the pages (the
//! stream's `@get('/markets/<id>/stream')`): they are [`ProductId`]s, which hold nothing but
//! upper-case letters, digits and one inner dash; a stored row that does not parse is left
//! out by the repository.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::view::ProductInfo;
use crate::model::ProductId;
use crate::store::Repository;

/// How long a list is used before it is read again.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// Longest a read may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Least time between two failed attempts.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Cached {
    list: Option<Arc<Vec<ProductInfo>>>,
    loaded_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

impl Cached {
    fn fresh(&self, now: Instant) -> bool {
        self.loaded_at
            .is_some_and(|at| now.duration_since(at) < MAX_AGE)
    }

    fn may_try(&self, now: Instant) -> bool {
        self.attempted_at
            .is_none_or(|at| now.duration_since(at) >= RETRY)
    }
}

/// The cached product list.
#[derive(Debug, Clone)]
pub struct Catalog {
    repository: Repository,
    cached: Arc<Mutex<Cached>>,
    /// Held by the one request reading the list.
    reading: Arc<tokio::sync::Mutex<()>>,
}

impl Catalog {
    pub fn new(repository: Repository) -> Self {
        Catalog {
            repository,
            cached: Arc::default(),
            reading: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, Cached> {
        // Fields are set whole: a panic elsewhere cannot leave them inconsistent.
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The products, read again when the list is older than [`MAX_AGE`].
    pub async fn products(&self) -> Result<Arc<Vec<ProductInfo>>, String> {
        let at_hand = {
            let state = self.state();
            let now = Instant::now();
            if state.fresh(now) || !state.may_try(now) {
                return state.list.clone().ok_or_else(unavailable);
            }
            state.list.clone()
        };
        let _reading = match (at_hand, self.reading.try_lock()) {
            (_, Ok(guard)) => guard,
            // Another request is reading: the list at hand will do.
            (Some(list), Err(_)) => return Ok(list),
            (None, Err(_)) => self.reading.lock().await,
        };
        // The read may have been done while this request waited.
        {
            let state = self.state();
            let now = Instant::now();
            if state.fresh(now) || !state.may_try(now) {
                return state.list.clone().ok_or_else(unavailable);
            }
        }
        let read = tokio::time::timeout(READ_TIMEOUT, self.repository.products()).await;
        let mut state = self.state();
        state.attempted_at = Some(Instant::now());
        match read {
            Ok(Ok(products)) => {
                let mut list: Vec<ProductInfo> = Vec::with_capacity(products.len());
                for p in products.into_iter().filter(|p| p.is_ingestible()) {
                    list.push(ProductInfo {
                        id: p.product_id,
                        base: p.base,
                        quote: p.quote,
                        price_increment: p.price_increment,
                    });
                }
                list.sort_by(|a, b| a.id.cmp(&b.id));
                state.list = Some(Arc::new(list));
                state.loaded_at = Some(Instant::now());
            }
            Ok(Err(error)) => {
                let error = crate::config::redact(&error.to_string());
                tracing::warn!(%error, "cannot read the product list for the pages");
            }
            Err(_elapsed) => {
                tracing::warn!(timeout = ?READ_TIMEOUT, "the product list read timed out");
            }
        }
        state.list.clone().ok_or_else(unavailable)
    }

    /// One product, if listed.
    pub async fn product(&self, id: &ProductId) -> Result<Option<ProductInfo>, String> {
        let list = self.products().await?;
        Ok(list
            .binary_search_by(|p| p.id.cmp(id))
            .ok()
            .map(|i| list[i].clone()))
    }
}

fn unavailable() -> String {
    "the product list is not available; retry shortly".to_owned()
}
