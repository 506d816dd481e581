//! The live state's index of its stream clients: by series for clients of named products,
//! by granularity for clients of every product, and every client with its filter.
//!
//! In: subscribes and unsubscribes (under the live state's lock). Out: the queues an update of
//! a series goes to.

use std::collections::HashMap;
use std::sync::Arc;

use super::client::ClientQueue;
use super::{Filter, Series};

/// Subscribers by what they want.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// Clients of named products, by series.
    pub(super) by_series: HashMap<Series, HashMap<u64, Arc<ClientQueue>>>,
    /// Clients of every product, by granularity.
    pub(super) by_granularity: [HashMap<u64, Arc<ClientQueue>>; 8],
    /// Every client: its filter and queue.
    pub(super) clients: HashMap<u64, (Filter, Arc<ClientQueue>)>,
}

impl Index {
    pub(super) fn insert(&mut self, id: u64, filter: Filter, queue: Arc<ClientQueue>) {
        for &g in &filter.granularities {
            match &filter.products {
                None => {
                    self.by_granularity[g.index()].insert(id, queue.clone());
                }
                Some(products) => {
                    for p in products {
                        self.by_series
                            .entry((p.clone(), g))
                            .or_default()
                            .insert(id, queue.clone());
                    }
                }
            }
        }
        self.clients.insert(id, (filter, queue));
    }

    pub(super) fn remove(&mut self, id: u64) -> Option<Arc<ClientQueue>> {
        let (filter, queue) = self.clients.remove(&id)?;
        for &g in &filter.granularities {
            match &filter.products {
                None => {
                    self.by_granularity[g.index()].remove(&id);
                }
                Some(products) => {
                    for p in products {
                        let key = (p.clone(), g);
                        if let Some(set) = self.by_series.get_mut(&key) {
                            set.remove(&id);
                            if set.is_empty() {
                                self.by_series.remove(&key);
                            }
                        }
                    }
                }
            }
        }
        Some(queue)
    }
}
