//! The JetStream spool's message format, version 1: `{"spot_canvas_spool":1,"rows":[...]}`.
//!
//! In: rows to keep (encoded in chunks under a size limit) or a message's payload (read back).
//! Out: payloads with the indices of the rows each holds, or a [`Chunk`].

use bytes::Bytes;
use serde::Deserialize;

use crate::model::CandleUpdate;

/// The format this build writes and reads.
pub(super) const VERSION: u32 = 1;

/// A message as read back.
#[derive(Debug, Deserialize)]
pub(super) struct Chunk {
    pub(super) spot_canvas_spool: u32,
    #[serde(default)]
    pub(super) rows: Vec<CandleUpdate>,
}

/// `rows` as messages of at most `limit` bytes each, with the indices of the rows each holds;
/// and the indices of rows too large for a message of their own (handed back).
pub(super) fn encode(
    rows: &[CandleUpdate],
    limit: usize,
) -> (Vec<(Bytes, Vec<usize>)>, Vec<usize>) {
    const HEAD: &[u8] = b"{\"spot_canvas_spool\":1,\"rows\":[";
    const TAIL: &[u8] = b"]}";
    let mut chunks = Vec::new();
    let mut oversized = Vec::new();
    let mut body: Vec<u8> = HEAD.to_vec();
    let mut held: Vec<usize> = Vec::new();
    for (i, update) in rows.iter().enumerate() {
        let Ok(line) = serde_json::to_vec(update) else {
            oversized.push(i);
            continue;
        };
        if HEAD.len() + line.len() + TAIL.len() > limit {
            oversized.push(i);
            continue;
        }
        if !held.is_empty() && body.len() + 1 + line.len() + TAIL.len() > limit {
            body.extend_from_slice(TAIL);
            chunks.push((
                Bytes::from(std::mem::replace(&mut body, HEAD.to_vec())),
                std::mem::take(&mut held),
            ));
        }
        if !held.is_empty() {
            body.push(b',');
        }
        body.extend_from_slice(&line);
        held.push(i);
    }
    if !held.is_empty() {
        body.extend_from_slice(TAIL);
        chunks.push((Bytes::from(body), held));
    }
    (chunks, oversized)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::spool::tests::update;

    #[test]
    fn chunks_stay_under_the_limit_and_hold_every_row_once_in_a_readable_message() {
        let rows: Vec<CandleUpdate> = (0..500).map(|m| update("BTC-USD", m, 1)).collect();
        let one = serde_json::to_vec(&rows[0]).expect("json").len();
        let limit = 40 + 7 * (one + 1);
        let (chunks, oversized) = encode(&rows, limit);
        assert!(oversized.is_empty());
        assert!(chunks.len() >= 500 / 7, "{}", chunks.len());
        let mut seen = Vec::new();
        for (payload, indices) in &chunks {
            assert!(payload.len() <= limit, "{} > {limit}", payload.len());
            let chunk: Chunk = serde_json::from_slice(payload).expect("readable");
            assert_eq!(chunk.spot_canvas_spool, VERSION);
            assert_eq!(chunk.rows.len(), indices.len());
            for (row, i) in chunk.rows.iter().zip(indices) {
                assert_eq!(row.candle.start, rows[*i].candle.start);
            }
            seen.extend(indices.iter().copied());
        }
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        // A limit no row fits in: every row handed back, none published.
        let (chunks, oversized) = encode(&rows[..3], 20);
        assert!(chunks.is_empty());
        assert_eq!(oversized, vec![0, 1, 2]);
    }
}
