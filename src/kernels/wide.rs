//! The kernels' elementwise loops that evaluate polynomials (the softmaxes' `exp`, GELU's
//! `erf` and `exp` and its gradient), the attention's row softmax as a whole and the max-pool
//! gradient's compares and selects, in versions compiled for AVX2 (8 f32 lanes) and
//! AVX-512F (16), picked once at run time from what the CPU reports. The crate is otherwise
//! compiled for the target's baseline (SSE2 on x86-64: 4 lanes), unless its user builds with
//! `-C target-cpu`.
//!
//! The results are **bit-identical** to the baseline loops: Rust neither contracts `a·b + c`
//! into a fused multiply-add nor reassociates floating-point arithmetic, so each lane performs
//! the same IEEE operations in the same order whatever the vector width (the unit test
//! compares every width the CPU has, bit for bit). The one latitude is a NaN's sign and
//! payload, which follow the operand order the compiler picks for a commutative operation: a
//! NaN stays a NaN (and stops training, see `NonFinitePolicy`). `CONVLUNA_NO_WIDE=1` keeps the
//! baseline loops, to measure what the wide ones buy.
//!
//! Each loop is a [`Loop`] whose `run` is `#[inline(always)]`, so that it is compiled into the
//! wrapper that carries the target feature (a closure would be inlined only when small).

use super::{gelu, gelu_cdf, gelu_grad, gelu_grad_from_cdf, Real};

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

/// A loop to compile at several vector widths. `run` must be `#[inline(always)]`, and so
/// must everything it calls that should be wide.
pub(crate) trait Loop {
    /// Runs the loop.
    fn run(self);
}

/// Runs `l` compiled for `level`; a level the CPU lacks runs the baseline loop.
#[inline(always)]
pub(crate) fn at<L: Loop>(level: Level, l: L) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each wrapper is entered only when the CPU reports its feature.
        match level {
            Level::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
                return unsafe { avx512(l) }
            }
            Level::Avx2 if std::arch::is_x86_feature_detected!("avx2") => {
                return unsafe { avx2(l) }
            }
            _ => {}
        }
    }
    let _ = level;
    l.run()
}

/// Runs `l` compiled for [`level`].
#[inline(always)]
pub(crate) fn wide<L: Loop>(l: L) {
    at(level(), l)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<L: Loop>(l: L) {
    l.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<L: Loop>(l: L) {
    l.run()
}

/// The attention's softmax over rows of `l` logits, in place: `z ← softmax(z + bias)` with
/// the row maximum subtracted first. Its maximum and sum are [`super::max`] and
/// [`super::sum`] with their eight fixed lanes, so every width adds in the same order. With
/// `stats`, each row's maximum `μ` and inverse sum `1/Σ` are written there (two values per
/// row), so that [`SoftmaxRecompute`] can rebuild any part of a row bit for bit.
pub(crate) struct SoftmaxRows<'a, T> {
    pub(crate) z: &'a mut [T],
    pub(crate) l: usize,
    pub(crate) bias: Option<&'a [T]>,
    pub(crate) stats: Option<&'a mut [T]>,
}

impl<T: Real> Loop for SoftmaxRows<'_, T> {
    #[inline(always)]
    fn run(self) {
        let mut stats = self.stats.map(|s| s.chunks_exact_mut(2));
        for row in self.z.chunks_mut(self.l.max(1)) {
            let mx = add_bias_max(row, self.bias);
            for x in row.iter_mut() {
                *x = (*x - mx).exp_fast();
            }
            let inv = T::one() / super::sum(row);
            for x in row.iter_mut() {
                *x *= inv;
            }
            if let Some(st) = stats.as_mut().and_then(|s| s.next()) {
                st[0] = mx;
                st[1] = inv;
            }
        }
    }
}

