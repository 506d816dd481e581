//! Random helpers of the market generator: rounding to a price increment, normal and Poisson
//! draws.

use rand::Rng;
use rand::rngs::StdRng;
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

pub(super) fn round(value: f64, dp: u32) -> Decimal {
    Decimal::from_f64(value)
        .unwrap_or(Decimal::ONE)
        .round_dp_with_strategy(dp, RoundingStrategy::MidpointNearestEven)
        .normalize()
}

pub(super) fn standard_normal(rng: &mut StdRng) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

pub(super) fn poisson(rng: &mut StdRng, lambda: f64) -> usize {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        let n = lambda + lambda.sqrt() * standard_normal(rng);
        return n.round().max(0.0) as usize;
    }
    let limit = (-lambda).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= rng.random::<f64>();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}
