//! The softmaxes' `exp` loop in versions compiled for AVX2 (8 f32 lanes) and AVX-512F (16),
//! picked once at run time from what the CPU reports. The crate is otherwise compiled for the
//! target's baseline (SSE2 on x86-64: 4 lanes), unless its user builds with `-C target-cpu`.
//!
//! The results are **bit-identical** to the baseline loop: Rust neither contracts `a·b + c`
//! into a fused multiply-add nor reassociates floating-point arithmetic, so each lane performs
//! the same IEEE operations in the same order whatever the vector width (the unit test
//! compares every width the CPU has, bit for bit). `CONVLUNA_NO_WIDE=1` keeps the baseline
//! loop, to measure what the wide ones buy.
//!
//! A loop gains only if the compiler inlines it into the wrapper that carries the target
//! feature; a small closure is inlined, a large one is not (then it runs at the baseline
//! width, with the same results). GELU's `erf` loops, inside larger closures, are not wide yet.

use super::exp_f32;

/// A vector width the loops here are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// The target's baseline (and every non-x86-64 target).
    Base,
    /// AVX2.
    Avx2,
    /// AVX-512F.
    Avx512,
}

/// The level this process uses: the CPU's widest, or [`Level::Base`] when `CONVLUNA_NO_WIDE`
/// is set to anything but `0` or the empty string.
pub(crate) fn level() -> Level {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let off = std::env::var("CONVLUNA_NO_WIDE").is_ok_and(|v| !v.is_empty() && v != "0");
        if off {
            Level::Base
        } else {
            detected()
        }
    })
}

/// The widest level the CPU supports.
pub(crate) fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Level::Avx2;
        }
    }
    Level::Base
}

/// Runs `f` compiled for `level`, which the CPU must support (checked: an unsupported level
/// falls back to the baseline).
#[inline(always)]
fn at<R>(level: Level, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each wrapper is entered only when the CPU reports its feature.
        match level {
            Level::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
                return unsafe { avx512(f) }
            }
            Level::Avx2 if std::arch::is_x86_feature_detected!("avx2") => {
                return unsafe { avx2(f) }
            }
            _ => {}
        }
    }
    let _ = level;
    f()
}

/// `v ← exp(v − shift)` elementwise ([`exp_f32`]), at `level`.
pub(crate) fn exp_shifted_f32(level: Level, v: &mut [f32], shift: f32) {
    at(level, || {
        for x in v.iter_mut() {
            *x = exp_f32(*x - shift);
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs over the whole range the softmax sees, with the special values.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (0..20_011)
            .map(|i| {
                let u = (i as f32 * 0.618_034).fract();
                (u - 0.5) * 220.0 + (i % 7) as f32 * 1e-3
            })
            .collect();
        v.extend([
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-40,
            -87.3,
            -87.4,
            88.0,
            88.1,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
        ]);
        v
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn every_width_gives_the_baseline_bits() {
        let x = inputs();
        let mut base = x.clone();
        exp_shifted_f32(Level::Base, &mut base, 0.75);
        // the baseline is the scalar definition
        for (b, &v) in base.iter().zip(&x) {
            assert_eq!(b.to_bits(), exp_f32(v - 0.75).to_bits());
        }
        // (a level the CPU lacks falls back to the baseline)
        for level in [Level::Avx2, Level::Avx512] {
            let mut e = x.clone();
            exp_shifted_f32(level, &mut e, 0.75);
            assert_eq!(bits(&e), bits(&base), "exp_shifted at {level:?}");
        }
        let mut e = x.clone();
        <f32 as crate::kernels::Real>::exp_shifted(&mut e, 0.75);
        assert_eq!(bits(&e), bits(&base), "exp_shifted at {:?}", level());
    }
}
