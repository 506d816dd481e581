//! The simulator's send log and the floor: the raw loopback hop simulator → NATS → client.
//!
//! In: the simulator's send tap (product, newest trade id, send instant of every update
//! frame) and the bench's NATS server. Out: the frames sent (for matching the SSE clients'
//! events to them) and, for each frame, the latency of the same facts going the shortest way:
//! published on `bench.floor` by this tap as it reads them, received by a subscriber on a
//! second connection. That hop is the floor the service's latency is compared with.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use spot_canvas_sim::tap::SentFrame;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::client::ProductIndex;

const SUBJECT: &str = "bench.floor";

/// One product of an update frame, as the simulator sent it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    pub product: u16,
    pub sent_us: u32,
    pub trade_id: u64,
}

/// One frame's hop over NATS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop {
    pub sent_us: u32,
    pub latency_us: u32,
}

/// What the tap and the floor's subscriber collect; cleared at each scenario's start.
#[derive(Debug, Default)]
pub(crate) struct Logs {
    pub frames: Mutex<Vec<Frame>>,
    pub hops: Mutex<Vec<Hop>>,
    /// Floor hops that could not be published (over the whole run).
    pub floor_failures: std::sync::atomic::AtomicU64,
}

impl Logs {
    pub(crate) fn clear(&self) {
        lock(&self.frames).clear();
        lock(&self.hops).clear();
    }

    pub(crate) fn frames(&self) -> Vec<Frame> {
        lock(&self.frames).clone()
    }

    pub(crate) fn hops(&self) -> Vec<Hop> {
        lock(&self.hops).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the tap's reader (logs each frame, publishes it) and the floor's subscriber.
pub(crate) async fn start(
    mut tap: UnboundedReceiver<SentFrame>,
    index: Arc<ProductIndex>,
    base: Instant,
    nats_url: &str,
) -> Arc<Logs> {
    let logs = Arc::new(Logs::default());
    let publisher = spot_canvas::bus::connect_plain(nats_url)
        .await
        .expect("nats publisher");
    let subscriber = spot_canvas::bus::connect_plain(nats_url)
        .await
        .expect("nats subscriber");
    let mut messages = subscriber.subscribe(SUBJECT).await.expect("subscribe");
    subscriber.flush().await.expect("flush");
    tokio::spawn({
        let logs = logs.clone();
        async move {
            // Keeps the connection alive with the subscription.
            let _subscriber = subscriber;
            while let Some(message) = messages.next().await {
                let at = base.elapsed().as_micros() as u32;
                let mut payload = message.payload;
                if payload.len() < 4 {
                    continue;
                }
                let sent_us = payload.get_u32();
                lock(&logs.hops).push(Hop {
                    sent_us,
                    latency_us: at.saturating_sub(sent_us),
                });
            }
        }
    });
    tokio::spawn({
        let logs = logs.clone();
        async move {
            while let Some(sent) = tap.recv().await {
                let Some(&product) = index.get(&sent.product_id) else {
                    continue;
                };
                let sent_us = sent.sent.saturating_duration_since(base).as_micros() as u32;
                lock(&logs.frames).push(Frame {
                    product,
                    sent_us,
                    trade_id: sent.newest_trade_id,
                });
                let mut payload = BytesMut::with_capacity(14);
                payload.put_u32(sent_us);
                payload.put_u16(product);
                payload.put_u64(sent.newest_trade_id);
                let payload: Bytes = payload.freeze();
                // A hop that cannot be published is missing from the floor (counted), never
                // a reason to stop logging the frames the service is measured by.
                if publisher.publish(SUBJECT, payload).await.is_err() {
                    logs.floor_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    logs
}
