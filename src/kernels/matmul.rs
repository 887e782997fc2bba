//! Matrix products for the kernels: strided matrix views ([`Mat`]) and one product type
//! ([`Gemm`]) whose summation order is a constant of the crate, so that the same inputs give
//! the same bits on every x86-64 machine with FMA (AVX2 or AVX-512, any cache sizes) and at
//! any thread count.
//!
//! Every product computes, per output element,
//!
//! ```text
//! dst[i,j] ← β·acc_0                      (or dst[i,j] + β·acc_0 when accumulating)
//! dst[i,j] ← fma(β, acc_c, dst[i,j])       for the following depth blocks c = 1, 2, …
//! acc_c    = fma(lhs[i,p], rhs[p,j], …)    in increasing p over block c, from 0
//! ```
//!
//! with depth blocks of [`KC`] = 512. The `gemm` crate (Candle's CPU matmul) computes exactly
//! this inside one of its depth blocks, whatever its vector width, but it picks the block
//! depth from the L1 cache's size and associativity for reductions longer than 512 (the
//! weight gradients sum over batch × length tokens), and it takes lane-parallel dot products,
//! whose order follows the vector width, for products with at most 256 outputs, one row or
//! one column. Here the depth is cut into blocks of [`KC`] before `gemm` sees it (a block of
//! at most 512 is always one of gemm's blocks), and those small shapes take [`reference`], a
//! scalar loop with the same arithmetic. `tests` below check gemm's results against
//! [`reference`] bit for bit on shapes, layouts and thread counts of every path.
//!
//! On an x86-64 CPU without FMA (before 2013), `gemm` falls back to a multiply and an add,
//! which rounds differently: the one machine-dependence left in the crate's CPU kernels.

use super::Real;

/// Depth of the reduction blocks: a constant of the crate, not of the machine.
pub(crate) const KC: usize = 512;

/// A strided matrix view: element `(r, c)` at `data[r·rs + c·cs]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat<'a, T> {
    data: &'a [T],
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major matrix whose rows start `rs` elements apart.
    pub(crate) fn rows(data: &'a [T], rs: usize) -> Self {
        Self { data, rs, cs: 1 }
    }

    /// The transpose, read in place.
    pub(crate) fn t(self) -> Self {
        Self {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// The view without its first `r` rows.
    fn skip_rows(self, r: usize) -> Self {
        Self {
            data: &self.data[(r * self.rs).min(self.data.len())..],
            ..self
        }
    }

    /// The view without its first `c` columns.
    fn skip_cols(self, c: usize) -> Self {
        Self {
            data: &self.data[(c * self.cs).min(self.data.len())..],
            ..self
        }
    }

    /// Index of element `(r, c)`.
    #[inline(always)]
    fn at(&self, r: usize, c: usize) -> usize {
        r * self.rs + c * self.cs
    }

    /// Panics unless every element of a `rows × cols` matrix lies in the slice (a bug in the
    /// caller, never a property of user input: the callers check shapes first).
    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            assert!(
                self.at(rows - 1, cols - 1) < self.data.len(),
                "gemm: {what} out of bounds"
            );
        }
    }
}

/// `dst ← β·lhs·rhs` (or `dst += β·lhs·rhs`) for an `m × k` lhs and a `k × n` rhs, into a
/// row-major `m × n` dst, in the summation order of the module docs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gemm<'a, T> {
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat<'a, T>,
    rhs: Mat<'a, T>,
    beta: T,
    accumulate: bool,
}

impl<'a, T: Real> Gemm<'a, T> {
    /// The product of `lhs` (`m × k`) and `rhs` (`k × n`), given as `(m, n, k)`, with β = 1,
    /// overwriting dst.
    pub(crate) fn new((m, n, k): (usize, usize, usize), lhs: Mat<'a, T>, rhs: Mat<'a, T>) -> Self {
        Self {
            m,
            n,
            k,
            lhs,
            rhs,
            beta: T::one(),
            accumulate: false,
        }
    }

    /// The same, times `beta`.
    pub(crate) fn scale(mut self, beta: T) -> Self {
        self.beta = beta;
        self
    }

    /// The same, added onto dst (`true`) instead of overwriting it.
    pub(crate) fn accumulate(mut self, accumulate: bool) -> Self {
        self.accumulate = accumulate;
        self
    }

    /// Into `dst` (row stride `dst_rs`); `threads > 1` splits the product over Candle's rayon
    /// pool (the per-slice callers pass 1 and parallelise over slices): a product of one depth
    /// block through gemm's own threads, a longer one in bands of the output, one thread each
    /// over every depth block ([`Gemm::run_bands`]). The bits do not depend on `threads`.
    pub(crate) fn run(&self, dst: &mut [T], dst_rs: usize, threads: usize) {
        // SAFETY: `dst` is borrowed mutably (so it cannot alias lhs or rhs) for its length.
        unsafe { self.run_checked(dst.as_mut_ptr(), dst.len(), dst_rs, threads) }
    }

