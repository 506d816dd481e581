//! The connection manager: which products this instance ingests, over how many connections.
//!
//! In: `PRODUCTS` or the REST products list (fetched again periodically), `SHARD_INDEX` /
//! `SHARD_COUNT`, `PRODUCTS_PER_CONNECTION`. Out: one [`Connection`] task per slice of
//! products, connected no faster than one per second, all sharing one message pacer (at most
//! 8 client messages a second, a fresh connection's first subscribes first); new listings
//! subscribed, delisted or disabled products unsubscribed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{Command, Connection, Shared};
use super::discovery::{fetch_reported, ingestible_ids};
use crate::coinbase::auth::JwtSigner;
use crate::coinbase::pacer::Pacer;
use crate::feed::FeedSettings;
use crate::feed::health::{AuthState, FeedHealth};
use crate::feed::shard::products_for_instance;
use crate::model::Product;
use crate::model::{FeedEvent, ProductId};

/// Commands a connection may have queued.
const COMMAND_CAPACITY: usize = 64;
/// First retry delay when the products list cannot be fetched at start.
const DISCOVERY_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Handle {
    id: usize,
    products: BTreeSet<ProductId>,
    /// Commands to the connection; dropping it stops the connection.
    commands: mpsc::Sender<Command>,
}

/// The feed: owns the connections.
#[derive(Debug)]
pub struct Feed {
    shared: Arc<Shared>,
    http: reqwest::Client,
    handles: Vec<Handle>,
    next_id: usize,
    /// The exchange's product list (spot, aliases left out, any status) as last fetched, for
    /// storage to keep `trading_pairs` in step.
    catalog: watch::Sender<Vec<Product>>,
    /// Products the exchange refused, from the connections.
    refused: mpsc::UnboundedReceiver<Vec<ProductId>>,
    /// Refused products and when: they are not subscribed again before a refresh interval.
    cooling: BTreeMap<ProductId, Instant>,
}

