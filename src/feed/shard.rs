//! Which instance ingests which product: a stable hash every instance computes alike.
//!
//! FNV-1a (64-bit) of the product id, then the SplitMix64 finalizer, modulo the shard count.
//! The finalizer mixes the high bits into the low ones, so the instance choice does not
//! correlate with the candle engine's shard choice (plain FNV-1a modulo 16).

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

use crate::model::ProductId;

/// The instance (0-based) that ingests `product_id` out of `shard_count`.
pub fn instance_for(product_id: &str, shard_count: u32) -> u32 {
    let count = u64::from(shard_count.max(1));
    (splitmix64(fnv1a64(product_id.as_bytes())) % count) as u32
}

/// The products of `all` that instance `index` of `count` ingests, sorted.
pub fn products_for_instance(all: &[ProductId], index: u32, count: u32) -> Vec<ProductId> {
    let mut mine: Vec<ProductId> = all
        .iter()
        .filter(|p| instance_for(p, count) == index)
        .cloned()
        .collect();
    mine.sort_unstable();
    mine.dedup();
    mine
}

#[cfg(test)]
mod tests {
    use super::*;

    fn products(n: usize) -> Vec<ProductId> {
        (0..n)
            .map(|i| ProductId::parse(&format!("P{i}-USD")).expect("an id"))
            .collect()
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn every_product_goes_to_exactly_one_instance() {
        let all = products(500);
        for count in [1u32, 2, 3, 7] {
            let mut seen = 0;
            for index in 0..count {
                seen += products_for_instance(&all, index, count).len();
            }
            assert_eq!(seen, all.len(), "count {count}");
        }
    }

    #[test]
    fn shares_are_balanced() {
        let all = products(1000);
        for index in 0..4 {
            let share = products_for_instance(&all, index, 4).len();
            assert!((200..300).contains(&share), "instance {index}: {share}");
        }
    }

    #[test]
    fn the_instance_choice_does_not_follow_the_engine_shard() {
        // Among products on engine shard 0 (FNV-1a mod 16), instances are still balanced.
        let all = products(4000);
        let on_engine_shard_0: Vec<_> = all
            .iter()
            .filter(|p| fnv1a64(p.as_bytes()).is_multiple_of(16))
            .cloned()
            .collect();
        let first = products_for_instance(&on_engine_shard_0, 0, 2).len();
        let ratio = first as f64 / on_engine_shard_0.len() as f64;
        assert!((0.35..0.65).contains(&ratio), "{ratio}");
    }
}
