//! Keeping rows at the writer's stop: published in chunks, each awaited for its
//! acknowledgement until a deadline.
//!
//! In: the rows the writer still holds and the stop's deadline. Out: [`Stored`], the count
//! acknowledged and the rows not taken (for the file spool).

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::sync::atomic::Ordering;

use async_nats::jetstream;
use tokio::time::Instant;

use super::format::encode;
use super::{IN_FLIGHT, ROWS_HEADER, SUBJECT, Stored, StreamSpool};
use crate::model::CandleUpdate;

impl StreamSpool {
    /// Publishes `rows` in chunks, each awaited for its acknowledgement until `deadline`;
    /// hands back the rows of every chunk not acknowledged by then.
    pub async fn keep(&self, rows: Vec<CandleUpdate>, deadline: Instant) -> Stored {
        if rows.is_empty() {
            return Stored::default();
        }
        if !self.ready.load(Ordering::Relaxed) {
            let config = self.config();
            match tokio::time::timeout_at(deadline, self.js.get_or_create_stream(config)).await {
                Ok(Ok(_stream)) => self.ready.store(true, Ordering::Relaxed),
                Ok(Err(e)) => {
                    tracing::warn!(error = %crate::config::redact(&e.to_string()), "cannot create the JetStream spool");
                    return Stored {
                        acked: 0,
                        unacked: rows,
                    };
                }
                Err(_elapsed) => {
                    tracing::warn!("no answer from JetStream for its spool by the deadline");
                    return Stored {
                        acked: 0,
                        unacked: rows,
                    };
                }
            }
        }
        let (chunks, oversized) = encode(&rows, self.chunk_limit());
        let mut failed: Vec<usize> = oversized;
        let mut acked = 0u64;
        let mut in_flight: VecDeque<(jetstream::context::PublishAckFuture, Vec<usize>)> =
            VecDeque::new();
        let mut first_error: Option<String> = None;
        let mut chunks = chunks.into_iter();
        for (payload, range) in chunks.by_ref() {
            if Instant::now() >= deadline {
                failed.extend(range);
                break;
            }
            if in_flight.len() >= IN_FLIGHT
                && let Some((ack, range)) = in_flight.pop_front()
            {
                match await_ack(ack, deadline).await {
                    Ok(()) => acked += range.len() as u64,
                    Err(e) => {
                        first_error.get_or_insert(e);
                        failed.extend(range);
                    }
                }
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(ROWS_HEADER, range.len().to_string().as_str());
            let publishing = self.js.publish_with_headers(SUBJECT, headers, payload);
            match tokio::time::timeout_at(deadline, publishing).await {
                Ok(Ok(ack)) => in_flight.push_back((ack, range)),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e.to_string());
                    failed.extend(range);
                }
                Err(_elapsed) => {
                    first_error.get_or_insert("no answer by the deadline".to_owned());
                    failed.extend(range);
                }
            }
        }
        failed.extend(chunks.flat_map(|(_, range)| range));
        for (ack, range) in in_flight {
            match await_ack(ack, deadline).await {
                Ok(()) => acked += range.len() as u64,
                Err(e) => {
                    first_error.get_or_insert(e);
                    failed.extend(range);
                }
            }
        }
        if let Some(error) = first_error {
            tracing::warn!(
                error = %crate::config::redact(&error),
                acked,
                "JetStream did not take every row of the writer's stop"
            );
        }
        failed.sort_unstable();
        let mut rows: Vec<Option<CandleUpdate>> = rows.into_iter().map(Some).collect();
        let unacked = failed
            .into_iter()
            .filter_map(|i| rows.get_mut(i).and_then(Option::take))
            .collect();
        Stored { acked, unacked }
    }
}

/// Waits for a publish's acknowledgement until `deadline`.
async fn await_ack(
    ack: jetstream::context::PublishAckFuture,
    deadline: Instant,
) -> Result<(), String> {
    match tokio::time::timeout_at(deadline, ack.into_future()).await {
        Ok(Ok(_ack)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_elapsed) => Err("no acknowledgement by the deadline".to_owned()),
    }
}
