//! Fused CPU kernels with their own backward, for the hot spots of training:
//!
//! - [`attention`]: `drop(softmax(s·q·kᵀ + bias))·v` per (batch, head) slice, gemm → softmax
//!   → gemm while the slice's logits are in cache, reading the heads in place from the
//!   model-dimension layout ([`HeadLayout::Merged`]) so that no head split or merge is copied;
//!   [`attention_values`] the same without keeping the `B·h·n·L` weights (the backward
//!   rebuilds them tile by tile from each row's maximum and sum);
//! - [`linear`] and [`ffn`]: `x·Wᵀ + b` as one gemm over all rows, and the whole feed-forward
//!   network (both layers, GELU, hidden dropout) as one op;
//! - [`conv_time`] / [`conv_time_merged`]: ConvLuna's stride-1 time filter (the latter on the
//!   model-dimension layout with the key-padding mask folded in), [`conv_window_merged`] the
//!   same at any stride, and [`max_pool_merged`] the max-pool filter (pads never enter a max);
//! - [`layer_norm`], [`add_layer_norm`] (the LayerNorm of a residual sum, `LN(x + r)`, in one
//!   op), [`bias_gelu`] and [`softmax_scaled`] (the softmax with its logit scale
//!   and key bias, for callers that keep the logits);
//! - [`mask_rows`]: rows times a constant `[B, L]` mask, with no gradient formed for the mask.
//!
//! Fewer, larger ops also matter because Candle's autograd accumulates every gradient into a
//! fresh zero-filled tensor (a memset and an add per input of every op); one op in place of
//! several removes those passes over the intermediates. The matrix products go through one
//! product type on the `gemm` crate (Candle's own CPU matmul) whose summation order is a
//! constant of the crate — reductions cut into blocks of 512, the shapes on which `gemm`
//! would follow its vector width taken by a scalar loop with the same order — so a kernel
//! gives the same bits on any x86-64 CPU with FMA, AVX2 or AVX-512, whatever its caches,
//! and at any thread count. With the `accelerate` feature the gemm-based kernels stand aside
//! so that Candle's matmul on Apple's BLAS is used (not measured: no Apple hardware here);
//! with `mkl` they stay on (why: [`crate::ops::fused`]).
//!
//! Each kernel is a Candle custom op whose `cpu_fwd` handles contiguous f32 / f64 tensors and
//! whose `bwd` is written by hand (checked by `tests/gradcheck.rs` in f64 and by
//! `tests/kernels.rs` against the composite ops). The callers in [`crate::layers`],
//! [`crate::attention`] and [`crate::filter`] use a kernel only when [`fusable`] holds and
//! otherwise keep the composite, device-generic path, so CUDA, Metal and half precision run
//! exactly the code they ran before.
//!
//! The elementwise loops that evaluate `exp` and `erf` (softmax, GELU) run in AVX2 or
//! AVX-512F builds when the CPU has them, picked at run time, with the same bits as the
//! baseline build (`CONVLUNA_NO_WIDE=1` turns this off).
//!
//! The first fused op of a process calls [`prime_glibc_malloc`], which sets glibc's adaptive
//! malloc thresholds the way freeing one large block would, so that the tensors of a training
//! step come from the heap instead of fresh mappings; [`tune_glibc_malloc`] (opt-in) goes
//! further and keeps all freed memory (see BENCHMARKS.md).

/// The kernels' one dtype dispatch: runs `$body` with `$T` the Rust type of a CPU float
/// dtype (f32 or f64); any other dtype is Candle's `UnsupportedDTypeForOp` for op `$op`.
/// Evaluates to `$body`'s `candle_core::Result`.
macro_rules! real_dtype {
    ($dtype:expr, $op:expr, |$T:ident| $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $T = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $T = f64;
                $body
            }
            dt => Err(candle_core::Error::UnsupportedDTypeForOp(dt, $op)),
        }
    };
}

mod attention;
mod conv;
mod ffn;
mod gelu;
mod layer_norm;
mod linear;
mod malloc;
mod mask;
mod matmul;
mod pool;
mod softmax;
mod wide;

pub use attention::{attention, attention_values, HeadLayout};
pub use conv::{conv_time, conv_time_merged, conv_window_merged};
pub use ffn::ffn;
pub use gelu::bias_gelu;
pub use layer_norm::{add_layer_norm, layer_norm};
pub use linear::linear;
pub(crate) use malloc::prime_once;
pub use malloc::{prime_glibc_malloc, tune_glibc_malloc};
pub use mask::mask_rows;
pub(crate) use matmul::{Gemm, Mat, KC};
pub use pool::max_pool_merged;
pub use softmax::{softmax_scaled, Scale};

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, WithDType};
use rayon::prelude::*;

