//! An optional tap on the simulator's `market_trades` update frames, for measuring latency
//! from the moment a frame leaves the simulator (the end-to-end benchmark, `benches/e2e/main.rs`).
//!
//! In: each update frame, just before its connection writes it. Out: one [`SentFrame`] per
//! product in the frame (its newest trade id and the send instant) on an unbounded channel.
//! Off unless [`SimConfig::send_tap`](super::SimConfig::send_tap) holds one: then a frame costs
//! one small message per product.

use std::time::Instant;

use tokio::sync::mpsc;

/// One product's trades in an update frame, as the frame left the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentFrame {
    pub product_id: String,
    /// The newest (highest) trade id of the product in the frame.
    pub newest_trade_id: u64,
    /// Taken just before the frame was written to the socket.
    pub sent: Instant,
}

/// The sending half of the tap; clones share the one receiver.
#[derive(Debug, Clone)]
pub struct SendTap(mpsc::UnboundedSender<SentFrame>);

impl SendTap {
    /// A tap and the receiver of what it records.
    pub fn new() -> (SendTap, mpsc::UnboundedReceiver<SentFrame>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (SendTap(tx), rx)
    }

    /// Records one product of a frame; a dropped receiver turns the tap into a no-op.
    pub(super) fn record(&self, product_id: &str, newest_trade_id: u64, sent: Instant) {
        let _receiver_gone = self.0.send(SentFrame {
            product_id: product_id.to_owned(),
            newest_trade_id,
            sent,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_arrive_in_order_and_a_dropped_receiver_is_harmless() {
        let (tap, mut rx) = SendTap::new();
        let now = Instant::now();
        tap.clone().record("BTC-USD", 7, now);
        tap.record("ETH-USD", 9, now);
        let first = rx.try_recv().expect("first");
        assert_eq!(
            (first.product_id.as_str(), first.newest_trade_id),
            ("BTC-USD", 7)
        );
        assert_eq!(rx.try_recv().expect("second").newest_trade_id, 9);
        drop(rx);
        tap.record("BTC-USD", 8, now);
    }
}
