//! The simulator's settings: the `spot-canvas sim` flags (and `SIM_*` variables), or a struct
//! literal in tests and benchmarks.
//!
//! In: the command line (clap) or code. Out: a [`SimConfig`] for [`crate::Simulator::start`].

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::faults::FaultRequest;
use crate::market;
use crate::products_faults::ProductsFault;
use crate::tap::SendTap;

/// How the simulator runs.
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:8765")]
    pub listen: SocketAddr,
    /// Number of products (well-known ones first, then SIMnnn-USD).
    #[arg(long, default_value_t = 10, conflicts_with = "product_list")]
    pub products: usize,
    /// Explicit product ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub product_list: Option<Vec<String>>,
    /// Trades per second per product (average).
    #[arg(long, default_value_t = 2.0, value_parser = parse_rate)]
    pub trades_per_second: f64,
    /// Seed of the random walk, for deterministic runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Minutes of trade history generated before start (for REST backfill).
    #[arg(long, default_value_t = 120)]
    pub history_minutes: u32,
    /// Write every trade to this JSON-lines file.
    #[arg(long)]
    pub trade_log: Option<PathBuf>,
    /// Arm a fault at start (JSON, as POST /sim/faults takes); repeatable.
    #[arg(long = "fault", value_parser = parse_fault)]
    pub faults: Vec<FaultRequest>,
    /// Arm a products list fault at start (JSON, as POST /sim/products-faults takes, e.g.
    /// `{"kind":"odd_ids"}` or `{"kind":"huge"}`); repeatable.
    #[arg(long = "products-fault", value_parser = parse_products_fault)]
    pub products_faults: Vec<ProductsFault>,
    /// Answer subscribes that carry a JWT with `authentication failure`.
    #[arg(long)]
    pub reject_jwt: bool,
    /// Verify the `jwt` of subscribes with this public key (PEM `BEGIN PUBLIC KEY`, P-256 or
    /// Ed25519, or base64 of a raw Ed25519 key); tokens that fail are answered with
    /// `authentication failure`. Needs `--jwt-key-name`.
    #[arg(long, env = "SIM_JWT_PUBLIC_KEY", requires = "jwt_key_name")]
    pub jwt_public_key: Option<String>,
    /// The CDP key name tokens must carry (`kid` and `sub`).
    #[arg(long, env = "SIM_JWT_KEY_NAME")]
    pub jwt_key_name: Option<String>,
    /// Send the trades of all subscribed products of a tick in one `market_trades` frame, as
    /// Coinbase may, instead of one frame per product (also `POST /sim/options`).
    #[arg(long)]
    pub multi_product_frames: bool,
    /// Records the send instant of every `market_trades` update frame (benchmarks only).
    #[arg(skip)]
    pub send_tap: Option<SendTap>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            products: 10,
            product_list: None,
            trades_per_second: 2.0,
            seed: 1,
            history_minutes: 120,
            trade_log: None,
            faults: Vec::new(),
            products_faults: Vec::new(),
            reject_jwt: false,
            jwt_public_key: None,
            jwt_key_name: None,
            multi_product_frames: false,
            send_tap: None,
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if market::valid_rate(rate) {
        Ok(rate)
    } else {
        Err(format!(
            "must be from 0 to {}",
            market::MAX_TRADES_PER_SECOND
        ))
    }
}

fn parse_fault(s: &str) -> Result<FaultRequest, String> {
    serde_json::from_str(s).map_err(|e| format!("not a fault: {e}"))
}

fn parse_products_fault(s: &str) -> Result<ProductsFault, String> {
    serde_json::from_str(s).map_err(|e| format!("not a products list fault: {e}"))
}
