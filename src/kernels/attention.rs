//! Softmax attention `y = drop(softmax(s·q·kᵀ + bias))·v`, fused per (batch, head) slice,
//! with its backward.
//!
//! Shapes: q `[B, h, n, d_k]`, k `[B, h, L, d_k]`, v `[B, h, L, d_v]` → y `[B, h, n, d_v]`
//! ([`HeadLayout::Split`]), or the same with the heads left in the model dimension,
//! q `[B, n, h·d_k]`, k `[B, L, h·d_k]`, v `[B, L, h·d_v]` → y `[B, n, h·d_v]`
//! ([`HeadLayout::Merged`], read and written through strides, so no head split or merge is
//! copied), plus the weights `w = softmax(…)` `[B, h, n, L]` (before dropout), kept for the backward
//! and returned detached for diagnostics ([`attention`]) — or, where the caller does not need
//! them ([`attention_values`]), only each row's maximum and inverse sum, from which the
//! backward rebuilds every tile of weights bit for bit. The key bias is a constant `[B, L]` (0 or −1e9),
//! `s` a constant (a learned scale is folded into q or k by the caller), and dropout a
//! constant keep-mask of `1/(1−p)` or 0 drawn by the caller.
//!
//! Each slice runs `q·kᵀ` (gemm) → bias, softmax in place → `w·v` (gemm) while its `n × L`
//! logits are in cache, and the backward is four gemms and one softmax-backward pass per slice:
//!
//! ```text
//! g_w = g·vᵀ ⊙ keep,   dv = (w ⊙ keep)ᵀ·g,   dz = w ⊙ (g_w − Σ_j g_w ⊙ w),
//! dq = s·dz·k,          dk = s·dzᵀ·q
//! ```
//!
//! run in tiles of at most 256 query rows × 256 key columns, so that `g_w` and `dz` are never
//! formed whole (at L = 16384 they would be 16 MiB per slice, out of cache); the row sums
//! `Σ_j g_w ⊙ w` are taken as `g_i · y_i`, which is the same quantity (see `backward`).
//!
//! Compared with the composite graph this saves the gradient-accumulation passes Candle's
//! autograd makes over every `[B, h, n, L]` intermediate (a zero fill and an add each), the
//! transposed-view adds for `kᵀ`, and about half of the memory traffic.

use std::sync::{Arc, Mutex};

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{dot, slice, with_data, Gemm, Mat, Real};

/// Where the heads of q, k, v and y live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadLayout {
    /// `[B, h, n, d_h]`.
    Split,
    /// `[B, n, h·d_h]` with the given number of heads.
    Merged {
        /// h.
        heads: usize,
    },
}

#[derive(Debug)]
struct Attention {
    layout: HeadLayout,
    scale: f64,
    /// Contiguous `[B, L]` additive key bias.
    bias: Option<Tensor>,
    /// Dropout keep-mask (`0` or `1/(1−p)`) over `[B, h, n, L]`.
    keep: Option<Arc<Vec<f32>>>,
    /// Whether the forward keeps the weights (else only their rows' statistics).
    keep_weights: bool,
    /// What the forward pass saved for the backward: the weights `[B, h, n, L]`, or each
    /// row's maximum and inverse sum `[B, h, n, 2]`.
    saved: Arc<Mutex<Option<Tensor>>>,
}

/// What the backward rebuilds the weights from.
#[derive(Clone, Copy)]
enum Saved<'a, T> {
    /// The weights, `[B, h, n, L]`.
    Weights(&'a [T]),
    /// Each row's `(μ, 1/Σ)`, `[B, h, n, 2]`, with the key bias `[B, L]`: a tile of weights
    /// is `exp(s·q·kᵀ + bias − μ)·(1/Σ)`, recomputed bit for bit.
    RowStats(&'a [T], Option<&'a [T]>),
}

/// Logits per block of the forward that keeps only row statistics (4 MiB in f32).
const BLOCK_LOGITS: usize = 1 << 20;

/// Query rows per block of that forward: all of a slice's rows when their logits fit in
/// [`BLOCK_LOGITS`], else as many as fit (at least 16). Blocks are large because each one
/// packs the whole key matrix for its `q·kᵀ` product again.
fn rows_per_block(n: usize, l: usize, block_logits: usize) -> usize {
    (block_logits / l.max(1)).max(16).min(n.max(1))
}

