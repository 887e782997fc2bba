//! One thread: gemm 0.19 against a plain AVX-512 tile (12 rows × 32 columns, no packing, each
//! output summed over k in order) on the attention's thin products, row-major, best of 10.
//! Needs a CPU with AVX-512F.

use std::arch::x86_64::*;
use std::time::Instant;

/// One product of a batch: `(a, b, c)`.
type Product<'a> = &'a dyn Fn(&[f32], &[f32], &mut [f32]);

#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize>(
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    k: usize,
) {
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    for p in 0..k {
        let b0 = _mm512_loadu_ps(b.add(p * ldb));
        let b1 = _mm512_loadu_ps(b.add(p * ldb + 16));
        for r in 0..R {
            let av = _mm512_set1_ps(*a.add(r * lda + p));
            acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
            acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(c.add(r * ldc), acc0[r]);
        _mm512_storeu_ps(c.add(r * ldc + 16), acc1[r]);
    }
}

/// C[m×n] = A[m×k]·B[k×n], row-major, n % 32 == 0.
unsafe fn mm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    const R: usize = 12;
    for j in (0..n).step_by(32) {
        let mut i = 0;
        while i + R <= m {
            tile::<R>(
                a.as_ptr().add(i * k),
                k,
                b.as_ptr().add(j),
                n,
                c.as_mut_ptr().add(i * n + j),
                n,
                k,
            );
            i += R;
        }
        while i < m {
            tile::<1>(
                a.as_ptr().add(i * k),
                k,
                b.as_ptr().add(j),
                n,
                c.as_mut_ptr().add(i * n + j),
                n,
                k,
            );
            i += 1;
        }
    }
}

fn gemm_mm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

fn main() {
    assert!(
        is_x86_feature_detected!("avx512f"),
        "this experiment needs AVX-512F"
    );
    for &(m, k, n) in &[
        (256usize, 32usize, 256usize),
        (4096, 32, 256),
        (256, 4096, 32),
        (4096, 256, 32),
        (256, 256, 32),
    ] {
        let batch = ((1usize << 27) / (m * k * n)).max(1);
        let a: Vec<f32> = (0..batch * m * k)
            .map(|i| ((i * 7919 % 1000) as f32) / 1000.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..batch * k * n)
            .map(|i| ((i * 104729 % 1000) as f32) / 1000.0 - 0.5)
            .collect();
        let mut c1 = vec![0f32; batch * m * n];
        let mut c2 = vec![0f32; batch * m * n];
        let run = |f: Product, c: &mut [f32]| {
            let mut best = f64::MAX;
            for _ in 0..10 {
                let t = Instant::now();
                for s in 0..batch {
                    f(
                        &a[s * m * k..(s + 1) * m * k],
                        &b[s * k * n..(s + 1) * k * n],
                        &mut c[s * m * n..(s + 1) * m * n],
                    );
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            2.0 * (batch * m * k * n) as f64 / best / 1e9
        };
        let g_gemm = run(&|a, b, c| gemm_mm(m, k, n, a, b, c), &mut c1);
        let g_own = run(&|a, b, c| unsafe { mm(m, k, n, a, b, c) }, &mut c2);
        let g_gemm2 = run(&|a, b, c| gemm_mm(m, k, n, a, b, c), &mut c1);
        let maxdiff = c1
            .iter()
            .zip(&c2)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        println!("{m}x{k}x{n} batch {batch}: gemm {g_gemm:.1} / {g_gemm2:.1}  own {g_own:.1} GFLOP/s (1 thread)  max|diff| {maxdiff:.2e}");
    }
}
