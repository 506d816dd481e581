//! The bounded channels between the stages, watched for backpressure.
//!
//! In: the senders of the bounded channels, registered by whoever creates them (the app at
//! build, the engine and the publisher when they start); held weakly, so watching never keeps
//! a channel open. Out: each channel's length, capacity and utilization, sampled by the
//! monitor into the gauges `spot_canvas_channel_{length,capacity,utilization}`.

use tokio::sync::mpsc;

/// A bounded channel whose fill can be sampled.
pub trait Queue: Send + Sync {
    /// (items queued, capacity); `None` once the channel is closed.
    fn depth(&self) -> Option<(usize, usize)>;
}

impl<T: Send> Queue for mpsc::WeakSender<T> {
    fn depth(&self) -> Option<(usize, usize)> {
        // A strong sender for the moment of the sample only.
        let sender = self.upgrade()?;
        let capacity = sender.max_capacity();
        Some((capacity - sender.capacity(), capacity))
    }
}

/// A named channel to watch.
pub struct Watched {
    pub name: &'static str,
    pub queue: Box<dyn Queue>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched").field("name", &self.name).finish()
    }
}

impl Watched {
    pub fn new<T: Send + 'static>(name: &'static str, sender: &mpsc::Sender<T>) -> Watched {
        Watched {
            name,
            queue: Box::new(sender.downgrade()),
        }
    }
}

/// The bounded channels to sample, registered by whoever creates them (the app at build, the
/// engine and the publisher when they start). Channels of one name (the engine's shard queues)
/// are reported together: their lengths and capacities summed, their utilization the highest.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    watched: std::sync::Arc<std::sync::Mutex<Vec<Watched>>>,
}

impl Channels {
    pub fn new() -> Channels {
        Channels::default()
    }

    /// Watches `sender`'s channel under `name` (weakly: it is never kept open by this).
    pub fn register<T: Send + 'static>(&self, name: &'static str, sender: &mpsc::Sender<T>) {
        self.lock().push(Watched::new(name, sender));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (name, summed length, summed capacity, highest utilization) of every open channel;
    /// closed ones are forgotten.
    pub fn sample(&self) -> Vec<(&'static str, usize, usize, f64)> {
        let mut watched = self.lock();
        let mut by_name: Vec<(&'static str, usize, usize, f64)> = Vec::new();
        watched.retain(|channel| {
            let Some((length, capacity)) = channel.queue.depth() else {
                // Closed (its stage stopped): nothing queued any more.
                if !by_name.iter().any(|(name, ..)| *name == channel.name) {
                    by_name.push((channel.name, 0, 0, 0.0));
                }
                return false;
            };
            let utilization = if capacity == 0 {
                0.0
            } else {
                length as f64 / capacity as f64
            };
            match by_name.iter_mut().find(|(name, ..)| *name == channel.name) {
                Some(entry) => {
                    entry.1 += length;
                    entry.2 += capacity;
                    entry.3 = entry.3.max(utilization);
                }
                None => by_name.push((channel.name, length, capacity, utilization)),
            }
            true
        });
        by_name
    }
}

/// Samples the channels and sets their gauges.
pub fn sample(channels: &Channels) {
    for (name, length, capacity, utilization) in channels.sample() {
        metrics::gauge!("spot_canvas_channel_length", "channel" => name).set(length as f64);
        metrics::gauge!("spot_canvas_channel_capacity", "channel" => name).set(capacity as f64);
        metrics::gauge!("spot_canvas_channel_utilization", "channel" => name).set(utilization);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watched_channel_reports_its_fill_and_never_keeps_it_open() {
        let (tx, mut rx) = mpsc::channel::<u32>(8);
        let watched = Watched::new("test", &tx);
        assert_eq!(watched.queue.depth(), Some((0, 8)));
        for i in 0..6 {
            tx.send(i).await.expect("room");
        }
        assert_eq!(watched.queue.depth(), Some((6, 8)));
        drop(tx);
        // The receiver sees the end although the monitor still watches.
        let mut got = 0;
        while rx.recv().await.is_some() {
            got += 1;
        }
        assert_eq!(got, 6);
        assert_eq!(watched.queue.depth(), None);
    }

    #[tokio::test]
    async fn channels_of_one_name_are_summed_and_closed_ones_forgotten() {
        let channels = Channels::new();
        let (a, _ra) = mpsc::channel::<u8>(4);
        let (b, _rb) = mpsc::channel::<u8>(4);
        let (c, rc) = mpsc::channel::<u8>(10);
        channels.register("shard", &a);
        channels.register("shard", &b);
        channels.register("writer", &c);
        a.send(1).await.expect("room");
        for _ in 0..3 {
            b.send(1).await.expect("room");
        }
        c.send(1).await.expect("room");
        let sample = channels.sample();
        assert_eq!(sample, vec![("shard", 4, 8, 0.75), ("writer", 1, 10, 0.1)]);
        drop((c, rc));
        // Once at zero (its gauges must not keep the last fill), then forgotten.
        assert_eq!(
            channels.sample(),
            vec![("shard", 4, 8, 0.75), ("writer", 0, 0, 0.0)]
        );
        assert_eq!(channels.sample(), vec![("shard", 4, 8, 0.75)]);
    }
}