impl Feed {
    /// Builds the feed; events go to `events`. A key that cannot be loaded is reported in
    /// health and the feed runs unauthenticated.
    pub fn new(settings: FeedSettings, events: mpsc::Sender<FeedEvent>) -> Feed {
        let (signer, auth) = match &settings.credentials {
            None => (None, AuthState::Unauthenticated),
            Some(credentials) => match JwtSigner::new(credentials) {
                Ok(signer) => {
                    let algorithm = format!("{:?}", signer.algorithm());
                    (Some(signer), AuthState::Authenticated { algorithm })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load the Coinbase key, continuing unauthenticated");
                    (
                        None,
                        AuthState::Failed {
                            reason: format!("{e}; continuing unauthenticated"),
                        },
                    )
                }
            },
        };
        let (refused, refused_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            connect_pacer: Pacer::new(settings.connect_interval),
            message_pacer: Pacer::new(settings.message_interval),
            signer,
            auth_failed: AtomicBool::new(false),
            health: Arc::new(FeedHealth::new(auth)),
            events,
            refused,
            settings,
        });
        Feed {
            shared,
            http: reqwest::Client::new(),
            handles: Vec::new(),
            next_id: 0,
            catalog: watch::Sender::new(Vec::new()),
            refused: refused_rx,
            cooling: BTreeMap::new(),
        }
    }

    /// The product list as last fetched from REST; updated at start and on every refresh.
    pub fn catalog(&self) -> watch::Receiver<Vec<Product>> {
        self.catalog.subscribe()
    }

    fn publish_catalog(&self, products: &[Product]) {
        let aliases: BTreeSet<&ProductId> = products.iter().flat_map(|p| &p.alias_to).collect();
        let catalog: Vec<Product> = products
            .iter()
            .filter(|p| {
                p.product_type.eq_ignore_ascii_case("SPOT")
                    && p.alias.is_none()
                    && !aliases.contains(&p.product_id)
            })
            .cloned()
            .collect();
        self.catalog.send_replace(catalog);
    }

    pub fn health(&self) -> Arc<FeedHealth> {
        self.shared.health.clone()
    }

    /// Runs until `cancel`; then closes every connection politely and returns.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let discovering = self.shared.settings.products.is_none();
        if let Some(all) = self.initial_products(&cancel).await {
            let mine = self.mine(&all);
            self.shared.health.set_assigned(mine.len());
            tracing::info!(
                products = all.len(),
                mine = mine.len(),
                shard_index = self.shared.settings.shard_index,
                shard_count = self.shared.settings.shard_count,
                "feed products chosen"
            );
            self.add(mine, &tracker, &cancel).await;
            let mut refresh = tokio::time::interval(self.shared.settings.refresh_interval);
            refresh.reset();
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    Some(refused) = self.refused.recv() => {
                        self.on_refused(refused);
                        if discovering {
                            // Delisted since the last refresh? The list says so now.
                            self.refresh(&tracker, &cancel).await;
                        }
                    }
                    _ = refresh.tick() => self.refresh(&tracker, &cancel).await,
                }
            }
        }
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    fn mine(&self, all: &[ProductId]) -> Vec<ProductId> {
        let s = &self.shared.settings;
        products_for_instance(all, s.shard_index, s.shard_count)
    }

    /// `PRODUCTS`, or the products list, retried with backoff until it answers. `None` when
    /// cancelled first.
    async fn initial_products(&self, cancel: &CancellationToken) -> Option<Vec<ProductId>> {
        if let Some(products) = &self.shared.settings.products {
            // Metadata for `trading_pairs` is welcome but not needed to ingest.
            match fetch_reported(
                &self.http,
                &self.shared.settings.rest_url,
                &self.shared.health,
            )
            .await
            {
                Ok(all) => self.publish_catalog(&all),
                Err(e) => tracing::info!(error = %e, "no product metadata from REST"),
            }
            return Some(products.clone());
        }
        let mut delay = DISCOVERY_RETRY;
        loop {
            match fetch_reported(
                &self.http,
                &self.shared.settings.rest_url,
                &self.shared.health,
            )
            .await
            {
                Ok(products) => {
                    self.publish_catalog(&products);
                    return Some(ingestible_ids(&products));
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "cannot list products");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(self.shared.settings.reconnect.cap);
        }
    }

    /// Takes refused products off their connections (which already dropped them) and lets
    /// them cool down for a refresh interval before they are subscribed again.
    fn on_refused(&mut self, refused: Vec<ProductId>) {
        let now = Instant::now();
        for product in refused {
            for handle in &mut self.handles {
                handle.products.remove(&product);
            }
            self.cooling.insert(product, now);
        }
        // A connection left without products is dropped: its task closes politely.
        let health = self.shared.health.clone();
        self.handles.retain(|h| {
            let keep = !h.products.is_empty();
            if !keep {
                health.remove(h.id);
            }
            keep
        });
    }

    /// Brings the subscriptions in line with the products list (fetched again when
    /// discovering, `PRODUCTS` otherwise): delisted products go, new ones and refused ones
    /// whose cool-down is over come (back).
    async fn refresh(&mut self, tracker: &TaskTracker, cancel: &CancellationToken) {
        let all = match &self.shared.settings.products {
            Some(products) => products.clone(),
            None => match fetch_reported(
                &self.http,
                &self.shared.settings.rest_url,
                &self.shared.health,
            )
            .await
            {
                Ok(products) => {
                    self.publish_catalog(&products);
                    ingestible_ids(&products)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot refresh the products list, keeping the current one");
                    return;
                }
            },
        };
        let cool_down = self.shared.settings.refresh_interval;
        self.cooling.retain(|_, at| at.elapsed() < cool_down);
        let wanted: BTreeSet<ProductId> = self
            .mine(&all)
            .into_iter()
            .filter(|p| !self.cooling.contains_key(p))
            .collect();
        self.shared.health.set_assigned(wanted.len());
        let current: BTreeSet<ProductId> = self
            .handles
            .iter()
            .flat_map(|h| h.products.iter().cloned())
            .collect();
        let gone: Vec<ProductId> = current.difference(&wanted).cloned().collect();
        let new: Vec<ProductId> = wanted.difference(&current).cloned().collect();
        if !gone.is_empty() {
            tracing::info!(?gone, "products delisted or disabled, unsubscribing");
            self.remove(&gone).await;
        }
        if !new.is_empty() {
            tracing::info!(?new, "new products listed, subscribing");
            self.add(new, tracker, cancel).await;
        }
    }

    async fn remove(&mut self, gone: &[ProductId]) {
        // Downstream forgets what it holds for them (an unbounded list of delistings must not
        // grow the engine's maps). A stopped engine is the stop: nothing to tell.
        let _stopped = self
            .shared
            .events
            .send(FeedEvent::Unsubscribed {
                products: gone.to_vec(),
            })
            .await;
        for handle in &mut self.handles {
            let mine: Vec<ProductId> = gone
                .iter()
                .filter(|p| handle.products.remove(*p))
                .cloned()
                .collect();
            if !mine.is_empty() && !handle.products.is_empty() {
                // A full queue or a stopped connection: the connection resubscribes from its own
                // list on reconnect, so nothing is lost by waiting here.
                let _stopped = handle.commands.send(Command::Unsubscribe(mine)).await;
            }
        }
        // A connection left without products is dropped: its task closes politely.
        let health = self.shared.health.clone();
        self.handles.retain(|h| {
            let keep = !h.products.is_empty();
            if !keep {
                health.remove(h.id);
            }
            keep
        });
    }

    async fn add(
        &mut self,
        mut new: Vec<ProductId>,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) {
        let per_connection = self.shared.settings.products_per_connection.max(1);
        for handle in &mut self.handles {
            let room = per_connection.saturating_sub(handle.products.len());
            if room == 0 || new.is_empty() {
                continue;
            }
            let take: Vec<ProductId> = new.drain(..room.min(new.len())).collect();
            handle.products.extend(take.iter().cloned());
            let _stopped = handle.commands.send(Command::Subscribe(take)).await;
        }
        for chunk in new.chunks(per_connection) {
            let id = self.next_id;
            self.next_id += 1;
            let products: BTreeSet<ProductId> = chunk.iter().cloned().collect();
            let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
            let connection = Connection::new(id, products.clone(), self.shared.clone(), rx);
            tracker.spawn(connection.run(cancel.child_token()));
            self.handles.push(Handle {
                id,
                products,
                commands: tx,
            });
        }
    }
}
