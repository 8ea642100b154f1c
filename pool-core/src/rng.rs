//! A tiny pseudo-random generator for jitter (backoff delays, connection lifetimes).
//!
//! Jitter needs spread, not cryptographic quality, so a SplitMix64 seeded from the standard
//! library's per-process random hasher keys does the job without another dependency.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new() -> Self {
        Rng(RandomState::new().hash_one(0x6d6f_6d6f_706f_6f6c_u64))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniformly distributed float in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn unit_stays_in_range_and_spreads() {
        let mut rng = Rng::new();
        let samples: Vec<f64> = (0..10_000).map(|_| rng.unit()).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        let low = samples.iter().filter(|x| **x < 0.5).count();
        assert!((4_000..6_000).contains(&low), "{low} of 10000 below 0.5");
    }
}