    /// [`Gemm::run`] into `len` elements at `dst`, their extent checked.
    ///
    /// # Safety
    /// `dst` must be valid for `len` writes and not alias lhs or rhs.
    unsafe fn run_checked(&self, dst: *mut T, len: usize, dst_rs: usize, threads: usize) {
        if self.m == 0 || self.n == 0 {
            return;
        }
        assert!(
            (self.m - 1) * dst_rs + self.n - 1 < len,
            "gemm: dst out of bounds"
        );
        if threads > 1 && self.k > KC && !self.small() {
            return self.run_bands(dst, dst_rs, threads);
        }
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        self.run_raw(dst, dst_rs, par)
    }

    /// A product of several depth blocks on `threads` threads: the output cut into `threads`
    /// bands along its longer side (rows or columns, in multiples of 16), each band's whole
    /// product — every depth block, in order — on one thread. gemm's own threads split every
    /// depth block's product anew and meet at its end, so a long reduction with a small output
    /// (the weight gradients: 128 × 128 summed over 16,384 tokens, 32 blocks) spent most of
    /// its time handing work over: 100–190 GFLOP/s on two threads against 230–290 in bands.
    /// Each output element is the same sum in the same order either way: the same bits.
    ///
    /// # Safety
    /// As [`Gemm::run_checked`], with dst's extent checked.
    unsafe fn run_bands(&self, dst: *mut T, dst_rs: usize, threads: usize) {
        use rayon::prelude::*;
        let by_rows = self.m >= self.n;
        let len = if by_rows { self.m } else { self.n };
        let band = len.div_ceil(threads).next_multiple_of(16);
        let dst = dst as usize;
        (0..len.div_ceil(band)).into_par_iter().for_each(|i| {
            let (start, size) = (i * band, band.min(len - i * band));
            let (part, offset) = if by_rows {
                let g = Gemm {
                    m: size,
                    lhs: self.lhs.skip_rows(start),
                    ..*self
                };
                (g, start * dst_rs)
            } else {
                let g = Gemm {
                    n: size,
                    rhs: self.rhs.skip_cols(start),
                    ..*self
                };
                (g, start)
            };
            // SAFETY: the bands are disjoint parts of dst's m × n elements (checked by the
            // caller), and each is written by one task only.
            unsafe { part.run_raw((dst as *mut T).add(offset), dst_rs, gemm::Parallelism::None) }
        });
    }

    /// [`Gemm::run`] (overwriting, not accumulating) into a destination that may be
    /// uninitialised: every element of the `m × n` product is written (row stride `dst_rs`)
    /// and none is read first.
    pub(crate) fn run_uninit(
        &self,
        dst: &mut [std::mem::MaybeUninit<T>],
        dst_rs: usize,
        threads: usize,
    ) {
        assert!(!self.accumulate, "gemm: an accumulating product reads dst");
        // SAFETY: `dst` is borrowed mutably for its length; without accumulation the first
        // depth block writes every element without reading it (gemm's `read_dst = false`, the
        // scalar path's plain store, the zero fill of k = 0), and the later blocks read only
        // what the first wrote.
        unsafe { self.run_checked(dst.as_mut_ptr().cast(), dst.len(), dst_rs, threads) }
    }

    /// [`Gemm::run`] on one thread into a destination given by pointer, for callers whose
    /// parallel tasks write disjoint but interleaved parts of one buffer.
    ///
    /// # Safety
    /// `dst` must be valid for writes at `r·dst_rs + c` for `r < m`, `c < n`, not aliased by
    /// lhs, rhs or any concurrent writer of those elements.
    pub(crate) unsafe fn run_ptr(&self, dst: *mut T, dst_rs: usize) {
        self.run_raw(dst, dst_rs, gemm::Parallelism::None)
    }

    /// Whether gemm would take a path whose order depends on the vector width (lane-parallel
    /// dot products for ≤ 256 outputs, matrix-vector products, k ≤ 2 outer products).
    fn small(&self) -> bool {
        self.m * self.n <= 256 || self.m <= 1 || self.n <= 1 || self.k <= 2
    }

