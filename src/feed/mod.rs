//! Market-data ingestion. In: exchange frames. Out: trade batches for the candle engine.

pub mod coinbase;
