//! The fused CPU kernels (`convluna::kernels`) against the composite Candle ops they replace:
//! values and gradients, in f64 (tight) and f32.

use candle_core::{DType, Device, Tensor, Var, D};
use convluna::kernels;

fn randn(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    // deterministic pseudo-random values without touching Candle's unseedable generator
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Gradients of `Σ f(vars) ⊙ r` for each var.
fn grads(vars: &[&Var], r: &Tensor, f: impl Fn() -> Tensor) -> (Tensor, Vec<Tensor>) {
    let y = f();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (
        y,
        vars.iter()
            .map(|v| g.get(v.as_tensor()).expect("gradient").clone())
            .collect(),
    )
}

fn composite_softmax(x: &Tensor) -> Tensor {
    let max = x.max_keepdim(D::Minus1).unwrap().detach();
    let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
    e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
}

#[test]
fn softmax_with_constant_scale_and_bias_matches_composite() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let x = Var::from_tensor(&randn(&[2, 3, 5, 19], 1, dtype)).unwrap();
        let mask = Tensor::new(&[[1f64; 19], [1f64; 19]], &Device::Cpu).unwrap();
        let mask = mask
            .narrow(1, 0, 12)
            .unwrap()
            .pad_with_zeros(1, 0, 7)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let bias = ((mask - 1.0).unwrap() * 1e9)
            .unwrap()
            .reshape((2, 1, 1, 19))
            .unwrap();
        let r = randn(&[2, 3, 5, 19], 2, dtype);
        let (yf, gf) = grads(&[&x], &r, || {
            kernels::softmax_scaled(x.as_tensor(), Ok(0.7), Some(&bias))
                .unwrap()
                .expect("fused")
        });
        let (yc, gc) = grads(&[&x], &r, || {
            composite_softmax(&(x.as_tensor() * 0.7).unwrap().broadcast_add(&bias).unwrap())
        });
        assert!(max_diff(&yf, &yc) < tol, "{dtype:?} values");
        assert!(max_diff(&gf[0], &gc[0]) < tol, "{dtype:?} gradient");
    }
}

#[test]
fn softmax_with_learned_scale_matches_composite() {
    let dtype = DType::F64;
    let x = Var::from_tensor(&randn(&[2, 4, 7, 11], 3, dtype)).unwrap();
    let tau = Var::from_tensor(&Tensor::new(&[0.3f64], &Device::Cpu).unwrap()).unwrap();
    let r = randn(&[2, 4, 7, 11], 4, dtype);
    let (yf, gf) = grads(&[&x, &tau], &r, || {
        let s = tau.as_tensor().neg().unwrap().exp().unwrap();
        kernels::softmax_scaled(x.as_tensor(), Err(&s), None)
            .unwrap()
            .expect("fused")
    });
    let (yc, gc) = grads(&[&x, &tau], &r, || {
        let s = tau.as_tensor().neg().unwrap().exp().unwrap();
        composite_softmax(&x.as_tensor().broadcast_mul(&s).unwrap())
    });
    assert!(max_diff(&yf, &yc) < 1e-12);
    assert!(max_diff(&gf[0], &gc[0]) < 1e-12, "dx");
    assert!(max_diff(&gf[1], &gc[1]) < 1e-12, "dτ");
}

#[test]
fn layer_norm_matches_composite() {
    for (dtype, tol) in [(DType::F64, 1e-11), (DType::F32, 1e-4)] {
        let x = Var::from_tensor(&randn(&[3, 9, 24], 5, dtype)).unwrap();
        let w = Var::from_tensor(&randn(&[24], 6, dtype)).unwrap();
        let b = Var::from_tensor(&randn(&[24], 7, dtype)).unwrap();
        let r = randn(&[3, 9, 24], 8, dtype);
        let vars = [&x, &w, &b];
        let (yf, gf) = grads(&vars, &r, || {
            kernels::layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6)
                .unwrap()
                .expect("fused")
        });
        let (yc, gc) = grads(&vars, &r, || {
            let x = x.as_tensor();
            let mu = x.mean_keepdim(D::Minus1).unwrap();
            let xc = x.broadcast_sub(&mu).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let y = xc
                .broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap())
                .unwrap();
            y.broadcast_mul(w.as_tensor())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap()
        });
        assert!(max_diff(&yf, &yc) < tol, "{dtype:?} values");
        for (i, (a, c)) in gf.iter().zip(&gc).enumerate() {
            assert!(
                max_diff(a, c) < tol,
                "{dtype:?} gradient {i}: {}",
                max_diff(a, c)
            );
        }
    }
}

