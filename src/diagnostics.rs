//! Memory-collapse diagnostics (the paper's central claim, measured as numbers).
//!
//! For a memory `P` of m vectors `p_i ∈ ℝ^d` (one example):
//! - **mean pairwise cosine**: `2/(m(m−1)) Σ_{i<j} cos(p_i, p_j)` (undefined for m = 1);
//! - **distinct vectors**: the number of connected components of the graph joining `i` and `j`
//!   when `cos(p_i, p_j) ≥ threshold` (default [`DISTINCT_THRESHOLD`] = 0.99); all equal → 1,
//!   pairwise orthogonal → m;
//! - **effective rank** (Roy & Vetterli 2007): `exp(−Σ q_k ln q_k)` with `q_k = σ_k / Σ σ`,
//!   σ the singular values of P (`[m, d]`, values below 1e-7·σ_max count as 0); rank-one → 1,
//!   m orthogonal equal-norm → m;
//! - **pack-attention entropy** of slot i: `−Σ_t a_it ln a_it / ln n`, over the n valid
//!   (filtered) key positions of the example (1 = uniform, 0 = one-hot; n = 1 counts as 0);
//! - **pack-row divergence**: the mean over slot pairs `i < j` (and heads) of the
//!   Jensen–Shannon divergence `JS(a_i, a_j) = ½ KL(a_i ‖ μ) + ½ KL(a_j ‖ μ)`, `μ = ½(a_i + a_j)`,
//!   in bits (0 = the two slots read exactly the same positions, 1 = disjoint positions).
//!
//! These are reported for the memory entering and leaving each layer (`P`, `P'`) and for the
//! packed output `Y_p` — what the memory actually carries into unpacking. `P' = LN(P + Y_p)`
//! keeps the learned initial memory's diversity by construction, so a collapse of what the
//! memory carries shows in `Y_p` and in the pack rows, not in `P'`.
//!
//! Each number is computed per example and averaged over the examples of a batch.

// The matrix code below reads as the formulas do, with explicit indices.
#![allow(clippy::needless_range_loop)]

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::encoder::LayerTrace;
use crate::error::{Error, Result};

/// Cosine threshold above which two memory vectors count as the same point.
pub const DISTINCT_THRESHOLD: f64 = 0.99;

/// Collapse statistics of a memory, averaged over examples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Mean pairwise cosine similarity (`None` for m = 1).
    pub mean_cosine: Option<f64>,
    /// Mean number of distinct vectors at the threshold.
    pub distinct: f64,
    /// Mean effective rank.
    pub effective_rank: f64,
}

/// Diagnostics of one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerDiagnostics {
    /// Layer index (0-based).
    pub layer: usize,
    /// Memory entering the layer.
    pub memory_in: MemoryStats,
    /// Memory leaving the layer.
    pub memory_out: MemoryStats,
    /// Mean normalised pack-attention entropy over examples, heads and slots.
    pub pack_entropy: f64,
    /// The packed output `Y_p` of the layer (what the memory carries into unpacking).
    #[serde(default)]
    pub packed: Option<MemoryStats>,
    /// Mean pairwise Jensen–Shannon divergence (bits) between the pack-attention rows of the
    /// memory slots, over examples and heads (`None` for m = 1).
    #[serde(default)]
    pub pack_row_divergence: Option<f64>,
}

fn rows(t: &Tensor) -> Result<Vec<Vec<Vec<f64>>>> {
    Ok(t.to_dtype(DType::F64)?.to_vec3::<f64>()?)
}

/// Pairwise cosine similarities of the rows of `p` (`m × d`).
pub fn cosine_matrix(p: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let norms: Vec<f64> = p
        .iter()
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12))
        .collect();
    let m = p.len();
    let mut c = vec![vec![0.0; m]; m];
    for i in 0..m {
        for j in 0..m {
            let dot: f64 = p[i].iter().zip(&p[j]).map(|(a, b)| a * b).sum();
            c[i][j] = dot / (norms[i] * norms[j]);
        }
    }
    c
}

/// Number of connected components of `cos ≥ threshold`.
pub fn distinct_vectors(p: &[Vec<f64>], threshold: f64) -> usize {
    let c = cosine_matrix(p);
    let m = p.len();
    let mut parent: Vec<usize> = (0..m).collect();
    fn find(p: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while p[r] != r {
            r = p[r];
        }
        let mut i = i;
        while p[i] != r {
            let n = p[i];
            p[i] = r;
            i = n;
        }
        r
    }
    for i in 0..m {
        for j in i + 1..m {
            if c[i][j] >= threshold {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[a] = b;
            }
        }
    }
    (0..m).filter(|&i| find(&mut parent, i) == i).count()
}

/// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations.
fn symmetric_eigenvalues(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        let diag: f64 = (0..n).map(|i| a[i][i] * a[i][i]).sum();
        if off <= 1e-22 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k][p], a[k][q]);
                    a[k][p] = c * akp - s * akq;
                    a[k][q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p][k], a[q][k]);
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i][i]).collect()
}

/// Singular values of `p` (`m × d`), from the smaller Gram matrix.
pub fn singular_values(p: &[Vec<f64>]) -> Vec<f64> {
    let m = p.len();
    let d = p.first().map_or(0, |r| r.len());
    let gram = if m <= d {
        (0..m)
            .map(|i| {
                (0..m)
                    .map(|j| p[i].iter().zip(&p[j]).map(|(a, b)| a * b).sum())
                    .collect()
            })
            .collect()
    } else {
        (0..d)
            .map(|i| {
                (0..d)
                    .map(|j| (0..m).map(|k| p[k][i] * p[k][j]).sum())
                    .collect()
            })
            .collect()
    };
    let mut s: Vec<f64> = symmetric_eigenvalues(gram)
        .into_iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    s.sort_by(|a, b| b.total_cmp(a));
    // eigenvalues of the Gram matrix are exact to ~1e-16 relative, so their square roots to
    // ~1e-8: anything below that is numerical zero
    let floor = s.first().copied().unwrap_or(0.0) * 1e-7;
    s.iter_mut().filter(|v| **v < floor).for_each(|v| *v = 0.0);
    s
}

/// `exp(entropy(σ / Σσ))`.
pub fn effective_rank(p: &[Vec<f64>]) -> f64 {
    let s = singular_values(p);
    let total: f64 = s.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let h: f64 = s
        .iter()
        .map(|v| v / total)
        .filter(|q| *q > 0.0)
        .map(|q| -q * q.ln())
        .sum();
    h.exp()
}

/// Statistics of one memory `m × d`.
pub fn memory_stats_one(p: &[Vec<f64>], threshold: f64) -> (Option<f64>, usize, f64) {
    let m = p.len();
    let cos = if m > 1 {
        let c = cosine_matrix(p);
        let mut sum = 0.0;
        for i in 0..m {
            for j in i + 1..m {
                sum += c[i][j];
            }
        }
        Some(sum / (m * (m - 1) / 2) as f64)
    } else {
        None
    };
    (cos, distinct_vectors(p, threshold), effective_rank(p))
}

/// Statistics of a batch of memories `[B, m, d]`, averaged over the first `max_examples`.
pub fn memory_stats(memory: &Tensor, threshold: f64, max_examples: usize) -> Result<MemoryStats> {
    let all = rows(memory)?;
    let n = all.len().min(max_examples.max(1));
    if n == 0 {
        return Err(Error::shape("memory", "[B ≥ 1, m, d]", memory.dims()));
    }
    let (mut cos, mut dist, mut rank) = (0.0, 0.0, 0.0);
    let mut has_cos = true;
    for p in &all[..n] {
        let (c, d, r) = memory_stats_one(p, threshold);
        match c {
            Some(c) => cos += c,
            None => has_cos = false,
        }
        dist += d as f64;
        rank += r;
    }
    let k = n as f64;
    Ok(MemoryStats {
        mean_cosine: has_cos.then_some(cos / k),
        distinct: dist / k,
        effective_rank: rank / k,
    })
}

/// Mean normalised entropy of pack attention `[B, h, m, L']` over the valid positions of
/// `mask [B, L']`, for the first `max_examples` examples.
pub fn attention_entropy(attention: &Tensor, mask: &Tensor, max_examples: usize) -> Result<f64> {
    let (b, h, m, l) = attention.dims4()?;
    if mask.dims() != [b, l] {
        return Err(Error::shape(
            "mask",
            format!("[{b}, {l}] like the attention keys"),
            mask.dims(),
        ));
    }
    let a = attention
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let mk = mask.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let n = b.min(max_examples.max(1));
    let mut total = 0.0;
    let mut count = 0usize;
    for (e, mrow) in mk.iter().enumerate().take(n) {
        let valid = mrow.iter().filter(|v| **v > 0.0).count();
        for hh in 0..h {
            for s in 0..m {
                let off = ((e * h + hh) * m + s) * l;
                let ent: f64 = (0..l)
                    .filter(|&t| mrow[t] > 0.0)
                    .map(|t| a[off + t])
                    .filter(|p| *p > 0.0)
                    .map(|p| -p * p.ln())
                    .sum();
                total += if valid > 1 {
                    ent / (valid as f64).ln()
                } else {
                    0.0
                };
                count += 1;
            }
        }
    }
    Ok(total / count.max(1) as f64)
}