#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    h: usize,
    n: usize,
    l: usize,
    dk: usize,
    dv: usize,
    merged: bool,
}

/// Where one (batch, head) slice of a `rows × width` operand starts, and its row stride.
#[derive(Clone, Copy, Debug)]
struct View {
    off: usize,
    rs: usize,
    /// Elements from `off` to one past the slice's last element.
    span: usize,
}

impl Dims {
    fn slices(&self) -> usize {
        self.b * self.h
    }

    fn view(&self, s: usize, rows: usize, width: usize) -> View {
        let (b, hh) = (s / self.h, s % self.h);
        let (off, rs) = if self.merged {
            (b * rows * self.h * width + hh * width, self.h * width)
        } else {
            (s * rows * width, width)
        };
        View {
            off,
            rs,
            span: if rows == 0 {
                0
            } else {
                (rows - 1) * rs + width
            },
        }
    }

    fn y_shape(&self) -> Shape {
        if self.merged {
            Shape::from((self.b, self.n, self.h * self.dv))
        } else {
            Shape::from((self.b, self.h, self.n, self.dv))
        }
    }
}

fn dims(layout: HeadLayout, q: &Shape, k: &Shape, v: &Shape) -> candle_core::Result<Dims> {
    let bad = || {
        candle_core::Error::Msg(format!(
            "fused attention: q {q:?}, k {k:?}, v {v:?} do not agree ({layout:?})"
        ))
    };
    match layout {
        HeadLayout::Split => {
            let (b, h, n, dk) = q.dims4()?;
            let (bk, hk, l, dk2) = k.dims4()?;
            let (bv, hv, lv, dv) = v.dims4()?;
            if (bk, hk, dk2) != (b, h, dk) || (bv, hv, lv) != (b, h, l) {
                return Err(bad());
            }
            Ok(Dims {
                b,
                h,
                n,
                l,
                dk,
                dv,
                merged: false,
            })
        }
        HeadLayout::Merged { heads: h } => {
            let (b, n, qd) = q.dims3()?;
            let (bk, l, kd) = k.dims3()?;
            let (bv, lv, vd) = v.dims3()?;
            if h == 0 || qd % h != 0 || vd % h != 0 || kd != qd || (bk, bv, lv) != (b, b, l) {
                return Err(bad());
            }
            Ok(Dims {
                b,
                h,
                n,
                l,
                dk: qd / h,
                dv: vd / h,
                merged: true,
            })
        }
    }
}

/// A raw pointer that slice tasks share to write disjoint elements of one output (the heads
/// of a merged-layout output interleave, so its slices are not contiguous chunks).
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T, usize);
// SAFETY: every task writes only the elements of its own (batch, head) slice; the slices are
// disjoint and the buffer outlives the parallel loop.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Over a buffer not yet initialised, for outputs the tasks overwrite in full.
    fn uninit(v: &mut [std::mem::MaybeUninit<T>]) -> Self {
        Self(v.as_mut_ptr().cast(), v.len())
    }
}

/// Appends `w ⊙ keep` to `dst`.
fn push_keep<T: Real>(dst: &mut Vec<T>, w: &[T], keep: &[f32]) {
    dst.extend(w.iter().zip(keep).map(|(&x, &k)| x * T::from_f64(k as f64)));
}

/// Rows `r0 .. r0 + r` of slice `s`: `z = scale·q·kᵀ` (kᵀ read through strides) written
/// whole into `z` (`r × L`, never read first), the softmax in place (with each row's
/// `(μ, 1/Σ)` into `stats` when given), then `y_rows = (z ⊙ keep)·v`.
///
/// # Safety
/// `z` must be valid for `r·L` writes; no other task may touch these rows of `y`.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_rows<T: Real>(
    (q, k, v): (&[T], &[T], &[T]),
    d: Dims,
    (s, r0, r): (usize, usize, usize),
    z: *mut T,
    scale: T,
    bias: Option<&[T]>,
    keep: Option<&[f32]>,
    stats: Option<&mut [T]>,
    scratch: &mut Vec<T>,
    y: SharedMut<T>,
) {
    let Dims {
        h, n, l, dk, dv, ..
    } = d;
    let (qv, kv, vv, yv) = (
        d.view(s, n, dk),
        d.view(s, l, dk),
        d.view(s, l, dv),
        d.view(s, n, dv),
    );
    Gemm::new(
        (r, l, dk),
        Mat::rows(&q[qv.off + r0 * qv.rs..], qv.rs),
        Mat::rows(&k[kv.off..], kv.rs).t(),
    )
    .scale(scale)
    .run_ptr(z, l);
    // SAFETY: the gemm wrote all r·L elements.
    let z: &mut [T] = std::slice::from_raw_parts_mut(z, r * l);
    let brow = bias.map(|b| &b[(s / h) * l..(s / h + 1) * l]);
    super::wide::softmax_rows(z, l, brow, stats);
    let wd: &[T] = match keep {
        Some(kp) => {
            scratch.clear();
            let o = s * n * l + r0 * l;
            push_keep(scratch, z, &kp[o..o + r * l]);
            scratch
        }
        None => z,
    };
    let wv = Gemm::new((r, dv, l), Mat::rows(wd, l), Mat::rows(&v[vv.off..], vv.rs));
    gemm_into(y, sub(yv, r0, r, dv), wv)
}