#[test]
fn bias_gelu_matches_composite() {
    let dtype = DType::F64;
    let h = Var::from_tensor(&randn(&[2, 6, 16], 9, dtype)).unwrap();
    let b = Var::from_tensor(&randn(&[16], 10, dtype)).unwrap();
    let r = randn(&[2, 6, 16], 11, dtype);
    let (yf, gf) = grads(&[&h, &b], &r, || {
        kernels::bias_gelu(h.as_tensor(), b.as_tensor())
            .unwrap()
            .expect("fused")
    });
    let (yc, gc) = grads(&[&h, &b], &r, || {
        h.as_tensor()
            .broadcast_add(b.as_tensor())
            .unwrap()
            .gelu_erf()
            .unwrap()
    });
    assert!(max_diff(&yf, &yc) < 1e-12);
    // Candle's gelu_erf backward rounds 1/√(2π) to 0.398942; the kernel uses the exact value.
    assert!(
        max_diff(&gf[0], &gc[0]) < 1e-5,
        "dh {}",
        max_diff(&gf[0], &gc[0])
    );
    assert!(
        max_diff(&gf[1], &gc[1]) < 1e-4,
        "db {}",
        max_diff(&gf[1], &gc[1])
    );
}

#[test]
fn conv_time_matches_shifted_sums() {
    for (k, per_channel) in [(4usize, false), (3, true), (1, false), (5, false)] {
        let (bsz, h, l, dh) = (2, 3, 10, 4);
        let left = (k - 1) / 2;
        let rows = if per_channel { h * dh } else { h };
        let x = Var::from_tensor(&randn(&[bsz, h, l, dh], 12, DType::F64)).unwrap();
        let w = Var::from_tensor(&randn(&[rows, k], 13, DType::F64)).unwrap();
        let r = randn(&[bsz, h, l, dh], 14, DType::F64);
        let (yf, gf) = grads(&[&x, &w], &r, || {
            kernels::conv_time(x.as_tensor(), w.as_tensor(), left, per_channel)
                .unwrap()
                .expect("fused")
        });
        let (yc, gc) = grads(&[&x, &w], &r, || {
            let xp = x.as_tensor().pad_with_zeros(2, left, k - 1 - left).unwrap();
            let mut acc: Option<Tensor> = None;
            for j in 0..k {
                let wj = w.as_tensor().narrow(1, j, 1).unwrap();
                let wj = if per_channel {
                    wj.reshape((1, h, 1, dh)).unwrap()
                } else {
                    wj.reshape((1, h, 1, 1)).unwrap()
                };
                let t = xp.narrow(2, j, l).unwrap().broadcast_mul(&wj).unwrap();
                acc = Some(match acc {
                    None => t,
                    Some(a) => (a + t).unwrap(),
                });
            }
            acc.unwrap()
        });
        assert!(max_diff(&yf, &yc) < 1e-12, "k={k} values");
        assert!(max_diff(&gf[0], &gc[0]) < 1e-12, "k={k} dx");
        assert!(max_diff(&gf[1], &gc[1]) < 1e-12, "k={k} dw");
    }
}

#[test]
fn kernels_decline_what_they_do_not_cover() {
    let x = randn(&[2, 3, 4], 15, DType::F16);
    assert!(
        kernels::softmax_scaled(&x, Ok(1.0), None)
            .unwrap()
            .is_none(),
        "f16 stays composite"
    );
    let x = randn(&[2, 3, 4], 15, DType::F32);
    let bad_bias = randn(&[2, 3, 4], 16, DType::F32);
    assert!(
        kernels::softmax_scaled(&x, Ok(1.0), Some(&bad_bias))
            .unwrap()
            .is_none(),
        "full bias stays composite"
    );
}
