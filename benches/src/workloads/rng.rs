//! The workloads' random numbers: splitmix64, seeded per thread, so every run of a workload
//! does the same allocations in the same order on every allocator.

/// A splitmix64 generator (Steele, Lea and Flood's mixer over a Weyl sequence).
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for stream `seed`; different seeds give unrelated sequences.
    pub fn new(seed: u64) -> Self {
        Rng {
            state: mix(seed ^ 0x5851_f42d_4c95_7f2d),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// A number in `0..n` (`n > 0`), by the multiply-shift reduction (bias below 2^-32 for
    /// the ranges used here).
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: usize, high: usize) -> usize {
        debug_assert!(low <= high);
        low + self.below(high - low + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// splitmix64's finaliser: a bijection of `u64` that spreads every input bit over the output.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hold_and_streams_repeat() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let x = a.between(3, 12);
            assert!((3..=12).contains(&x));
            assert_eq!(x, b.between(3, 12));
            seen[x - 3] = true;
        }
        assert!(seen.iter().all(|&s| s), "every value in range comes up");
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