/// The forward that keeps the weights: per slice, `q·kᵀ` → softmax → `w·v` over all `n`
/// rows, the logits written straight into the uninitialised weights (no zero fill of the
/// largest buffer of the step). Returns `(y, w)`.
fn forward<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    d: Dims,
    scale: T,
    bias: Option<&[T]>,
    keep: Option<&[f32]>,
) -> (Vec<T>, Vec<T>) {
    let Dims { n, l, dv, .. } = d;
    let total = d.slices() * n * l;
    let ny = d.slices() * n * dv;
    if total == 0 {
        // no keys (or no queries): no slice task runs, and the output is zeros
        return (super::zeros(ny), Vec::new());
    }
    let mut w: Vec<T> = Vec::with_capacity(total);
    let mut y: Vec<T> = Vec::with_capacity(ny);
    let yp = SharedMut::uninit(&mut y.spare_capacity_mut()[..ny]);
    w.spare_capacity_mut()[..total]
        .par_chunks_mut(n * l)
        .enumerate()
        .for_each_init(Vec::new, |scratch, (s, wu)| {
            // SAFETY: `wu` holds n·l elements, all written by the first gemm; slice s writes
            // only its own rows × columns of y (see SharedMut).
            unsafe {
                let z = wu.as_mut_ptr().cast::<T>();
                attend_rows(
                    (q, k, v),
                    d,
                    (s, 0, n),
                    z,
                    scale,
                    bias,
                    keep,
                    None,
                    scratch,
                    yp,
                )
            }
        });
    // SAFETY: every chunk of the first `total` elements was written above, and every slice
    // wrote all n rows of its d_v columns of y (the w·v product overwrites).
    unsafe {
        w.set_len(total);
        y.set_len(ny);
    }
    (y, w)
}

/// The forward that keeps no weights: per slice, blocks of query rows run `q·kᵀ` → softmax
/// (recording each row's `(μ, 1/Σ)`) → `w·v` in a scratch buffer of up to `block_logits`
/// ([`BLOCK_LOGITS`]). Returns `(y, stats)`; `y` is [`forward`]'s bit for bit (each output
/// element is the same fixed-order sum of the same products, see [`super::matmul`]).
#[allow(clippy::too_many_arguments)]
fn forward_stats<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    d: Dims,
    scale: T,
    bias: Option<&[T]>,
    keep: Option<&[f32]>,
    block_logits: usize,
) -> (Vec<T>, Vec<T>) {
    let Dims { n, l, dv, .. } = d;
    let rb = rows_per_block(n, l, block_logits);
    let mut stats = super::zeros(d.slices() * n * 2);
    let ny = d.slices() * n * dv;
    let mut y: Vec<T> = Vec::with_capacity(ny);
    let yp = SharedMut::uninit(&mut y.spare_capacity_mut()[..ny]);
    stats.par_chunks_mut(n * 2).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(z, scratch), (s, st)| {
            for r0 in (0..n).step_by(rb) {
                let r = rb.min(n - r0);
                z.resize(r * l, T::zero());
                let st = Some(&mut st[2 * r0..2 * (r0 + r)]);
                // SAFETY: `z` holds r·L elements; slice s writes only its own rows of y.
                unsafe {
                    let zp = z.as_mut_ptr();
                    attend_rows(
                        (q, k, v),
                        d,
                        (s, r0, r),
                        zp,
                        scale,
                        bias,
                        keep,
                        st,
                        scratch,
                        yp,
                    )
                }
            }
        },
    );
    // SAFETY: every slice wrote all n rows (blocks of rb) of its d_v columns of y (the w·v
    // product overwrites).
    unsafe { y.set_len(ny) };
    (y, stats)
}

