//! The products the pages show, with their price increments: `trading_pairs`, cached.
//!
//! In: the repository. Out: the ingestible products (online spot markets, not aliases), sorted
//! by id, as one shared list. The list is read at most every [`MAX_AGE`]; a read that fails or
//! takes longer than [`READ_TIMEOUT`] keeps the previous list, and with none at hand the caller
//! gets an error (pages answer 503). One read at a time: concurrent pages wait for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::view::ProductInfo;
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

/// The cached product list.
#[derive(Debug, Clone)]
pub struct Catalog {
    repository: Repository,
    cached: Arc<Mutex<Cached>>,
}

impl Catalog {
    pub fn new(repository: Repository) -> Self {
        Catalog {
            repository,
            cached: Arc::default(),
        }
    }

    /// The products, read again when the list is older than [`MAX_AGE`].
    pub async fn products(&self) -> Result<Arc<Vec<ProductInfo>>, String> {
        let mut cached = self.cached.lock().await;
        let now = Instant::now();
        let fresh = cached
            .loaded_at
            .is_some_and(|at| now.duration_since(at) < MAX_AGE);
        let may_try = cached
            .attempted_at
            .is_none_or(|at| now.duration_since(at) >= RETRY);
        if !fresh && may_try {
            let read = tokio::time::timeout(READ_TIMEOUT, self.repository.products()).await;
            cached.attempted_at = Some(Instant::now());
            match read {
                Ok(Ok(products)) => {
                    let mut list: Vec<ProductInfo> = products
                        .into_iter()
                        .filter(|p| p.is_ingestible())
                        .map(|p| ProductInfo {
                            id: p.product_id,
                            base: p.base,
                            quote: p.quote,
                            price_increment: p.price_increment,
                        })
                        .collect();
                    list.sort_by(|a, b| a.id.cmp(&b.id));
                    cached.list = Some(Arc::new(list));
                    cached.loaded_at = Some(now);
                }
                Ok(Err(error)) => {
                    let error = crate::config::redact(&error.to_string());
                    tracing::warn!(%error, "cannot read the product list for the pages");
                }
                Err(_elapsed) => {
                    tracing::warn!(timeout = ?READ_TIMEOUT, "the product list read timed out");
                }
            }
        }
        cached
            .list
            .clone()
            .ok_or_else(|| "the product list is not available; retry shortly".to_owned())
    }

    /// One product, if listed.
    pub async fn product(&self, id: &str) -> Result<Option<ProductInfo>, String> {
        let list = self.products().await?;
        Ok(list
            .binary_search_by(|p| p.id.as_str().cmp(id))
            .ok()
            .map(|i| list[i].clone()))
    }
}
