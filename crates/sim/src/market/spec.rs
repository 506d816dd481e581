//! The simulated products' scales: well-known markets at realistic magnitudes, and plausible
//! mid-cap ones for any other id.

/// Price and size scales of one simulated product.
#[derive(Debug, Clone)]
pub struct MarketSpec {
    pub product_id: String,
    pub base: String,
    pub quote: String,
    pub start_price: f64,
    /// Decimal places of the price increment.
    pub price_dp: u32,
    pub size_min: f64,
    pub size_max: f64,
    pub size_dp: u32,
}

/// Well-known markets at realistic magnitudes, used first when products are given as a count.
const KNOWN: &[(&str, f64, u32, f64, f64, u32)] = &[
    // product, price, price dp, size min, size max, size dp
    ("BTC-USD", 100_000.0, 2, 0.000_01, 0.5, 8),
    ("ETH-USD", 3_500.0, 2, 0.000_1, 10.0, 8),
    ("SOL-USD", 150.0, 2, 0.001, 200.0, 8),
    ("XRP-USD", 0.6, 4, 1.0, 50_000.0, 6),
    ("DOGE-USD", 0.15, 5, 1.0, 500_000.0, 1),
    ("ADA-USD", 0.45, 4, 1.0, 50_000.0, 8),
    ("AVAX-USD", 30.0, 2, 0.01, 1_000.0, 8),
    ("LINK-USD", 15.0, 3, 0.01, 5_000.0, 8),
    ("LTC-USD", 80.0, 2, 0.001, 500.0, 8),
    ("DOT-USD", 6.0, 3, 0.01, 5_000.0, 8),
    ("PEPE-USD", 0.000_012, 10, 1_000_000.0, 1_000_000_000.0, 0),
    ("SHIB-USD", 0.000_018, 9, 1_000_000.0, 1_000_000_000.0, 0),
    ("BONK-USD", 0.000_025, 10, 1_000_000.0, 1_000_000_000.0, 0),
    ("UNI-USD", 8.0, 3, 0.01, 5_000.0, 6),
    ("ATOM-USD", 7.0, 3, 0.01, 5_000.0, 8),
    ("NEAR-USD", 5.0, 3, 0.1, 10_000.0, 8),
];

impl MarketSpec {
    /// The spec of a well-known product, or a plausible mid-cap one for any other id.
    pub fn for_product(product_id: &str) -> MarketSpec {
        let (base, quote) = product_id
            .split_once('-')
            .map_or((product_id, "USD"), |(b, q)| (b, q));
        if let Some(&(_, price, price_dp, size_min, size_max, size_dp)) =
            KNOWN.iter().find(|k| k.0 == product_id)
        {
            return MarketSpec {
                product_id: product_id.to_owned(),
                base: base.to_owned(),
                quote: quote.to_owned(),
                start_price: price,
                price_dp,
                size_min,
                size_max,
                size_dp,
            };
        }
        // Deterministic price from the name, between 0.5 and ~500.
        let hash = product_id
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        MarketSpec {
            product_id: product_id.to_owned(),
            base: base.to_owned(),
            quote: quote.to_owned(),
            start_price: 0.5 * 10f64.powf(f64::from(hash % 3000) / 1000.0),
            price_dp: 4,
            size_min: 0.1,
            size_max: 10_000.0,
            size_dp: 4,
        }
    }

    /// Product ids for a count: the well-known ones first, then synthetic `SIMnnn-USD`.
    pub fn product_ids(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| match KNOWN.get(i) {
                Some(k) => k.0.to_owned(),
                None => format!("SIM{:03}-USD", i - KNOWN.len() + 1),
            })
            .collect()
    }
}