/// `row += bias` (the softmaxes' key bias) and the row's maximum, in one pass: the values
/// and the maximum of adding the bias and then taking [`super::max`] (its eight lanes, its
/// comparisons, its order).
#[inline(always)]
fn add_bias_max<T: Real>(row: &mut [T], bias: Option<&[T]>) -> T {
    let b = match bias {
        Some(b) if b.len() == row.len() => b,
        Some(b) => {
            for (x, &bb) in row.iter_mut().zip(b) {
                *x += bb;
            }
            return super::max(row);
        }
        None => return super::max(row),
    };
    let mut acc = [T::neg_infinity(); 8];
    let mut r8 = row.chunks_exact_mut(8);
    let mut b8 = b.chunks_exact(8);
    for (x, bb) in (&mut r8).zip(&mut b8) {
        for i in 0..8 {
            x[i] += bb[i];
            acc[i] = if x[i] > acc[i] { x[i] } else { acc[i] };
        }
    }
    let rest = r8.into_remainder().iter_mut().zip(b8.remainder());
    let mut m = rest.fold(T::neg_infinity(), |m, (x, &bb)| {
        *x += bb;
        if *x > m {
            *x
        } else {
            m
        }
    });
    for v in acc {
        m = if v > m { v } else { m };
    }
    m
}

/// Adds the bias row, then turns each row of `z` (rows of `l`) into its softmax:
/// [`SoftmaxRows`] at this process's [`level`]; with `stats`, also each row's `(μ, 1/Σ)`.
pub(crate) fn softmax_rows<T: Real>(
    z: &mut [T],
    l: usize,
    bias: Option<&[T]>,
    stats: Option<&mut [T]>,
) {
    wide(SoftmaxRows { z, l, bias, stats })
}

/// Rebuilds a block of softmax weights from its logits and its rows' statistics, in place:
/// `z_ij ← exp(z_ij + bias_j − μ_i) · (1/Σ)_i` over rows of `cols` values (`stats` holds
/// `(μ_i, (1/Σ)_i)` per row, from [`SoftmaxRows`]). Each element goes through the same IEEE
/// operations as in [`SoftmaxRows`], so the weights are the forward's, bit for bit, whatever
/// block of the row they are rebuilt in.
pub(crate) struct SoftmaxRecompute<'a, T> {
    pub(crate) z: &'a mut [T],
    pub(crate) cols: usize,
    pub(crate) bias: Option<&'a [T]>,
    pub(crate) stats: &'a [T],
}

impl<T: Real> Loop for SoftmaxRecompute<'_, T> {
    #[inline(always)]
    fn run(self) {
        for (row, st) in self
            .z
            .chunks_mut(self.cols.max(1))
            .zip(self.stats.chunks_exact(2))
        {
            let (mx, inv) = (st[0], st[1]);
            match self.bias {
                // the bias added in the same pass: `(z + b) − μ`, the forward's operations
                Some(b) => {
                    for (x, &bb) in row.iter_mut().zip(b) {
                        *x = (*x + bb - mx).exp_fast() * inv;
                    }
                    for x in row.iter_mut().skip(b.len()) {
                        *x = (*x - mx).exp_fast() * inv;
                    }
                }
                None => {
                    for x in row.iter_mut() {
                        *x = (*x - mx).exp_fast() * inv;
                    }
                }
            }
        }
    }
}

/// [`SoftmaxRecompute`] at this process's [`level`].
pub(crate) fn softmax_recompute<T: Real>(
    z: &mut [T],
    cols: usize,
    bias: Option<&[T]>,
    stats: &[T],
) {
    wide(SoftmaxRecompute {
        z,
        cols,
        bias,
        stats,
    })
}

/// `y ← GELU(h + b)` over rows of `b.len()` values.
pub(crate) struct BiasGeluRows<'a, T> {
    pub(crate) y: &'a mut [T],
    pub(crate) h: &'a [T],
    pub(crate) b: &'a [T],
}

impl<T: Real> Loop for BiasGeluRows<'_, T> {
    #[inline(always)]
    fn run(self) {
        let f = self.b.len();
        for (yr, hr) in self.y.chunks_mut(f).zip(self.h.chunks(f)) {
            for ((o, &v), &bv) in yr.iter_mut().zip(hr).zip(self.b) {
                *o = gelu(v + bv);
            }
        }
    }
}

/// `dh ← g ⊙ GELU′(h + b)` over rows of `b.len()` values, and `db += Σ_rows dh`.
pub(crate) struct BiasGeluGrad<'a, T> {
    pub(crate) dh: &'a mut [T],
    pub(crate) db: &'a mut [T],
    pub(crate) h: &'a [T],
    pub(crate) g: &'a [T],
    pub(crate) b: &'a [T],
}