    /// # Safety
    /// As [`Gemm::run_ptr`].
    unsafe fn run_raw(&self, dst: *mut T, dst_rs: usize, par: gemm::Parallelism) {
        let Gemm {
            m, n, k, lhs, rhs, ..
        } = *self;
        if m == 0 || n == 0 {
            return;
        }
        lhs.check(m, k, "lhs");
        rhs.check(k, n, "rhs");
        if k == 0 {
            if !self.accumulate {
                for r in 0..m {
                    std::ptr::write_bytes(dst.add(r * dst_rs), 0, n);
                }
            }
            return;
        }
        if self.small() {
            return reference(self, dst, dst_rs, 0..k);
        }
        for d0 in (0..k).step_by(KC) {
            let kc = KC.min(k - d0);
            if kc <= 2 {
                // a last block of one or two: gemm's outer-product path rounds differently
                reference(self, dst, dst_rs, d0..k);
                continue;
            }
            let read_dst = self.accumulate || d0 > 0;
            gemm::gemm(
                m,
                n,
                kc,
                dst,
                1,
                dst_rs as isize,
                read_dst,
                lhs.data.as_ptr().add(lhs.at(0, d0)),
                lhs.cs as isize,
                lhs.rs as isize,
                rhs.data.as_ptr().add(rhs.at(d0, 0)),
                rhs.cs as isize,
                rhs.rs as isize,
                if read_dst { T::one() } else { T::zero() },
                self.beta,
                false,
                false,
                false,
                par,
            );
        }
    }
}

/// The depth blocks of `depth` (a range starting at a block boundary) of the product, in the
/// module's summation order, one scalar FMA at a time: the path of the small shapes, and the
/// reference the gemm path is tested against bit for bit. Uses the CPU's FMA instruction
/// where it has one (checked at run time) and the correctly rounded software `fma`
/// otherwise: the same bits either way.
///
/// # Safety
/// As [`Gemm::run_ptr`], with lhs and rhs checked.
unsafe fn reference<T: Real>(
    g: &Gemm<'_, T>,
    dst: *mut T,
    dst_rs: usize,
    depth: std::ops::Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") {
            return reference_fma(g, dst, dst_rs, depth);
        }
    }
    reference_body(g, dst, dst_rs, depth)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn reference_fma<T: Real>(
    g: &Gemm<'_, T>,
    dst: *mut T,
    dst_rs: usize,
    depth: std::ops::Range<usize>,
) {
    reference_body(g, dst, dst_rs, depth)
}