/// Element types the fused kernels implement.
pub(crate) trait Real: WithDType + num_traits::Float {
    /// The error function: in f32 a branch-free approximation that vectorises (absolute error
    /// below 10⁻⁶, see [`erf_f32`]); in f64 Candle's `erf`.
    fn erf(self) -> Self;
    /// `exp(self)`: [`exp_f32`] in f32, `f64::exp` in f64.
    fn exp_fast(self) -> Self;
}
impl Real for f32 {
    #[inline(always)]
    fn erf(self) -> Self {
        erf_f32(self)
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        exp_f32(self)
    }
}
impl Real for f64 {
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
    fn exp_fast(self) -> Self {
        self.exp()
    }
}

/// `erf(x)` for f32 in branch-free arithmetic that the compiler vectorises: Abramowitz and
/// Stegun 7.1.26, `1 − (a₁t + … + a₅t⁵)·e^{−x²}` with `t = 1/(1 + p|x|)`, sign restored.
/// Absolute error ≤ 1.5·10⁻⁷ in exact arithmetic, 6.4·10⁻⁷ measured in f32 over [−8, 8]
/// (the unit test bounds it by 10⁻⁶); libm's scalar `erff` is closer but branches on the
/// range of x and does not vectorise.
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    let y = 1.0 - poly * exp_f32(-a * a);
    y.copysign(x)
}

/// `exp(x)` for f32 in branch-free arithmetic that the compiler vectorises (Cephes' expf
/// polynomial after a reduction by ln 2; relative error about 2·10⁻⁷, like libm's to within
/// an ulp or two). Inputs below −87.3 give exactly 0 (e^x < 1.2·10⁻³⁸ there; libm would give
/// a subnormal down to −103.97); NaN propagates.
///
/// The 0 matters for speed, not accuracy: a masked key's logit (−10⁹) used to give e^−87.3 ≈
/// 1.2·10⁻³⁸, which the softmax's 1/Σ turned into a subnormal weight, and every product that
/// reads such a weight (`w·v`, and the backward's) takes a microcode assist per operation —
/// a ListOps Transformer trained 11× slower for it (BENCHMARKS.md).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    const FLOOR: f32 = -87.3;
    let underflow = x < FLOOR;
    let x = x.clamp(FLOOR, 88.0);
    let t = x * LOG2E + ROUND; // n + 1.5·2²³: its low mantissa bits hold n
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ from t's bits with integer ops (n ∈ [−126, 127] after the clamp): `n as i32` would
    // be a saturating scalar conversion per lane and stop the loop from vectorising.
    let e = t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23;
    let y = y * f32::from_bits(e);
    // a select, not a branch: the loops that call this still vectorise
    if underflow {
        0.0
    } else {
        y
    }
}

/// `Φ(z) = (1 + erf(z/√2))/2`, the normal CDF: the factor GELU and its derivative share.
#[inline(always)]
pub(crate) fn gelu_cdf<T: Real>(z: T) -> T {
    (T::one() + (z * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf()) * T::from_f64(0.5)
}

/// The exact (erf) GELU, `z·Φ(z)`.
#[inline(always)]
pub(crate) fn gelu<T: Real>(z: T) -> T {
    gelu_cdf(z) * z
}

/// d GELU / dz = `Φ(z) + z·φ(z)`.
#[inline(always)]
pub(crate) fn gelu_grad<T: Real>(z: T) -> T {
    gelu_grad_from_cdf(z, gelu_cdf(z))
}

/// d GELU / dz from `cdf` = [`gelu_cdf`]`(z)` (kept from the forward): `cdf + z·φ(z)`, the
/// bits of [`gelu_grad`] without evaluating `erf` again.
#[inline(always)]
pub(crate) fn gelu_grad_from_cdf<T: Real>(z: T, cdf: T) -> T {
    let pdf = (-(z * z) * T::from_f64(0.5)).exp_fast() * T::from_f64(0.398_942_280_401_432_7);
    cdf + z * pdf
}

/// `Σ a_i b_i` with eight independent accumulators (so that it vectorises).
#[inline]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let n = a.len().min(b.len());
    let (a8, b8) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ra.iter().zip(rb).fold(T::zero(), |s, (&x, &y)| s + x * y);
    for v in acc {
        s += v;
    }
    s
}