/// `product` into (or, when it accumulates, onto) the slice `view` of a shared output.
///
/// # Safety
/// No other task may touch the elements of `view` while this runs.
unsafe fn gemm_into<T: Real>(dst: SharedMut<T>, view: View, product: Gemm<'_, T>) {
    assert!(
        view.off + view.span <= dst.1,
        "attention: output out of bounds"
    );
    product.run_ptr(dst.0.add(view.off), view.rs)
}

struct Grads<T> {
    dq: Vec<T>,
    dk: Vec<T>,
    dv: Vec<T>,
}

/// Rows and columns of one tile of the backward: its `g_w`/`dz` tile (`TILE × TILE` values,
/// 256 KiB in f32) stays in the core's cache between the five products that touch it.
const TILE: usize = 256;

/// The backward of one call, per (batch, head) slice, in tiles of query rows × key columns.
///
/// The softmax backward needs `c_i = Σ_j g_w[i, j]·w[i, j]` for each row before any tile of
/// `dz` can be formed; it equals `g_i · y_i` (since `y_i = Σ_j w_ij·keep_ij·v_j`), so it is
/// taken from the forward's output `y` and the `n × L` matrices `g_w` and `dz` never exist
/// whole: per tile,
///
/// ```text
/// g_w = g_r·v_cᵀ ⊙ keep,  dv_c += (w ⊙ keep)_rcᵀ·g_r,  dz = w_rc ⊙ (g_w − c_r),
/// dq_r += s·dz·k_c,        dk_c += s·dzᵀ·q_r
/// ```
///
/// with the tiles of a slice visited in a fixed order, so the sums do not depend on the
/// number of threads.
#[allow(clippy::too_many_arguments)]
fn backward<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    y: &[T],
    g: &[T],
    d: Dims,
    scale: T,
    keep: Option<&[f32]>,
    saved: Saved<'_, T>,
) -> Grads<T> {
    let Dims {
        h, n, l, dk, dv, ..
    } = d;
    if n == 0 || l == 0 {
        // no tile runs: every gradient is zero
        return Grads {
            dq: super::zeros(q.len()),
            dk: super::zeros(k.len()),
            dv: super::zeros(v.len()),
        };
    }
    // Each slice's first tile of a row block (c0 = 0) overwrites its rows of dq, and the
    // first tile of a column block (r0 = 0) its rows of dk and dv; with n, L > 0 every row of
    // every slice gets one, so the gradients need no zero fill.
    let (mut dq, mut dkv, mut dvv): (Vec<T>, Vec<T>, Vec<T>) = (
        Vec::with_capacity(q.len()),
        Vec::with_capacity(k.len()),
        Vec::with_capacity(v.len()),
    );
    let (dqp, dkp, dvp) = (
        SharedMut::uninit(&mut dq.spare_capacity_mut()[..q.len()]),
        SharedMut::uninit(&mut dkv.spare_capacity_mut()[..k.len()]),
        SharedMut::uninit(&mut dvv.spare_capacity_mut()[..v.len()]),
    );
    (0..d.slices()).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        |(gw, wd, c, wbuf), s| {
            let (qv, kv, vv, yv) = (
                d.view(s, n, dk),
                d.view(s, l, dk),
                d.view(s, l, dv),
                d.view(s, n, dv),
            );
            c.clear();
            c.extend((0..n).map(|i| {
                let o = yv.off + i * yv.rs;
                dot(&g[o..o + dv], &y[o..o + dv])
            }));
            for r0 in (0..n).step_by(TILE) {
                let r = TILE.min(n - r0);
                let (qs, gs) = (&q[qv.off + r0 * qv.rs..], &g[yv.off + r0 * yv.rs..]);
                for c0 in (0..l).step_by(TILE) {
                    let cc = TILE.min(l - c0);
                    let (ks, vs) = (&k[kv.off + c0 * kv.rs..], &v[vv.off + c0 * vv.rs..]);
                    // the tile of weights: stored, or rebuilt from the rows' statistics
                    let (wt, wt_rs): (&[T], usize) = match saved {
                        Saved::Weights(w) => (&w[s * n * l + r0 * l + c0..], l),
                        Saved::RowStats(st, bias) => {
                            wbuf.resize(r * cc, T::zero());
                            Gemm::new((r, cc, dk), Mat::rows(qs, qv.rs), Mat::rows(ks, kv.rs).t())
                                .scale(scale)
                                .run(wbuf, cc, 1);
                            let o = s * n * 2 + r0 * 2;
                            super::wide::softmax_recompute(
                                wbuf,
                                cc,
                                bias.map(|b| &b[(s / h) * l + c0..(s / h) * l + c0 + cc]),
                                &st[o..o + 2 * r],
                            );
                            (wbuf, cc)
                        }
                    };
                    // g_w = g_r·v_cᵀ (r × cc, contiguous; the gemm overwrites every element,
                    // so the buffer is only zero-filled when it grows)
                    gw.resize(r * cc, T::zero());
                    Gemm::new((r, cc, dv), Mat::rows(gs, yv.rs), Mat::rows(vs, vv.rs).t())
                        .run(gw, cc, 1);
                    // (w ⊙ keep) of the tile, and g_w ⊙ keep
                    let (wdr, wdr_cs): (&[T], usize) = match keep {
                        Some(kp) => {
                            wd.clear();
                            for i in 0..r {
                                let o = s * n * l + (r0 + i) * l + c0;
                                let (kr, wr) = (&kp[o..o + cc], &wt[i * wt_rs..i * wt_rs + cc]);
                                for (x, &kk) in gw[i * cc..(i + 1) * cc].iter_mut().zip(kr) {
                                    *x *= T::from_f64(kk as f64);
                                }
                                push_keep(wd, wr, kr);
                            }
                            (wd, cc)
                        }
                        None => (wt, wt_rs),
                    };
                    let (acc_r, acc_c) = (r0 > 0, c0 > 0);
                    // SAFETY (all three): slice s writes only its own rows × columns (see
                    // SharedMut), and the tiles of a slice run one after another.
                    // dv_c (+)= (w ⊙ keep)_rcᵀ·g_r
                    let dvv = sub(vv, c0, cc, dv);
                    unsafe {
                        gemm_into(
                            dvp,
                            dvv,
                            Gemm::new(
                                (cc, dv, r),
                                Mat::rows(wdr, wdr_cs).t(),
                                Mat::rows(gs, yv.rs),
                            )
                            .accumulate(acc_r),
                        )
                    };
                    // dz = w ⊙ (g_w − c), in place
                    for i in 0..r {
                        let ci = c[r0 + i];
                        let wr = &wt[i * wt_rs..i * wt_rs + cc];
                        for (x, &wv) in gw[i * cc..(i + 1) * cc].iter_mut().zip(wr) {
                            *x = wv * (*x - ci);
                        }
                    }
                    // dq_r (+)= s·dz·k_c,  dk_c (+)= s·dzᵀ·q_r
                    let (dqv, dkv) = (sub(qv, r0, r, dk), sub(kv, c0, cc, dk));
                    unsafe {
                        let p = Gemm::new((r, dk, cc), Mat::rows(gw, cc), Mat::rows(ks, kv.rs));
                        gemm_into(dqp, dqv, p.scale(scale).accumulate(acc_c))
                    };
                    unsafe {
                        let p = Gemm::new((cc, dk, r), Mat::rows(gw, cc).t(), Mat::rows(qs, qv.rs));
                        gemm_into(dkp, dkv, p.scale(scale).accumulate(acc_r))
                    };
                }
            }
        },
    );
    // SAFETY: every element was written by its first tile (above).
    unsafe {
        dq.set_len(q.len());
        dkv.set_len(k.len());
        dvv.set_len(v.len());
    }
    Grads {
        dq,
        dk: dkv,
        dv: dvv,
    }
}