#[inline(always)]
unsafe fn reference_body<T: Real>(
    g: &Gemm<'_, T>,
    dst: *mut T,
    dst_rs: usize,
    depth: std::ops::Range<usize>,
) {
    let (l, r) = (g.lhs.data, g.rhs.data);
    for i in 0..g.m {
        for j in 0..g.n {
            let out = dst.add(i * dst_rs + j);
            for d0 in depth.clone().step_by(KC) {
                let mut acc = T::zero();
                for p in d0..(d0 + KC).min(depth.end) {
                    acc = l[g.lhs.at(i, p)].mul_add(r[g.rhs.at(p, j)], acc);
                }
                *out = if g.accumulate || d0 > 0 {
                    g.beta.mul_add(acc, *out)
                } else {
                    g.beta * acc
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_data as data;

    /// gemm's blocked, vectorised, threaded products against the scalar reference, bit for
    /// bit: shapes with one and several depth blocks (a last block shorter than [`KC`]),
    /// transposed and strided operands, dst with a wider row stride, β ≠ 1, accumulation, and
    /// one or two threads. If gemm's order depended on the machine (its cache-derived depth
    /// blocks, its vector width), it would differ from the reference here on some machine;
    /// the small shapes take the reference itself.
    fn check<T: Real>() {
        let shapes = [
            (37, 41, 1300),
            (64, 64, 600),
            (130, 70, 1025),
            (65, 33, 512),
            (20, 300, 77),
            (3, 90, 900),
            (1, 40, 700),
            (40, 1, 700),
            (16, 16, 2000),
            (50, 60, 2),
            (24, 20, 1100),
        ];
        for (si, &(m, n, k)) in shapes.iter().enumerate() {
            for layout in 0..4 {
                let (lt, rt) = (layout & 1 == 1, layout & 2 == 2);
                let lhs_v = data::<T>(m * k + 7, si as u64 * 8 + layout as u64);
                let rhs_v = data::<T>(k * n + 5, 1000 + si as u64 * 8 + layout as u64);
                let lhs = if lt {
                    Mat::rows(&lhs_v, m).t()
                } else {
                    Mat::rows(&lhs_v, k)
                };
                let rhs = if rt {
                    Mat::rows(&rhs_v, k).t()
                } else {
                    Mat::rows(&rhs_v, n)
                };
                for (beta, acc) in [(1.0, false), (0.125, true), (0.3, false)] {
                    let g = Gemm::new((m, n, k), lhs, rhs)
                        .scale(T::from_f64(beta))
                        .accumulate(acc);
                    let dst_rs = n + 3;
                    let start = data::<T>(m * dst_rs, 7 + si as u64);
                    let mut want = start.clone();
                    unsafe { reference(&g, want.as_mut_ptr(), dst_rs, 0..k) };
                    for threads in [1, 2, 3] {
                        let mut got = start.clone();
                        g.run(&mut got, dst_rs, threads);
                        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                            let (a, b) = (a.to_f64().unwrap(), b.to_f64().unwrap());
                            assert!(
                                a.to_bits() == b.to_bits(),
                                "{m}×{n}×{k} layout {layout} β {beta} acc {acc} threads {threads}: \
                                 element {i} is {a:?}, the reference {b:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Timing, not a check (`cargo test --release --lib time_bands -- --ignored --nocapture`,
    /// with `RAYON_NUM_THREADS=2`): the weight-gradient shapes (out × in summed over 16,384
    /// rows, lhs transposed) through gemm's threads per depth block, in bands
    /// ([`Gemm::run`]), and on one thread, in GFLOP/s; the three give the same bits.
    #[test]
    #[ignore]
    fn time_bands() {
        for (m, n) in [(128, 128), (512, 128), (128, 512)] {
            let k = 16384;
            let (g, x) = (data::<f32>(k * m, 1), data::<f32>(k * n, 2));
            let p = Gemm::new((m, n, k), Mat::rows(&g, m).t(), Mat::rows(&x, n));
            let gflops = |f: &dyn Fn(&mut [f32])| {
                let mut dst = vec![0f32; m * n];
                let t = std::time::Instant::now();
                f(&mut dst);
                (
                    2.0 * (m * n * k) as f64 / t.elapsed().as_secs_f64() / 1e9,
                    dst,
                )
            };
            for _ in 0..3 {
                let (per_block, a) = gflops(&|d: &mut [f32]| unsafe {
                    p.run_raw(d.as_mut_ptr(), n, gemm::Parallelism::Rayon(2))
                });
                let (bands, b) = gflops(&|d: &mut [f32]| p.run(d, n, 2));
                let (one, c) = gflops(&|d: &mut [f32]| p.run(d, n, 1));
                assert!(a == b && b == c, "{m}×{n}×{k}: the three differ");
                eprintln!(
                    "{m}×{n}×{k}: gemm's threads per block {per_block:.0}, bands {bands:.0}, \
                     one thread {one:.0} GFLOP/s"
                );
            }
        }
    }

    #[test]
    fn gemm_matches_the_fixed_order_reference_f32() {
        check::<f32>();
    }

    #[test]
    fn gemm_matches_the_fixed_order_reference_f64() {
        check::<f64>();
    }

    /// `run_uninit` never reads its destination: over a destination full of NaN (what
    /// uninitialised memory may hold) it gives `run`'s bits, on every path (the scalar small
    /// shapes, one and several depth blocks, a last block of one or two, k = 0).
    #[test]
    fn run_uninit_writes_without_reading() {
        for (si, &(m, n, k)) in [
            (3, 4, 5),
            (37, 41, 1300),
            (64, 64, 600),
            (20, 30, 514),
            (2, 3, 0),
        ]
        .iter()
        .enumerate()
        {
            let lhs = data::<f32>(m * k, si as u64);
            let rhs = data::<f32>(k * n, 100 + si as u64);
            let g = Gemm::new((m, n, k), Mat::rows(&lhs, k), Mat::rows(&rhs, n)).scale(0.5);
            let dst_rs = n + 2;
            for threads in [1, 2, 3] {
                let mut want = vec![0f32; m * dst_rs];
                g.run(&mut want, dst_rs, threads);
                let mut got = vec![std::mem::MaybeUninit::new(f32::NAN); m * dst_rs];
                g.run_uninit(&mut got, dst_rs, threads);
                for r in 0..m {
                    for c in 0..n {
                        // SAFETY: initialised with NaN above, and overwritten by the product
                        let a = unsafe { got[r * dst_rs + c].assume_init() };
                        let b = want[r * dst_rs + c];
                        assert_eq!(a.to_bits(), b.to_bits(), "{m}×{n}×{k} ({r}, {c})");
                    }
                }
            }
        }
    }

    #[test]
    fn empty_depth_zeroes_or_keeps_dst() {
        let (l, r) = ([0f32; 0], [0f32; 0]);
        let g = Gemm::new((2, 3, 0), Mat::rows(&l, 0), Mat::rows(&r, 3));
        let mut dst = vec![5f32; 6];
        g.accumulate(true).run(&mut dst, 3, 1);
        assert_eq!(dst, vec![5.0; 6]);
        g.run(&mut dst, 3, 1);
        assert_eq!(dst, vec![0.0; 6]);
    }
}
