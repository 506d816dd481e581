//! The catalog's cache policy on a fake database: hits from memory, misses and failures read
//! at most once a second, one read for concurrent requests, the old listing kept while the
//! database is away.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// What the fake database answers.
#[derive(Debug, Clone)]
enum Db {
    Lists(Vec<&'static str>),
    Fails,
    Hangs,
}

/// A catalog over a fake database; the counter counts reads.
fn catalog() -> (Catalog, Arc<std::sync::Mutex<Db>>, Arc<AtomicUsize>) {
    let db = Arc::new(std::sync::Mutex::new(Db::Lists(vec!["BTC-USD"])));
    let reads = Arc::new(AtomicUsize::new(0));
    let (db2, reads2) = (db.clone(), reads.clone());
    let catalog = Catalog::with_reader(Arc::new(move || {
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
    (catalog, db, reads)
}

/// Whether `catalog` lists `id`.
async fn knows(catalog: &Catalog, id: &'static str) -> Result<bool, CatalogError> {
    catalog.contains(&ProductId::from_static(id)).await
}

fn ids(list: &[&str]) -> Vec<ProductId> {
    list.iter()
        .map(|s| ProductId::parse(s).expect("a product id"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn hits_are_served_from_memory_until_the_list_is_30_s_old() {
    let (catalog, _db, reads) = catalog();
    for _ in 0..100 {
        assert!(knows(&catalog, "BTC-USD").await.expect("known"));
    }
    assert_eq!(reads.load(Ordering::SeqCst), 1);
    tokio::time::advance(MAX_AGE - Duration::from_millis(1)).await;
    assert!(knows(&catalog, "BTC-USD").await.expect("known"));
    assert_eq!(reads.load(Ordering::SeqCst), 1, "still fresh");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(knows(&catalog, "BTC-USD").await.expect("known"));
    assert_eq!(reads.load(Ordering::SeqCst), 2, "30 s old: read again");
}

#[tokio::test(start_paused = true)]
async fn misses_read_again_at_most_once_a_second() {
    let (catalog, db, reads) = catalog();
    assert!(knows(&catalog, "BTC-USD").await.expect("known"));
    // A flood of unknown products right after a read: no read at all.
    for _ in 0..100 {
        assert!(!knows(&catalog, "NOPE-USD").await.expect("answers"));
    }
    assert_eq!(reads.load(Ordering::SeqCst), 1);
    // A product added meanwhile is found by the first miss a second later, once.
    *db.lock().expect("lock") = Db::Lists(vec!["BTC-USD", "ETH-USD"]);
    tokio::time::advance(MISS_RETRY).await;
    assert!(knows(&catalog, "ETH-USD").await.expect("answers"));
    assert_eq!(reads.load(Ordering::SeqCst), 2);
    for _ in 0..100 {
        assert_eq!(
            catalog
                .unknown(&ids(&["ETH-USD", "NOPE-USD", "BTC-USD"]))
                .await
                .expect("answers"),
            vec!["NOPE-USD"]
        );
    }
    assert_eq!(reads.load(Ordering::SeqCst), 2);
    tokio::time::advance(MISS_RETRY).await;
    assert!(!knows(&catalog, "NOPE-USD").await.expect("answers"));
    assert_eq!(
        reads.load(Ordering::SeqCst),
        3,
        "one read per second of misses"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_list_a_failing_or_hanging_database_is_an_error_and_is_not_hammered() {
    let (catalog, db, reads) = catalog();
    *db.lock().expect("lock") = Db::Fails;
    let error = knows(&catalog, "BTC-USD").await.expect_err("no list");
    assert!(error.to_string().contains("not available"), "{error}");
    for _ in 0..10 {
        knows(&catalog, "BTC-USD").await.expect_err("no list");
    }
    assert_eq!(reads.load(Ordering::SeqCst), 1, "one read per second");
    // A database that does not answer at all: the read times out.
    *db.lock().expect("lock") = Db::Hangs;
    tokio::time::advance(MISS_RETRY).await;
    let started = Instant::now();
    knows(&catalog, "BTC-USD").await.expect_err("no list");
    assert_eq!(started.elapsed(), READ_TIMEOUT);
    // Back: the next read (a second later) answers.
    *db.lock().expect("lock") = Db::Lists(vec!["BTC-USD"]);
    tokio::time::advance(MISS_RETRY).await;
    assert!(knows(&catalog, "BTC-USD").await.expect("known"));
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_wait_for_one_hung_read_not_one_each() {
    let (catalog, db, reads) = catalog();
    *db.lock().expect("lock") = Db::Hangs;
    let started = Instant::now();
    let waiting: Vec<_> = (0..10)
        .map(|_| {
            let catalog = catalog.clone();
            tokio::spawn(async move {
                catalog
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
        catalog.unknown(&[]).await.expect("nothing to check"),
        Vec::<&str>::new()
    );
    assert_eq!(reads.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn rows_come_from_the_same_cache_as_the_ids() {
    let (catalog, db, reads) = catalog();
    *db.lock().expect("lock") = Db::Lists(vec!["ETH-USD", "BTC-USD"]);
    for _ in 0..100 {
        let listing = catalog.listing().await.expect("rows");
        let ids: Vec<&str> = listing.rows.iter().map(|p| p.product_id.as_str()).collect();
        assert_eq!(ids, ["BTC-USD", "ETH-USD"], "sorted by id");
        assert!(knows(&catalog, "ETH-USD").await.expect("known"));
    }
    assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for rows and ids");
    // Stale and the database gone: the old rows stay in use, read again once a second.
    *db.lock().expect("lock") = Db::Fails;
    tokio::time::advance(MAX_AGE).await;
    for _ in 0..10 {
        assert_eq!(catalog.listing().await.expect("the old rows").rows.len(), 2);
    }
    assert_eq!(reads.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_list_read_before_stays_in_use_while_the_database_fails() {
    let (catalog, db, reads) = catalog();
    assert!(knows(&catalog, "BTC-USD").await.expect("known"));
    *db.lock().expect("lock") = Db::Fails;
    tokio::time::advance(MAX_AGE * 2).await;
    assert!(knows(&catalog, "BTC-USD").await.expect("the old list"));
    assert!(!knows(&catalog, "NOPE-USD").await.expect("the old list"));
    assert_eq!(
        reads.load(Ordering::SeqCst),
        2,
        "the stale list was read again, once"
    );
}

#[tokio::test(start_paused = true)]
async fn while_one_request_reads_the_listing_at_hand_answers_pages_and_hits_at_once() {
    let (catalog, db, reads) = catalog();
    assert_eq!(catalog.shown().await.expect("read").len(), 1);
    *db.lock().expect("lock") = Db::Hangs;
    tokio::time::advance(MAX_AGE).await;
    let reader = {
        let catalog = catalog.clone();
        tokio::spawn(async move { catalog.listing().await })
    };
    // The reader takes the read and hangs on the database.
    tokio::task::yield_now().await;
    let started = Instant::now();
    assert_eq!(catalog.shown().await.expect("at hand").len(), 1);
    assert!(knows(&catalog, "BTC-USD").await.expect("a hit at hand"));
    assert_eq!(started.elapsed(), Duration::ZERO, "no wait on the read");
    // A miss waits for the read in flight, which may know the product.
    assert!(!knows(&catalog, "NOPE-USD").await.expect("answers"));
    assert_eq!(started.elapsed(), READ_TIMEOUT);
    reader.await.expect("join").expect("the old listing");
    assert_eq!(reads.load(Ordering::SeqCst), 2, "one read for all of them");
}

#[tokio::test(start_paused = true)]
async fn the_pages_show_the_ingestible_products_with_their_increments() {
    let mut delisted = bare_product("OLD-USD");
    delisted.status = "delisted".to_owned();
    let mut btc = bare_product("BTC-USD");
    btc.price_increment = Some("0.01".parse().expect("a decimal"));
    let listing = Listing::new(vec![delisted, bare_product("ETH-USD"), btc]);
    let shown: Vec<&str> = listing.shown.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(shown, ["BTC-USD", "ETH-USD"]);
    assert_eq!(listing.shown[0].price_increment, "0.01".parse().ok());
    assert_eq!(listing.rows.len(), 3, "the API lists every row");
}
