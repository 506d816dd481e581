//! Product writes and reads on `trading_pairs`.
//!
//! In: products listed by the feed. Out: rows written (a refused product left out and counted),
//! and the stored products or their ids (a row that no longer parses costs only itself).

use std::collections::HashMap;

use rust_decimal::Decimal;
use sqlx::Row;

use super::Repository;
use super::rows::parsed;
use crate::model::{Currency, EXCHANGE, Product, ProductId};

/// What [`Repository::upsert_products`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductsWritten {
    /// Rows inserted or updated.
    pub changed: u64,
    /// Listings merged into another of the same product id (the last one is stored).
    pub merged: usize,
    /// Ids of the products the server refused for their content (left out).
    pub refused: Vec<ProductId>,
}

impl Repository {
    /// Inserts or updates products (trading pairs), keeping them in step with the feed. A
    /// product listed twice is written once, as listed last; a product the server refuses for
    /// its content (an id too long for the index, a NUL byte) is left out, logged escaped and
    /// counted (`spot_canvas_store_products_refused_total`), and the rest are written.
    pub async fn upsert_products(
        &self,
        products: &[Product],
    ) -> Result<ProductsWritten, sqlx::Error> {
        // The last listing of an id wins, in the order of the ids' first listing.
        let mut position: HashMap<&str, usize> = HashMap::new();
        let mut distinct: Vec<&Product> = Vec::with_capacity(products.len());
        for product in products {
            match position.get(product.product_id.as_str()) {
                Some(&at) => distinct[at] = product,
                None => {
                    position.insert(product.product_id.as_str(), distinct.len());
                    distinct.push(product);
                }
            }
        }
        let mut written = ProductsWritten {
            merged: products.len() - distinct.len(),
            ..ProductsWritten::default()
        };
        if written.merged > 0 {
            tracing::warn!(
                merged = written.merged,
                "the products list names some products more than once; the last listing of each is stored"
            );
        }
        let changed = std::sync::atomic::AtomicU64::new(0);
        let refused = crate::store::refusal::write_splitting(distinct.len(), |range| {
            let (rows, changed) = (&distinct[range], &changed);
            async move {
                let n = self.upsert_product_rows(rows).await?;
                changed.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;
        written.changed = changed.into_inner();
        if !refused.is_empty() {
            metrics::counter!("spot_canvas_store_products_refused_total")
                .increment(refused.len() as u64);
            for (index, error) in refused.iter().take(5) {
                let why = crate::store::refusal::refusal(error);
                tracing::error!(
                    product = %crate::store::refusal::escaped(&distinct[*index].product_id, 64),
                    code = why.code.as_deref().unwrap_or(""),
                    error = %why.message,
                    "PostgreSQL refused a product for its content; it is left out, the rest written"
                );
            }
            if refused.len() > 5 {
                tracing::error!(
                    refused = refused.len(),
                    "products refused by PostgreSQL in this update, in all"
                );
            }
        }
        written.refused = refused
            .iter()
            .map(|(index, _)| distinct[*index].product_id.clone())
            .collect();
        Ok(written)
    }

    /// One upsert statement of distinct products; the rows it changed.
    async fn upsert_product_rows(&self, products: &[&Product]) -> Result<u64, sqlx::Error> {
        if products.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = products.iter().map(|p| p.product_id.as_str()).collect();
        let bases: Vec<&str> = products.iter().map(|p| p.base.as_str()).collect();
        let quotes: Vec<&str> = products.iter().map(|p| p.quote.as_str()).collect();
        let statuses: Vec<&str> = products.iter().map(|p| p.status.as_str()).collect();
        let types: Vec<&str> = products.iter().map(|p| p.product_type.as_str()).collect();
        let disabled: Vec<bool> = products.iter().map(|p| p.trading_disabled).collect();
        let min: Vec<Option<Decimal>> = products.iter().map(|p| p.base_min_size).collect();
        let max: Vec<Option<Decimal>> = products.iter().map(|p| p.base_max_size).collect();
        let inc: Vec<Option<Decimal>> = products.iter().map(|p| p.base_increment).collect();
        let price_inc: Vec<Option<Decimal>> = products.iter().map(|p| p.price_increment).collect();
        let result = sqlx::query(
            r#"
INSERT INTO trading_pairs (exchange, product_id, base, quote, status, product_type,
    trading_disabled, base_min_size, base_max_size, base_increment, price_increment)
SELECT $1, u.* FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::bool[], $8::numeric[], $9::numeric[], $10::numeric[], $11::numeric[]) AS u
ON CONFLICT (exchange, product_id) DO UPDATE SET
    base = EXCLUDED.base, quote = EXCLUDED.quote, status = EXCLUDED.status,
    product_type = EXCLUDED.product_type, trading_disabled = EXCLUDED.trading_disabled,
    base_min_size = EXCLUDED.base_min_size, base_max_size = EXCLUDED.base_max_size,
    base_increment = EXCLUDED.base_increment, price_increment = EXCLUDED.price_increment,
    updated_at = now()
"#,
        )
        .bind(EXCHANGE)
        .bind(&ids)
        .bind(&bases)
        .bind(&quotes)
        .bind(&statuses)
        .bind(&types)
        .bind(&disabled)
        .bind(&min)
        .bind(&max)
        .bind(&inc)
        .bind(&price_inc)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// The ids of all stored products, by id. A stored id that is not a product id (a row
    /// from before ids were checked) is left out and logged.
    pub async fn product_ids(&self) -> Result<Vec<ProductId>, sqlx::Error> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT product_id FROM trading_pairs WHERE exchange = $1 ORDER BY product_id",
        )
        .bind(EXCHANGE)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids
            .iter()
            .filter_map(|id| match ProductId::parse(id) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!(error = %e, "leaving out a stored product");
                    None
                }
            })
            .collect())
    }

    /// All stored products, by id.
    pub async fn products(&self) -> Result<Vec<Product>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT product_id, base, quote, status, product_type, trading_disabled, \
             base_min_size, base_max_size, base_increment, price_increment \
             FROM trading_pairs WHERE exchange = $1 ORDER BY product_id",
        )
        .bind(EXCHANGE)
        .fetch_all(&self.pool)
        .await?;
        let mut products = Vec::with_capacity(rows.len());
        for r in &rows {
            // A stored row whose id or codes do not parse (written before they were checked)
            // costs only itself.
            let (product_id, base, quote) = match (
                parsed::<ProductId>(r, "product_id"),
                parsed::<Currency>(r, "base"),
                parsed::<Currency>(r, "quote"),
            ) {
                (Ok(id), Ok(base), Ok(quote)) => (id, base, quote),
                (id, base, quote) => {
                    let error = [id.err(), base.err(), quote.err()]
                        .into_iter()
                        .flatten()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::warn!(%error, "leaving out a stored product");
                    continue;
                }
            };
            products.push(Product {
                product_id,
                base,
                quote,
                status: r.try_get("status")?,
                product_type: r.try_get("product_type")?,
                trading_disabled: r.try_get("trading_disabled")?,
                base_min_size: r.try_get("base_min_size")?,
                base_max_size: r.try_get("base_max_size")?,
                base_increment: r.try_get("base_increment")?,
                price_increment: r.try_get("price_increment")?,
                alias: None,
                alias_to: Vec::new(),
            });
        }
        Ok(products)
    }
}