/// `Σ a_i` with eight independent accumulators.
#[inline(always)]
pub(crate) fn sum<T: Real>(a: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let a8 = a.chunks_exact(8);
    let r = a8.remainder();
    for x in a8 {
        for i in 0..8 {
            acc[i] += x[i];
        }
    }
    let mut s = r.iter().fold(T::zero(), |s, &x| s + x);
    for v in acc {
        s += v;
    }
    s
}

/// `max_i a_i` with eight independent lanes.
#[inline(always)]
pub(crate) fn max<T: Real>(a: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 8];
    let a8 = a.chunks_exact(8);
    let r = a8.remainder();
    for x in a8 {
        for i in 0..8 {
            acc[i] = if x[i] > acc[i] { x[i] } else { acc[i] };
        }
    }
    let mut m = r
        .iter()
        .fold(T::neg_infinity(), |m, &x| if x > m { x } else { m });
    for v in acc {
        m = if v > m { v } else { m };
    }
    m
}

/// A zeroed buffer of `n` elements, zeroed in parallel: a serial `vec![0; n]` of an output
/// (tens of MB in attention) would leave the other threads idle while the calling thread
/// writes it and takes its page faults.
pub(crate) fn zeros<T: Real>(n: usize) -> Vec<T> {
    // SAFETY: the closure writes every element of its chunk.
    unsafe {
        par_filled(n, 1 << 16, |_, c| {
            for x in c {
                x.write(T::zero());
            }
        })
    }
}

/// `pattern` repeated to fill `n` elements (`n` a multiple of its length), written straight
/// into fresh storage: the bias rows that a gemm then accumulates onto, without a zero fill
/// first.
pub(crate) fn tiled<T: Real>(n: usize, pattern: &[T]) -> Vec<T> {
    let p = pattern.len().max(1);
    debug_assert!(n.is_multiple_of(p), "tiled: {n} is not a multiple of {p}");
    // chunks of about 64K elements, each a whole number of patterns
    // SAFETY: the closure writes every element of its chunk (`cycle` of a non-empty pattern
    // never runs out; with an empty one n is 0 and there is no chunk).
    unsafe {
        par_filled(n, ((1 << 16) / p).max(1) * p, |_, c| {
            for (x, &y) in c.iter_mut().zip(pattern.iter().cycle()) {
                x.write(y);
            }
        })
    }
}

/// A buffer of `n` elements handed to `fill` uninitialised, for outputs that a gemm or a row
/// loop overwrites anyway (a zero fill first would be one more pass over the whole buffer).
///
/// # Safety
/// `fill` must write every one of the `n` elements.
pub(crate) unsafe fn written<T: Real>(
    n: usize,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<T>]),
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: by the caller's contract `fill` initialised every element.
    unsafe { v.set_len(n) };
    v
}

/// A buffer of `n` elements whose chunks of `chunk` elements `fill(i, chunk_i)` initialises
/// in parallel (`i` the chunk's index: it starts at element `i·chunk`).
///
/// # Safety
/// `fill` must write every element of the chunk it is given.
pub(crate) unsafe fn par_filled<T: Real>(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: by the caller's contract `fill` initialised every element of every chunk.
    unsafe { v.set_len(n) };
    v
}

/// `a + b` elementwise, reusing `a` (the reduction step of per-task partial sums).
fn add_vecs<T: Real>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

/// The elementwise sum of per-task partial vectors of length `len`, combined serially in task
/// order.
///
/// This is how every cross-task reduction of the kernels is done (bias, LayerNorm, filter and
/// scale gradients). Each task covers a fixed number of rows that depends only on the shapes
/// (never on the number of threads), and the partials are added in index order, so the result
/// is bit-identical at any thread count and under any work stealing. A rayon `reduce` or `sum`
/// would combine the partials in a tree whose shape depends on how the work was split.
pub(crate) fn ordered_sum<T: Real>(
    parts: impl IndexedParallelIterator<Item = Vec<T>>,
    len: usize,
) -> Vec<T> {
    let parts: Vec<Vec<T>> = parts.collect();
    parts.into_iter().fold(vec![T::zero(); len], add_vecs)
}

/// Rows handled by one parallel task (aims at ~16K elements a task).
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16384 / row_len.max(1)).max(1)
}

/// Runs `f(row, i)` on every `d`-long row `i` of `buf`, in parallel tasks of whole rows
/// (sized by [`rows_per_task`] for rows that cost `d·cost`).
pub(crate) fn par_rows<V: Send>(
    buf: &mut [V],
    d: usize,
    cost: usize,
    f: impl Fn(&mut [V], usize) + Sync,
) {
    let rpt = rows_per_task(d * cost);
    buf.par_chunks_mut(rpt * d.max(1))
        .enumerate()
        .for_each(|(ci, chunk)| {
            for (ri, row) in chunk.chunks_mut(d.max(1)).enumerate() {
                f(row, ci * rpt + ri);
            }
        });
}