/// Jensen–Shannon divergence in bits between two distributions over the same positions.
pub fn js_divergence(a: &[f64], b: &[f64]) -> f64 {
    let kl = |p: f64, m: f64| if p > 0.0 { p * (p / m).log2() } else { 0.0 };
    let mut js = 0.0;
    for (&p, &q) in a.iter().zip(b) {
        let m = 0.5 * (p + q);
        if m > 0.0 {
            js += 0.5 * kl(p, m) + 0.5 * kl(q, m);
        }
    }
    js.max(0.0)
}

/// Pairwise Jensen–Shannon divergences (bits) of the pack-attention rows of example `e`,
/// averaged over heads: an `m × m` matrix (0 on the diagonal), restricted to the valid
/// positions of `mask`. Returns `None` where `e` is past the batch.
pub fn pack_row_divergences(
    attention: &Tensor,
    mask: &Tensor,
    e: usize,
) -> Result<Option<Vec<Vec<f64>>>> {
    let (b, h, m, l) = attention.dims4()?;
    if e >= b {
        return Ok(None);
    }
    let a = attention
        .narrow(0, e, 1)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let mk = mask
        .narrow(0, e, 1)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let valid: Vec<usize> = (0..l).filter(|&t| mk[t] > 0.0).collect();
    let row = |hh: usize, s: usize| -> Vec<f64> {
        let off = (hh * m + s) * l;
        valid.iter().map(|&t| a[off + t]).collect()
    };
    let mut out = vec![vec![0.0; m]; m];
    for hh in 0..h {
        let rows: Vec<Vec<f64>> = (0..m).map(|s| row(hh, s)).collect();
        for i in 0..m {
            for j in i + 1..m {
                let v = js_divergence(&rows[i], &rows[j]) / h as f64;
                out[i][j] += v;
                out[j][i] += v;
            }
        }
    }
    Ok(Some(out))
}

/// Mean pairwise pack-row divergence over the first `max_examples` examples (`None` for
/// m = 1).
pub fn pack_row_divergence(
    attention: &Tensor,
    mask: &Tensor,
    max_examples: usize,
) -> Result<Option<f64>> {
    let (b, _, m, l) = attention.dims4()?;
    if mask.dims() != [b, l] {
        return Err(Error::shape(
            "mask",
            format!("[{b}, {l}] like the attention keys"),
            mask.dims(),
        ));
    }
    if m < 2 {
        return Ok(None);
    }
    let n = b.min(max_examples.max(1));
    let mut total = 0.0;
    for e in 0..n {
        if let Some(d) = pack_row_divergences(attention, mask, e)? {
            let s: f64 = (0..m)
                .flat_map(|i| (i + 1..m).map(move |j| (i, j)))
                .map(|(i, j)| d[i][j])
                .sum();
            total += s / (m * (m - 1) / 2) as f64;
        }
    }
    Ok(Some(total / n as f64))
}

