//! The crate's one seeded generator: xoshiro256** (Blackman and Vigna) seeded through
//! SplitMix64, plus samplers in plain integer arithmetic (and `f64` values built from 53
//! random bits) that work on any `rand` generator.
//!
//! # The seeding scheme
//! Everything random in the crate draws from [`Rng`] — `rand_xoshiro`'s xoshiro256** behind
//! `rand`'s [`RngCore`] / [`SeedableRng`] — through the samplers of [`RngExt`] (written on
//! `next_u64` alone), never from `rand`'s `StdRng` (whose algorithm may change between `rand`
//! versions) or Candle's CPU generator (which cannot be seeded), so a seed gives the same
//! numbers on every platform, thread count and dependency version (`tests/golden_rng.rs`
//! pins the first values of every stream):
//! - **parameters**: each parameter from its own stream `Rng::stream(seed, fnv1a(name))`
//!   ([`crate::params::ParamStore`]), so adding a parameter does not move the others;
//! - **dropout**: one stream per optimisation step, `Rng::new(mix_seed(seed, step))`,
//!   drawn in the fixed order of the forward pass ([`crate::layers::DropoutRng`]);
//! - **data** (with the `lra` feature): generated examples from `Rng::stream(seed, index)`,
//!   shuffles and splits from `Rng::new(seed)`, the training order of epoch e from
//!   `Rng::new(mix_seed(seed, e))`.

pub use rand::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256StarStar;

/// One step of SplitMix64 (Steele, Lea and Flood 2014), used to seed and to mix seeds.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes a seed and a stream number (an example index, an epoch) into one well spread seed.
pub fn mix_seed(seed: u64, stream: u64) -> u64 {
    let mut s = seed ^ 0x6A09_E667_F3BC_C908;
    let a = splitmix64(&mut s);
    let mut t = stream ^ a.rotate_left(17);
    splitmix64(&mut t) ^ a
}

/// The crate's generator: xoshiro256** (Blackman and Vigna, `rand_xoshiro`), seeded from one
/// `u64` through SplitMix64 ([`SeedableRng::seed_from_u64`]). A `rand` [`RngCore`]: its
/// values are fixed by the algorithm, not by a `rand` version (`tests/golden_rng.rs` pins
/// them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng(Xoshiro256StarStar);

impl Rng {
    /// A generator whose stream depends only on `seed` (= `seed_from_u64(seed)`).
    pub fn new(seed: u64) -> Self {
        Self::seed_from_u64(seed)
    }

    /// An independent generator for sub-stream `stream` of `seed` (e.g. one per example).
    pub fn stream(seed: u64, stream: u64) -> Self {
        Rng::new(mix_seed(seed, stream))
    }
}

impl RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst)
    }
}

impl SeedableRng for Rng {
    type Seed = <Xoshiro256StarStar as SeedableRng>::Seed;

    fn from_seed(seed: Self::Seed) -> Self {
        Rng(Xoshiro256StarStar::from_seed(seed))
    }

    fn seed_from_u64(state: u64) -> Self {
        Rng(Xoshiro256StarStar::seed_from_u64(state))
    }
}

/// The crate's samplers, on any `rand` [`RngCore`] (yours too). They are written here on
/// `next_u64` alone, so their values do not depend on `rand`'s distributions (which may
/// change between versions).
pub trait RngExt: RngCore {
    /// Uniform in `[0, 1)` with 53 bits of precision.
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (unbiased; `n` must be positive, 0 gives 0).
    fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            return 0;
        }
        // Lemire's multiply-and-reject.
        loop {
            let x = self.next_u64();
            let m = (x as u128) * (n as u128);
            let low = m as u64;
            if low >= n || low >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform index in `0..n`.
    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform in `lo..=hi` (returns `lo` when `hi < lo`).
    fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// `true` with probability `p`.
    fn bernoulli(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Fisher–Yates shuffle.
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.index(i + 1);
            v.swap(i, j);
        }
    }
}

impl<R: RngCore + ?Sized> RngExt for R {}

/// A seeded permutation of `0..n`.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    Rng::new(seed).shuffle(&mut v);
    v
}

const PI: f64 = std::f64::consts::PI;

/// Sine and cosine of `x` radians, for |x| ≤ π/4, from Taylor series (basic IEEE operations
/// only, so the result is the same on every platform, unlike the system `libm`).
fn sin_cos_small(x: f64) -> (f64, f64) {
    let x2 = x * x;
    let (mut s, mut c) = (x, 1.0);
    let (mut ts, mut tc) = (x, 1.0);
    for k in 1..12 {
        let k = k as f64;
        ts = -ts * x2 / ((2.0 * k) * (2.0 * k + 1.0));
        tc = -tc * x2 / ((2.0 * k - 1.0) * (2.0 * k));
        s += ts;
        c += tc;
    }
    (s, c)
}

/// Platform-independent sine and cosine of an angle in degrees.
pub fn sin_cos_deg(deg: f64) -> (f64, f64) {
    let mut d = deg % 360.0;
    if d < 0.0 {
        d += 360.0;
    }
    // d in [0, 360): reduce to the octant around a multiple of 90°.
    let q = ((d + 45.0) / 90.0).floor();
    let r = (d - q * 90.0) * (PI / 180.0);
    let (s, c) = sin_cos_small(r);
    match (q as i64).rem_euclid(4) {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_stream() {
        // SplitMix64 reference values for seed 0.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
        let mut r = Rng::new(7);
        let a: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        let mut r2 = Rng::new(7);
        let b: Vec<u64> = (0..4).map(|_| r2.next_u64()).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn below_is_in_range_and_fair() {
        let mut r = Rng::new(1);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[r.index(6)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn trig_matches_std() {
        for d in -720..=720 {
            let (s, c) = sin_cos_deg(d as f64 * 0.5);
            let x = (d as f64 * 0.5).to_radians();
            assert!(
                (s - x.sin()).abs() < 1e-14 && (c - x.cos()).abs() < 1e-14,
                "{d}"
            );
        }
    }
}