impl<T: Real> Loop for BiasGeluGrad<'_, T> {
    #[inline(always)]
    fn run(self) {
        let (f, b, db) = (self.b.len(), self.b, self.db);
        let rows = self
            .dh
            .chunks_mut(f)
            .zip(self.h.chunks(f))
            .zip(self.g.chunks(f));
        for ((dr, hr), gr) in rows {
            for i in 0..f {
                let d = gr[i] * gelu_grad(hr[i] + b[i]);
                dr[i] = d;
                db[i] += d;
            }
        }
    }
}

/// `a ← GELU(z)`, times the dropout keep-mask when there is one.
pub(crate) struct GeluKeep<'a, T> {
    pub(crate) a: &'a mut [T],
    pub(crate) z: &'a [T],
    pub(crate) keep: Option<&'a [f32]>,
}

impl<T: Real> Loop for GeluKeep<'_, T> {
    #[inline(always)]
    fn run(self) {
        match self.keep {
            Some(k) => {
                for ((o, &v), &kk) in self.a.iter_mut().zip(self.z).zip(k) {
                    *o = gelu(v) * T::from_f64(kk as f64);
                }
            }
            None => {
                for (o, &v) in self.a.iter_mut().zip(self.z) {
                    *o = gelu(v);
                }
            }
        }
    }
}

/// [`GeluKeep`] that also keeps `c ← Φ(z)` ([`gelu_cdf`]) for [`GeluKeepGradCdf`]: the same
/// `a`, bit for bit (`GELU(z) = Φ(z)·z`).
pub(crate) struct GeluKeepCdf<'a, T> {
    pub(crate) a: &'a mut [T],
    pub(crate) c: &'a mut [T],
    pub(crate) z: &'a [T],
    pub(crate) keep: Option<&'a [f32]>,
}

impl<T: Real> Loop for GeluKeepCdf<'_, T> {
    #[inline(always)]
    fn run(self) {
        match self.keep {
            Some(k) => {
                let it = self.a.iter_mut().zip(self.c.iter_mut()).zip(self.z).zip(k);
                for (((o, c), &v), &kk) in it {
                    *c = gelu_cdf(v);
                    *o = *c * v * T::from_f64(kk as f64);
                }
            }
            None => {
                for ((o, c), &v) in self.a.iter_mut().zip(self.c.iter_mut()).zip(self.z) {
                    *c = gelu_cdf(v);
                    *o = *c * v;
                }
            }
        }
    }
}

/// [`GeluKeepGrad`] with `Φ(z)` read from `c` instead of evaluated again: the same bits.
pub(crate) struct GeluKeepGradCdf<'a, T> {
    pub(crate) dz: &'a mut [T],
    pub(crate) z: &'a [T],
    pub(crate) c: &'a [T],
    pub(crate) keep: Option<&'a [f32]>,
}

impl<T: Real> Loop for GeluKeepGradCdf<'_, T> {
    #[inline(always)]
    fn run(self) {
        match self.keep {
            Some(k) => {
                let it = self.dz.iter_mut().zip(self.z).zip(self.c).zip(k);
                for (((o, &v), &c), &kk) in it {
                    *o = *o * T::from_f64(kk as f64) * gelu_grad_from_cdf(v, c);
                }
            }
            None => {
                for ((o, &v), &c) in self.dz.iter_mut().zip(self.z).zip(self.c) {
                    *o *= gelu_grad_from_cdf(v, c);
                }
            }
        }
    }
}

/// `dz ← dz ⊙ keep ⊙ GELU′(z)` in place (without `keep` when there is none): the reference
/// [`GeluKeepGradCdf`] is tested against (which reads `Φ(z)` instead of evaluating it).
#[cfg(test)]
pub(crate) struct GeluKeepGrad<'a, T> {
    pub(crate) dz: &'a mut [T],
    pub(crate) z: &'a [T],
    pub(crate) keep: Option<&'a [f32]>,
}