/// Diagnostics of every layer of a traced forward pass.
pub fn diagnose(
    trace: &[LayerTrace],
    threshold: f64,
    max_examples: usize,
) -> Result<Vec<LayerDiagnostics>> {
    trace
        .iter()
        .enumerate()
        .map(|(layer, t)| {
            Ok(LayerDiagnostics {
                layer,
                memory_in: memory_stats(&t.memory_in, threshold, max_examples)?,
                memory_out: memory_stats(&t.memory_out, threshold, max_examples)?,
                pack_entropy: attention_entropy(&t.pack_attention, &t.pack_mask, max_examples)?,
                packed: Some(memory_stats(&t.packed, threshold, max_examples)?),
                pack_row_divergence: pack_row_divergence(
                    &t.pack_attention,
                    &t.pack_mask,
                    max_examples,
                )?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn orthogonal(m: usize, d: usize) -> Vec<Vec<f64>> {
        (0..m)
            .map(|i| (0..d).map(|j| if i == j { 2.0 } else { 0.0 }).collect())
            .collect()
    }

    #[test]
    fn all_equal_is_one_point_rank_one() {
        let p = vec![vec![0.3, -1.0, 2.0, 0.5]; 5];
        let (cos, dist, rank) = memory_stats_one(&p, DISTINCT_THRESHOLD);
        assert!((cos.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(dist, 1);
        assert!((rank - 1.0).abs() < 1e-9, "{rank}");
    }

    #[test]
    fn orthogonal_is_m_points_rank_m() {
        for (m, d) in [(4, 4), (3, 8), (6, 16)] {
            let p = orthogonal(m, d);
            let (cos, dist, rank) = memory_stats_one(&p, DISTINCT_THRESHOLD);
            assert!(cos.unwrap().abs() < 1e-12);
            assert_eq!(dist, m);
            assert!((rank - m as f64).abs() < 1e-9, "{rank}");
        }
    }

    #[test]
    fn two_clusters_and_scaled_copies() {
        // slots 0,1,2 are positive multiples of one direction, 3,4 of another
        let p = vec![
            vec![1.0, 0.0, 0.0],
            vec![2.0, 0.0, 0.0],
            vec![0.5, 0.001, 0.0],
            vec![0.0, 1.0, 1.0],
            vec![0.0, 3.0, 3.0],
        ];
        assert_eq!(distinct_vectors(&p, DISTINCT_THRESHOLD), 2);
        let r = effective_rank(&p);
        assert!(r > 1.0 && r < 2.0 + 1e-9, "{r}");
    }

    #[test]
    fn singular_values_match_a_known_matrix() {
        // [[3,0],[4,5]] has singular values 3√5 and √5
        let s = singular_values(&[vec![3.0, 0.0], vec![4.0, 5.0]]);
        assert!(
            (s[0] - 3.0 * 5f64.sqrt()).abs() < 1e-9 && (s[1] - 5f64.sqrt()).abs() < 1e-9,
            "{s:?}"
        );
        // tall matrix path (m > d)
        let s = singular_values(&[vec![1.0, 0.0], vec![0.0, 2.0], vec![0.0, 0.0]]);
        assert!((s[0] - 2.0).abs() < 1e-12 && (s[1] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn uniform_attention_has_entropy_one_and_one_hot_zero() {
        let dev = Device::Cpu;
        let l = 6;
        let mask = Tensor::new(&[[1f32, 1., 1., 1., 0., 0.]], &dev).unwrap();
        let uniform: Vec<f32> = (0..l).map(|t| if t < 4 { 0.25 } else { 0.0 }).collect();
        let a = Tensor::from_vec(uniform, (1, 1, 1, l), &dev).unwrap();
        assert!((attention_entropy(&a, &mask, 8).unwrap() - 1.0).abs() < 1e-6);
        let one_hot: Vec<f32> = (0..l).map(|t| if t == 2 { 1.0 } else { 0.0 }).collect();
        let a = Tensor::from_vec(one_hot, (1, 1, 1, l), &dev).unwrap();
        assert!(attention_entropy(&a, &mask, 8).unwrap().abs() < 1e-9);
    }

    #[test]
    fn identical_pack_rows_diverge_by_zero_and_disjoint_rows_by_one_bit() {
        let dev = Device::Cpu;
        // 1 example, 1 head, 3 slots over 4 positions (the last one padding)
        let rows = [
            [0.5f32, 0.5, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ];
        let a = Tensor::new(&rows, &dev)
            .unwrap()
            .reshape((1, 1, 3, 4))
            .unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 0.]], &dev).unwrap();
        let d = pack_row_divergences(&a, &mask, 0).unwrap().unwrap();
        assert!(d[0][1].abs() < 1e-12, "identical rows: {}", d[0][1]);
        assert!((d[0][2] - 1.0).abs() < 1e-12, "disjoint rows: {}", d[0][2]);
        assert_eq!(d[1][2], d[2][1]);
        let mean = pack_row_divergence(&a, &mask, 8).unwrap().unwrap();
        assert!((mean - 2.0 / 3.0).abs() < 1e-12, "{mean}");
        // every slot reading the same thing: 0; a single slot: undefined
        let same = Tensor::ones((2, 2, 5, 4), DType::F32, &dev)
            .unwrap()
            .affine(0.25, 0.0)
            .unwrap();
        let m2 = Tensor::ones((2, 4), DType::F32, &dev).unwrap();
        assert!(pack_row_divergence(&same, &m2, 8).unwrap().unwrap().abs() < 1e-12);
        let one = Tensor::ones((2, 2, 1, 4), DType::F32, &dev).unwrap();
        assert_eq!(pack_row_divergence(&one, &m2, 8).unwrap(), None);
    }

    #[test]
    fn batch_average_and_single_slot() {
        let dev = Device::Cpu;
        let mut v = Vec::new();
        for r in orthogonal(3, 3) {
            v.extend(r);
        }
        v.extend(vec![1.0; 9]);
        let t = Tensor::from_vec(v, (2, 3, 3), &dev).unwrap();
        let s = memory_stats(&t, DISTINCT_THRESHOLD, 8).unwrap();
        assert!((s.distinct - 2.0).abs() < 1e-12);
        assert!((s.effective_rank - 2.0).abs() < 1e-9);
        let one = Tensor::ones((2, 1, 4), DType::F32, &dev).unwrap();
        let s = memory_stats(&one, DISTINCT_THRESHOLD, 8).unwrap();
        assert_eq!(s.mean_cosine, None);
        assert_eq!(s.distinct, 1.0);
    }
}
