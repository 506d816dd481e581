//! `trading_pairs` kept in step with the feed's product list.
//!
//! In: the feed's current product list (a watch channel, changed at each discovery).
//! Out: the list upserted into `trading_pairs` at each change (duplicates merged, rows the
//! database refuses left out and counted); a failed write is tried again at the next change.
//! Ends when the feed's list closes.

use super::Repository;

/// Keeps `trading_pairs` in step with the feed's product list; ends when the feed does.
pub async fn keep_products(
    mut catalog: tokio::sync::watch::Receiver<Vec<crate::model::Product>>,
    repository: Repository,
) -> anyhow::Result<()> {
    // A restart re-reads the current list.
    catalog.mark_changed();
    while catalog.changed().await.is_ok() {
        let products = catalog.borrow_and_update().clone();
        if products.is_empty() {
            continue;
        }
        match repository.upsert_products(&products).await {
            Ok(written) => tracing::info!(
                products = written.changed,
                merged = written.merged,
                refused = written.refused.len(),
                "trading pairs updated"
            ),
            // The next refresh (every 10 minutes) tries again.
            Err(e) => tracing::warn!(
                error = %crate::config::redact(&e.to_string()),
                "cannot update trading pairs"
            ),
        }
    }
    anyhow::bail!("the feed's product list closed")
}