#[cfg(test)]
impl<T: Real> Loop for GeluKeepGrad<'_, T> {
    #[inline(always)]
    fn run(self) {
        match self.keep {
            Some(k) => {
                for ((o, &v), &kk) in self.dz.iter_mut().zip(self.z).zip(k) {
                    *o = *o * T::from_f64(kk as f64) * gelu_grad(v);
                }
            }
            None => {
                for (o, &v) in self.dz.iter_mut().zip(self.z) {
                    *o *= gelu_grad(v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::exp_f32;
    use super::*;

    /// `v ← exp(v − shift)` elementwise: [`exp_f32`] alone, as [`SoftmaxRows`] evaluates it.
    struct ExpShifted<'a> {
        v: &'a mut [f32],
        shift: f32,
    }

    impl Loop for ExpShifted<'_> {
        #[inline(always)]
        fn run(self) {
            for x in self.v.iter_mut() {
                *x = exp_f32(*x - self.shift);
            }
        }
    }

    /// Inputs over the whole range the softmax sees, with the special values.
    fn inputs() -> Vec<f32> {
        let mut v = vec![
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
        ];
        v.extend((0..20_011).map(|i| {
            let u = (i as f32 * 0.618_034).fract();
            (u - 0.5) * 220.0 + (i % 7) as f32 * 1e-3
        }));
        v
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The first element whose bits differ (any NaN equals any NaN: its sign and payload are
    /// the one latitude, see the module docs).
    fn first_difference(got: &[f32], base: &[f32]) -> Option<usize> {
        got.iter()
            .zip(base)
            .position(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan()))
    }

    /// Runs `make(level)` at every level and checks each output against the baseline's.
    fn same_bits_at_every_width<F: FnMut(Level) -> Vec<f32>>(what: &str, mut make: F) {
        let base = make(Level::Base);
        // (a level the CPU lacks falls back to the baseline)
        for level in [Level::Avx2, Level::Avx512] {
            let got = make(level);
            if let Some(i) = first_difference(&got, &base) {
                panic!(
                    "{what} at {level:?}: element {i} of {}: {:e} (bits {:#x}), baseline {:e} (bits {:#x})",
                    got.len(),
                    got[i],
                    got[i].to_bits(),
                    base[i],
                    base[i].to_bits()
                );
            }
        }
    }

    #[test]
    fn every_width_gives_the_baseline_bits() {
        let x = inputs();
        // the baseline is the scalar definition
        let mut e = x.clone();
        at(
            Level::Base,
            ExpShifted {
                v: &mut e,
                shift: 0.75,
            },
        );
        for (a, &v) in e.iter().zip(&x) {
            assert_eq!(a.to_bits(), exp_f32(v - 0.75).to_bits());
        }
        same_bits_at_every_width("exp", |l| {
            let mut e = x.clone();
            at(
                l,
                ExpShifted {
                    v: &mut e,
                    shift: 0.75,
                },
            );
            e
        });
        // 541 rows of 37, the special values in the first
        let n = x.len() / 37 * 37;
        let (h, b) = (&x[..n], &x[..37]);
        let g: Vec<f32> = x[..n].iter().map(|v| (v * 0.01).sin()).collect();
        let keep: Vec<f32> = (0..n)
            .map(|i| if i % 5 == 0 { 0.0 } else { 1.25 })
            .collect();
        same_bits_at_every_width("bias gelu", |l| {
            let mut y = vec![0.0; n];
            at(l, BiasGeluRows { y: &mut y, h, b });
            y
        });
        same_bits_at_every_width("bias gelu grad", |l| {
            let (mut dh, mut db) = (vec![0.0; n], vec![0.5; 37]);
            at(
                l,
                BiasGeluGrad {
                    dh: &mut dh,
                    db: &mut db,
                    h,
                    g: &g,
                    b,
                },
            );
            dh.extend(db);
            dh
        });
        for k in [None, Some(&keep[..])] {
            same_bits_at_every_width("gelu keep", |l| {
                let mut a = vec![0.0; n];
                at(
                    l,
                    GeluKeep {
                        a: &mut a,
                        z: h,
                        keep: k,
                    },
                );
                a
            });
            same_bits_at_every_width("gelu keep grad", |l| {
                let mut dz = g.clone();
                at(
                    l,
                    GeluKeepGrad {
                        dz: &mut dz,
                        z: h,
                        keep: k,
                    },
                );
                dz
            });
            // with Φ(z) kept from the forward: the same a and dz as evaluating it twice
            let reference = |l| {
                let (mut a, mut dz) = (vec![0.0; n], g.clone());
                at(
                    l,
                    GeluKeep {
                        a: &mut a,
                        z: h,
                        keep: k,
                    },
                );
                at(
                    l,
                    GeluKeepGrad {
                        dz: &mut dz,
                        z: h,
                        keep: k,
                    },
                );
                a.extend(dz);
                a
            };
            let base = reference(Level::Base);
            same_bits_at_every_width("gelu keep, gelu keep grad from the cdf", |l| {
                let (mut a, mut c, mut dz) = (vec![0.0; n], vec![0.0; n], g.clone());
                at(
                    l,
                    GeluKeepCdf {
                        a: &mut a,
                        c: &mut c,
                        z: h,
                        keep: k,
                    },
                );
                at(
                    l,
                    GeluKeepGradCdf {
                        dz: &mut dz,
                        z: h,
                        c: &c,
                        keep: k,
                    },
                );
                a.extend(dz);
                let bad = first_difference(&a, &base);
                assert_eq!(bad, None, "kept cdf vs evaluated twice at {l:?}");
                a
            });
        }
        // the attention's softmax, rows of 37 with and without a bias (large negatives in it)
        let bias: Vec<f32> = (0..37)
            .map(|i| if i % 7 == 3 { -1e9 } else { i as f32 * 0.1 })
            .collect();
        for bias in [None, Some(&bias[..])] {
            same_bits_at_every_width("softmax rows", |l| {
                let mut z: Vec<f32> = x[..n].iter().map(|v| v.clamp(-80.0, 80.0)).collect();
                at(
                    l,
                    SoftmaxRows {
                        z: &mut z,
                        l: 37,
                        bias,
                        stats: None,
                    },
                );
                z
            });
            // rebuilt from the row statistics in blocks of 5 columns (ragged last block), at
            // every width, equal to the whole-row softmax at the baseline width
            let z0: Vec<f32> = x[..n].iter().map(|v| v.clamp(-80.0, 80.0)).collect();
            let rows = n / 37;
            let (mut whole, mut stats) = (z0[..rows * 37].to_vec(), vec![0f32; 2 * rows]);
            at(
                Level::Base,
                SoftmaxRows {
                    z: &mut whole,
                    l: 37,
                    bias,
                    stats: Some(&mut stats),
                },
            );
            for l in [Level::Base, Level::Avx2, Level::Avx512] {
                let mut rebuilt = vec![0f32; rows * 37];
                for c0 in (0..37).step_by(5) {
                    let cc = 5.min(37 - c0);
                    let mut blk: Vec<f32> = (0..rows)
                        .flat_map(|i| z0[i * 37 + c0..i * 37 + c0 + cc].to_vec())
                        .collect();
                    at(
                        l,
                        SoftmaxRecompute {
                            z: &mut blk,
                            cols: cc,
                            bias: bias.map(|b| &b[c0..c0 + cc]),
                            stats: &stats,
                        },
                    );
                    for i in 0..rows {
                        rebuilt[i * 37 + c0..i * 37 + c0 + cc]
                            .copy_from_slice(&blk[i * cc..(i + 1) * cc]);
                    }
                }
                assert_eq!(bits(&rebuilt), bits(&whole), "softmax rebuilt at {l:?}");
            }
        }
        // and the entry point the kernels call, at this process's level
        let mut z: Vec<f32> = x[..n].iter().map(|v| v.clamp(-80.0, 80.0)).collect();
        let mut base = z.clone();
        wide(SoftmaxRows {
            z: &mut z,
            l: 37,
            bias: None,
            stats: None,
        });
        at(
            Level::Base,
            SoftmaxRows {
                z: &mut base,
                l: 37,
                bias: None,
                stats: None,
            },
        );
        assert_eq!(bits(&z), bits(&base), "softmax rows at {:?}", level());
    }
}