/// Rows `r0 .. r0 + rows` (each `width` wide) of a slice's view.
fn sub(v: View, r0: usize, rows: usize, width: usize) -> View {
    View {
        off: v.off + r0 * v.rs,
        rs: v.rs,
        span: (rows - 1) * v.rs + width,
    }
}

impl Attention {
    fn fwd<T: Real>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        d: Dims,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let keep = self.keep.as_deref().map(|k| k.as_slice());
        let scale = T::from_f64(self.scale);
        let run = |bias: Option<&[T]>| {
            if self.keep_weights {
                forward(q, k, v, d, scale, bias, keep)
            } else {
                forward_stats(q, k, v, d, scale, bias, keep, BLOCK_LOGITS)
            }
        };
        let (y, saved) = match &self.bias {
            Some(b) => with_data::<T, _>(b, |bd| Ok(run(Some(bd))))?,
            None => run(None),
        };
        let cols = if self.keep_weights { d.l } else { 2 };
        let saved = Tensor::from_vec(saved, (d.b, d.h, d.n, cols), &candle_core::Device::Cpu)?;
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        Ok((T::to_cpu_storage_owned(y), d.y_shape()))
    }

    fn bwd_t<T: Real>(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let d = dims(self.layout, q.shape(), k.shape(), v.shape())?;
        let saved = self
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("fused attention: no forward pass".into()))?;
        let keep = self.keep.as_deref().map(|k| k.as_slice());
        // the key bias `[B, L]` is only read when the weights are rebuilt
        let bias: Option<Vec<T>> = match (&self.bias, self.keep_weights) {
            (Some(b), false) => Some(with_data::<T, _>(b, |bd| Ok(bd.to_vec()))?),
            _ => None,
        };
        let gr = with_data::<T, _>(q, |qd| {
            with_data::<T, _>(k, |kd| {
                with_data::<T, _>(v, |vd| {
                    with_data::<T, _>(&saved, |sd| {
                        let saved = if self.keep_weights {
                            Saved::Weights(sd)
                        } else {
                            Saved::RowStats(sd, bias.as_deref())
                        };
                        with_data::<T, _>(y, |yd| {
                            with_data::<T, _>(g, |gd| {
                                Ok(backward(
                                    qd,
                                    kd,
                                    vd,
                                    yd,
                                    gd,
                                    d,
                                    T::from_f64(self.scale),
                                    keep,
                                    saved,
                                ))
                            })
                        })
                    })
                })
            })
        })?;
        Ok((
            Tensor::from_vec(gr.dq, q.shape(), q.device())?,
            Tensor::from_vec(gr.dk, k.shape(), k.device())?,
            Tensor::from_vec(gr.dv, v.shape(), v.device())?,
        ))
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(self.layout, ql.shape(), kl.shape(), vl.shape())?;
        real_dtype!(qs.dtype(), "fused-attention", |T| self.fwd(
            slice::<T>(qs, ql)?,
            slice::<T>(ks, kl)?,
            slice::<T>(vs, vl)?,
            d,
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = real_dtype!(q.dtype(), "fused-attention", |T| self
            .bwd_t::<T>(q, k, v, res, grad))?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// `(drop(softmax(scale·q·kᵀ + bias))·v, softmax(…))` for CPU f32/f64 tensors, fused per
/// (batch, head) with its own backward.
///
/// With [`HeadLayout::Split`]: q `[B, h, n, d_k]`, k `[B, h, L, d_k]`, v `[B, h, L, d_v]` →
/// y `[B, h, n, d_v]`; with [`HeadLayout::Merged`]: q `[B, n, h·d_k]`, k `[B, L, h·d_k]`,
/// v `[B, L, h·d_v]` → y `[B, n, h·d_v]`. `bias` is a constant `[B, 1, 1, L]` (or `[B, L]`) key
/// bias; `keep` a dropout keep-mask of `B·h·n·L` values (`0` or `1/(1−p)`). The weights
/// `[B, h, n, L]` come back detached (no gradient flows through them), and the backward
/// reads them. Returns `None` when the kernel does not apply (not CPU f32/f64, switched off,
/// or shapes it does not handle), so that the caller can take its composite path. A caller
/// that does not need the weights should call [`attention_values`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    scale: f64,
    bias: Option<&Tensor>,
    keep: Option<Vec<f32>>,
) -> candle_core::Result<Option<(Tensor, Tensor)>> {
    match run(q, k, v, layout, scale, bias, keep, true)? {
        Some((y, Some(w))) => Ok(Some((y, w))),
        Some((_, None)) => Err(candle_core::Error::Msg(
            "fused attention: the weights were not kept".into(),
        )),
        None => Ok(None),
    }
}

/// [`attention`]'s output alone, without the `B·h·n·L` weights: the forward keeps each
/// row's maximum and inverse sum (`2·B·h·n` values) and the backward rebuilds each tile of
/// weights from them (one more `q·kᵀ` product per tile and an `exp` per weight) while the
/// tile is in cache. The output and the gradients are [`attention`]'s, bit for bit; the
/// saving is the weights' memory (64 MiB per call at B·h·n·L = 2²⁴ in f32) and its traffic.
pub fn attention_values(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    scale: f64,
    bias: Option<&Tensor>,
    keep: Option<Vec<f32>>,
) -> candle_core::Result<Option<Tensor>> {
    Ok(run(q, k, v, layout, scale, bias, keep, false)?.map(|(y, _)| y))
}

#[allow(clippy::too_many_arguments)]
fn run(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    scale: f64,
    bias: Option<&Tensor>,
    keep: Option<Vec<f32>>,
    keep_weights: bool,
) -> candle_core::Result<Option<(Tensor, Option<Tensor>)>> {
    let rank = match layout {
        HeadLayout::Split => 4,
        HeadLayout::Merged { .. } => 3,
    };
    if !super::fusable(q) || [q, k, v].iter().any(|t| t.rank() != rank) {
        return Ok(None);
    }
    if [k, v]
        .iter()
        .any(|t| t.dtype() != q.dtype() || !t.device().same_device(q.device()))
    {
        return Ok(None);
    }
    let d = match dims(layout, q.shape(), k.shape(), v.shape()) {
        Ok(d) if d.b * d.h * d.n * d.l * d.dk * d.dv > 0 => d,
        _ => return Ok(None),
    };
    let bias = match bias {
        None => None,
        Some(b) => {
            if b.elem_count() != d.b * d.l || b.dim(0)? != d.b || b.dtype() != q.dtype() {
                return Ok(None);
            }
            Some(b.detach().reshape((d.b, d.l))?.contiguous()?)
        }
    };
    if keep
        .as_ref()
        .is_some_and(|k| k.len() != d.slices() * d.n * d.l)
    {
        return Ok(None);
    }
    let saved = Arc::new(Mutex::new(None));
    let op = Attention {
        layout,
        scale,
        bias,
        keep: keep.map(Arc::new),
        keep_weights,
        saved: saved.clone(),
    };
    let y = q
        .contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?;
    if !keep_weights {
        return Ok(Some((y, None)));
    }
    let w = saved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| candle_core::Error::Msg("fused attention: no weights".into()))?;
    Ok(Some((y, Some(w))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        super::super::test_data::<f32>(n, seed)
            .iter()
            .map(|v| 2.0 * v)
            .collect()
    }

    /// The forward that keeps row statistics, in blocks of rows of every size (several
    /// blocks, a ragged last one), gives the forward's output bit for bit, and the backward
    /// from the statistics the backward from the weights, with a bias and a keep-mask.
    #[test]
    fn row_statistics_rebuild_the_weights_bit_for_bit() {
        for (merged, n, l) in [(false, 70, 300), (true, 53, 600)] {
            let (b, h, dk, dv) = (2, 3, 5, 4);
            let d = Dims {
                b,
                h,
                n,
                l,
                dk,
                dv,
                merged,
            };
            let (q, k, v) = (
                data(b * h * n * dk, 1),
                data(b * h * l * dk, 2),
                data(b * h * l * dv, 3),
            );
            let g = data(b * h * n * dv, 4);
            let bias: Vec<f32> = (0..b * l)
                .map(|i| if i % 7 == 3 { -1e9 } else { 0.0 })
                .collect();
            let keep: Vec<f32> = (0..b * h * n * l)
                .map(|i| if i % 5 == 0 { 0.0 } else { 1.25 })
                .collect();
            let (bias, keep) = (Some(&bias[..]), Some(&keep[..]));
            let (y, w) = forward(&q, &k, &v, d, 0.7, bias, keep);
            let whole = backward(&q, &k, &v, &y, &g, d, 0.7, keep, Saved::Weights(&w));
            for block_logits in [1, 16 * l + 1, 50 * l, BLOCK_LOGITS] {
                let (ys, st) = forward_stats(&q, &k, &v, d, 0.7, bias, keep, block_logits);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&ys), bits(&y), "y, {block_logits} logits a block");
                let gs = backward(
                    &q,
                    &k,
                    &v,
                    &ys,
                    &g,
                    d,
                    0.7,
                    keep,
                    Saved::RowStats(&st, bias),
                );
                assert_eq!(bits(&gs.dq), bits(&whole.dq), "dq");
                assert_eq!(bits(&gs.dk), bits(&whole.dk), "dk");
                assert_eq!(bits(&gs.dv), bits(&whole.dv), "dv");
            }
        }
    }
}