/// True where the fused kernels can run: a CPU tensor of f32 or f64. Whether they do is
/// [`crate::ops::fused`]'s decision (device, dtype, features and `CONVLUNA_NO_FUSED`).
pub fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The contiguous slice of a CPU storage under `layout`.
pub(crate) fn slice<'a, T: Real>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&T::cpu_storage_as_slice(s)?[a..b]),
        None => Err(candle_core::Error::Msg(
            "fused kernel: non-contiguous input".into(),
        )),
    }
}

/// Runs `f` on the contiguous CPU data of `t` (copied to contiguous first if needed).
pub(crate) fn with_data<T: Real, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(c) => f(slice::<T>(c, l)?),
        _ => Err(candle_core::Error::Msg(
            "fused kernel: tensor not on the CPU".into(),
        )),
    }
}

/// A kernel's constant `[B, L]` 0/1 mask, detached, in `x`'s dtype and contiguous:
/// `Some(None)` without a mask, `None` when the mask does not fit (the kernel then declines).
pub(crate) fn constant_mask(
    mask: Option<&Tensor>,
    b: usize,
    l: usize,
    x: &Tensor,
) -> candle_core::Result<Option<Option<Tensor>>> {
    match mask {
        None => Ok(Some(None)),
        Some(m) if m.dims() == [b, l] && m.device().same_device(x.device()) => {
            Ok(Some(Some(m.detach().to_dtype(x.dtype())?.contiguous()?)))
        }
        Some(_) => Ok(None),
    }
}

/// The first element of a (small) tensor as f64.
pub(crate) fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    t.flatten_all()?
        .narrow(0, 0, 1)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()
        .map(|v| v[0])
}

/// Reproducible test inputs in [−1, 1) (xorshift), for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn test_data<T: Real>(n: usize, seed: u64) -> Vec<T> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::from_f64((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_erf_and_exp_are_accurate() {
        let mut worst_erf = 0f64;
        let mut worst_exp = 0f64;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4; // −8 … 8
            let e = candle_core::cpu::erf::erf_f64(x as f64);
            worst_erf = worst_erf.max((erf_f32(x) as f64 - e).abs());
            let xe = x * 10.0; // −80 … 80
            let ex = (xe as f64).exp();
            worst_exp = worst_exp.max(((exp_f32(xe) as f64) - ex).abs() / ex);
        }
        assert!(worst_erf < 1e-6, "erf abs error {worst_erf}");
        assert!(worst_exp < 5e-7, "exp rel error {worst_exp}");
        assert!(erf_f32(0.0).abs() < 3e-7);
        assert!(erf_f32(f32::NAN).is_nan());
        assert_eq!(erf_f32(f32::INFINITY), 1.0);
        assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
    }

    /// Below the floor exp gives exactly 0 (a masked key's −10⁹), and from the floor up a
    /// normal number: no subnormal ever comes out (one used to, ×1/Σ in the softmax, and made
    /// every product reading it take a microcode assist per operation).
    #[test]
    fn exp_underflows_to_zero_never_to_a_subnormal() {
        for x in [-87.31f32, -90.0, -103.0, -1e9, f32::MIN, f32::NEG_INFINITY] {
            assert_eq!(exp_f32(x).to_bits(), 0, "exp({x})");
        }
        for i in 0..=7_300 {
            let x = -87.3 + i as f32 * 1e-3; // −87.3 … −80
            assert!(exp_f32(x).is_normal(), "exp({x}) = {:e}", exp_f32(x));
        }
        assert!(exp_f32(f32::NAN).is_nan());
        // a softmax row with masked keys: their weights are exactly 0, none subnormal
        let mut row = vec![0.5f32, -1.0, 2.0, 0.0, 1.5, -0.25, 3.0, 1.0, -2.0, 0.75];
        let bias: Vec<f32> = (0..row.len())
            .map(|j| if j % 3 == 1 { -1e9 } else { 0.0 })
            .collect();
        wide::wide(wide::SoftmaxRows {
            z: &mut row,
            l: 10,
            bias: Some(&bias),
            stats: None,
        });
        for (j, w) in row.iter().enumerate() {
            if j % 3 == 1 {
                assert_eq!(w.to_bits(), 0, "masked key {j}: {w:e}");
            } else {
                assert!(w.is_normal(), "key {j}: {w:e}");
            }
        }
    }
}
