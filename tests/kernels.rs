//! The fused CPU kernels (`convluna::kernels`) against the composite Candle ops they replace:
//! values and gradients, in f64 (tight) and f32.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use convluna::filter::{ConvFilter, Filter, MaxPoolFilter};
use convluna::kernels::{self, Scale};

mod common;

use common::max_abs_diff as max_diff;

/// A tensor's values as the bits of their f64 images (f32 → f64 is exact), to compare bit for
/// bit.
fn bits(t: &Tensor) -> Vec<u64> {
    common::to_vec(t).iter().map(|v| v.to_bits()).collect()
}

/// Deterministic inputs in [−2, 2] (twice the range of the shared generator), on the CPU.
fn randn(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    (common::randn(shape, seed, dtype, &Device::Cpu) * 2.0).unwrap()
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
            kernels::softmax_scaled(x.as_tensor(), &Scale::Constant(0.7), Some(&bias))
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
        kernels::softmax_scaled(x.as_tensor(), &Scale::Tensor(s), None)
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

/// `(x − μ)/√(σ² + 10⁻⁶) · w + b` over the last dimension, from Candle's ops.
fn composite_layer_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let mu = x.mean_keepdim(D::Minus1).unwrap();
    let xc = x.broadcast_sub(&mu).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let y = xc
        .broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap())
        .unwrap();
    y.broadcast_mul(w).unwrap().broadcast_add(b).unwrap()
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
            composite_layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor())
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
fn add_layer_norm_matches_composite_and_the_unfused_kernel() {
    for (dtype, tol) in [(DType::F64, 1e-11), (DType::F32, 1e-4)] {
        let x = Var::from_tensor(&randn(&[3, 9, 24], 25, dtype)).unwrap();
        let res = Var::from_tensor(&randn(&[3, 9, 24], 26, dtype)).unwrap();
        let w = Var::from_tensor(&randn(&[24], 27, dtype)).unwrap();
        let b = Var::from_tensor(&randn(&[24], 28, dtype)).unwrap();
        let r = randn(&[3, 9, 24], 29, dtype);
        let vars = [&x, &res, &w, &b];
        let (yf, gf) = grads(&vars, &r, || {
            let (x, res) = (x.as_tensor(), res.as_tensor());
            kernels::add_layer_norm(x, res, w.as_tensor(), b.as_tensor(), 1e-6)
                .unwrap()
                .expect("fused")
        });
        // The sum, then the fused LayerNorm: the same arithmetic in the same order, so the
        // same bits.
        let (yu, gu) = grads(&vars, &r, || {
            let s = (x.as_tensor() + res.as_tensor()).unwrap();
            kernels::layer_norm(&s, w.as_tensor(), b.as_tensor(), 1e-6)
                .unwrap()
                .expect("fused")
        });
        // The composite reference.
        let (yc, gc) = grads(&vars, &r, || {
            let s = (x.as_tensor() + res.as_tensor()).unwrap();
            composite_layer_norm(&s, w.as_tensor(), b.as_tensor())
        });
        assert_eq!(
            max_diff(&yf, &yu),
            0.0,
            "{dtype:?} values against the unfused kernel"
        );
        assert!(max_diff(&yf, &yc) < tol, "{dtype:?} values");
        for (i, ((f, u), c)) in gf.iter().zip(&gu).zip(&gc).enumerate() {
            assert_eq!(
                max_diff(f, u),
                0.0,
                "{dtype:?} gradient {i} against the unfused kernel"
            );
            assert!(
                max_diff(f, c) < tol,
                "{dtype:?} gradient {i}: {}",
                max_diff(f, c)
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

/// `drop(softmax(s·q·kᵀ + bias))·v` from composite ops, with the keep-mask as a tensor.
fn composite_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    s: f64,
    bias: Option<&Tensor>,
    keep: Option<&Tensor>,
) -> (Tensor, Tensor) {
    let z = (q.matmul(&k.t().unwrap()).unwrap() * s).unwrap();
    let z = match bias {
        Some(b) => z.broadcast_add(b).unwrap(),
        None => z,
    };
    let w = composite_softmax(&z);
    let wd = match keep {
        Some(m) => (&w * m).unwrap(),
        None => w.clone(),
    };
    (wd.matmul(v).unwrap(), w)
}

/// `[B, n, h·d] → [B, h, n, d]` and back.
fn split(x: &Tensor, h: usize) -> Tensor {
    let (b, n, d) = x.dims3().unwrap();
    x.reshape((b, n, h, d / h))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
}
fn merge(x: &Tensor) -> Tensor {
    let (b, h, n, d) = x.dims4().unwrap();
    x.transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((b, n, h * d))
        .unwrap()
}

#[test]
fn attention_matches_composite_with_bias_and_dropout() {
    // n < L (pack: memory attends to the sequence) and n > L (unpack), odd sizes; the inputs
    // live in the merged layout [B, n, h·d] and the split layout is fed through split/merge.
    // n = 70 and L = 67 or 96: products of 64 rows or more reach the gemm crate's full-size
    // micro-kernels (and several column blocks), not only its edge cases. n = 300, L = 520 and
    // n = 530, L = 40 span several of the backward's 256 × 256 tiles, with ragged last tiles.
    let shapes = [
        (3usize, 13usize, 4usize, 5usize),
        (11, 4, 3, 2),
        (70, 67, 5, 3),
        (9, 96, 4, 2),
        (300, 520, 3, 2),
        (530, 40, 2, 3),
    ];
    for (n, l, dk, dv) in shapes {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            let (b, h) = (2, 3);
            let q = Var::from_tensor(&randn(&[b, n, h * dk], 21, dtype)).unwrap();
            let k = Var::from_tensor(&randn(&[b, l, h * dk], 22, dtype)).unwrap();
            let v = Var::from_tensor(&randn(&[b, l, h * dv], 23, dtype)).unwrap();
            let valid: Vec<f64> = (0..b * l)
                .map(|i| if i % l < l - 1 - i / l { 1.0 } else { 0.0 })
                .collect();
            let mask = Tensor::from_vec(valid, (b, l), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let bias = ((mask - 1.0).unwrap() * 1e9)
                .unwrap()
                .reshape((b, 1, 1, l))
                .unwrap();
            // a fixed keep-mask with p = 0.25
            let keep: Vec<f32> = (0..b * h * n * l)
                .map(|i| if (i * 7) % 4 == 0 { 0.0 } else { 4.0 / 3.0 })
                .collect();
            let keep_t = Tensor::from_vec(keep.clone(), (b, h, n, l), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let r = randn(&[b, n, h * dv], 24, dtype);
            let cases = [(false, false), (true, false), (true, true)];
            let layouts = [
                kernels::HeadLayout::Split,
                kernels::HeadLayout::Merged { heads: h },
            ];
            for ((with_bias, with_keep), layout) in cases
                .into_iter()
                .flat_map(|c| layouts.into_iter().map(move |lay| (c, lay)))
            {
                let bias = with_bias.then_some(&bias);
                // q, k, v in the kernel's layout
                let inputs = || {
                    let t = |x: &Var| match layout {
                        kernels::HeadLayout::Split => split(x.as_tensor(), h),
                        _ => x.as_tensor().clone(),
                    };
                    (t(&q), t(&k), t(&v))
                };
                // the fused kernel keeping its weights (into `wf`), or, without them, the
                // same output and gradients bit for bit
                let wf = std::cell::RefCell::new(None);
                let fused = |keep_weights: bool| {
                    grads(&[&q, &k, &v], &r, || {
                        let (qi, ki, vi) = inputs();
                        let kp = with_keep.then(|| keep.clone());
                        let y = if keep_weights {
                            let (y, w) = kernels::attention(&qi, &ki, &vi, layout, 0.6, bias, kp)
                                .unwrap()
                                .expect("fused");
                            *wf.borrow_mut() = Some(w);
                            y
                        } else {
                            kernels::attention_values(&qi, &ki, &vi, layout, 0.6, bias, kp)
                                .unwrap()
                                .expect("fused")
                        };
                        match layout {
                            kernels::HeadLayout::Split => merge(&y),
                            _ => y,
                        }
                    })
                };
                let (yf, gf) = fused(true);
                let (yv, gv) = fused(false);
                let wc = std::cell::RefCell::new(None);
                let (yc, gc) = grads(&[&q, &k, &v], &r, || {
                    let (y, w) = composite_attention(
                        &split(q.as_tensor(), h),
                        &split(k.as_tensor(), h),
                        &split(v.as_tensor(), h),
                        0.6,
                        bias,
                        with_keep.then_some(&keep_t),
                    );
                    *wc.borrow_mut() = Some(w);
                    merge(&y)
                });
                let what =
                    format!("{dtype:?} {layout:?} n={n} L={l} bias={with_bias} keep={with_keep}");
                assert!(max_diff(&yf, &yc) < tol, "{what}: values");
                assert!(
                    max_diff(wf.borrow().as_ref().unwrap(), wc.borrow().as_ref().unwrap()) < tol,
                    "{what}: weights"
                );
                for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
                    assert!(max_diff(&gf[i], &gc[i]) < tol, "{what}: {name}");
                }
                assert_eq!(bits(&yv), bits(&yf), "{what}: values without the weights");
                for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
                    assert_eq!(
                        bits(&gv[i]),
                        bits(&gf[i]),
                        "{what}: {name} without the weights"
                    );
                }
            }
        }
    }
}

#[test]
fn merged_conv_matches_masked_split_conv() {
    // [B, L, h·d_h] with the mask folded in against mask-multiply, split heads, conv_time.
    let (b, l, h, dh, k) = (2usize, 9usize, 3usize, 4usize, 4usize);
    for per_channel in [false, true] {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let x = Var::from_tensor(&randn(&[b, l, h * dh], 41, dtype)).unwrap();
            let rows = if per_channel { h * dh } else { h };
            let w = Var::from_tensor(&randn(&[rows, k], 42, dtype)).unwrap();
            let valid: Vec<f64> = (0..b * l)
                .map(|i| if i % l < l - 3 * (i / l) { 1.0 } else { 0.0 })
                .collect();
            let mask = Tensor::from_vec(valid, (b, l), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let r = randn(&[b, l, h * dh], 43, dtype);
            for with_mask in [false, true] {
                let m = with_mask.then_some(&mask);
                let (yf, gf) = grads(&[&x, &w], &r, || {
                    kernels::conv_time_merged(x.as_tensor(), w.as_tensor(), 1, h, per_channel, m)
                        .unwrap()
                        .expect("fused")
                });
                let (yc, gc) = grads(&[&x, &w], &r, || {
                    let xm = match m {
                        Some(m) => x
                            .as_tensor()
                            .broadcast_mul(&m.unsqueeze(2).unwrap())
                            .unwrap(),
                        None => x.as_tensor().clone(),
                    };
                    let y = kernels::conv_time(&split(&xm, h), w.as_tensor(), 1, per_channel)
                        .unwrap()
                        .expect("fused");
                    merge(&y)
                });
                let what = format!("{dtype:?} per_channel={per_channel} mask={with_mask}");
                assert!(max_diff(&yf, &yc) < tol, "{what}: values");
                assert!(max_diff(&gf[0], &gc[0]) < tol, "{what}: dx");
                assert!(max_diff(&gf[1], &gc[1]) < tol, "{what}: dw");
            }
        }
    }
}

/// The composite filter on split heads: masked mode pads for coverage, then `forward_masked`.
fn composite_filter(f: &dyn Filter, x: &Tensor, h: usize, mask: Option<&Tensor>) -> Tensor {
    match mask {
        None => merge(&f.forward(&split(x, h)).unwrap()),
        Some(m) => {
            let pad = f.masked_right_pad(x.dim(1).unwrap());
            let x = x.pad_with_zeros(1, 0, pad).unwrap();
            let m = m.pad_with_zeros(1, 0, pad).unwrap();
            merge(&f.forward_masked(&split(&x, h), &m).unwrap())
        }
    }
}

#[test]
fn merged_pool_and_strided_conv_match_the_composite_filters() {
    // Lengths 11, 6 and 1: windows of padding only, windows half padding, coverage padding.
    let (b, l, h, dh) = (3usize, 11usize, 2usize, 3usize);
    let lens = [11usize, 6, 1];
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let x = Var::from_tensor(&randn(&[b, l, h * dh], 51, dtype)).unwrap();
        let valid: Vec<f64> = (0..b * l)
            .map(|i| if i % l < lens[i / l] { 1.0 } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(valid, (b, l), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        for (k, s) in [
            (2usize, 2usize),
            (3, 1),
            (4, 2),
            (3, 3),
            (5, 2),
            (4, 1),
            (1, 1),
        ] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, dtype, &Device::Cpu);
            let filters: Vec<(String, Box<dyn Filter>, Option<&str>)> = vec![
                (
                    format!("pool k={k} s={s}"),
                    Box::new(MaxPoolFilter::new(k, s).unwrap()),
                    None,
                ),
                (
                    format!("conv k={k} s={s}"),
                    Box::new(ConvFilter::new(k, s, false, h, dh, vb.pp("head")).unwrap()),
                    Some("head.weight"),
                ),
                (
                    format!("per-channel conv k={k} s={s}"),
                    Box::new(ConvFilter::new(k, s, true, h, dh, vb.pp("chan")).unwrap()),
                    Some("chan.weight"),
                ),
            ];
            for (name, f, weight) in &filters {
                let mut vars = vec![x.clone()];
                if let Some(w) = weight {
                    vars.push(vm.data().lock().unwrap()[*w].clone());
                }
                let vars: Vec<&Var> = vars.iter().collect();
                for m in [None, Some(&mask)] {
                    let what = format!("{dtype:?} {name} masked={}", m.is_some());
                    let fused = || {
                        f.forward_merged(x.as_tensor(), h, m)
                            .unwrap()
                            .unwrap_or_else(|| panic!("{what}: no fused kernel"))
                    };
                    let shape = fused().dims().to_vec();
                    let r = randn(&shape, 52, dtype);
                    let (yf, gf) = grads(&vars, &r, fused);
                    let (yc, gc) = grads(&vars, &r, || {
                        composite_filter(f.as_ref(), x.as_tensor(), h, m)
                    });
                    assert_eq!(yf.dims(), yc.dims(), "{what}: shape");
                    assert!(
                        max_diff(&yf, &yc) < tol,
                        "{what}: values {}",
                        max_diff(&yf, &yc)
                    );
                    for (i, (a, c)) in gf.iter().zip(&gc).enumerate() {
                        assert!(
                            max_diff(a, c) < tol,
                            "{what}: gradient {i} {}",
                            max_diff(a, c)
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn merged_pool_skips_padding_and_sends_a_tie_to_the_first_position() {
    let x = Var::from_tensor(
        &Tensor::from_vec(vec![1.0f64, 3.0, 3.0, 2.0], (1, 4, 1), &Device::Cpu).unwrap(),
    )
    .unwrap();
    let g = |mask: Option<&Tensor>| {
        let y = kernels::max_pool_merged(x.as_tensor(), 2, 1, 3, mask)
            .unwrap()
            .expect("fused");
        let dx = y.sum_all().unwrap().backward().unwrap();
        (
            y.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            dx.get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
        )
    };
    // windows [1,3] [3,3] [3,2]: the tie in the second goes to position 1
    assert_eq!(g(None), (vec![3.0, 3.0, 3.0], vec![0.0, 2.0, 1.0, 0.0]));
    // position 1 is padding: windows {1} {3} {3,2}
    let m = Tensor::from_vec(vec![1.0f64, 0.0, 1.0, 1.0], (1, 4), &Device::Cpu).unwrap();
    assert_eq!(g(Some(&m)), (vec![1.0, 3.0, 3.0], vec![1.0, 0.0, 2.0, 0.0]));
    // all padding: zeros, no gradient
    let m = Tensor::zeros((1, 4), DType::F64, &Device::Cpu).unwrap();
    assert_eq!(g(Some(&m)), (vec![0.0; 3], vec![0.0; 4]));
    // a mask of another shape, or a window starting past the end: not covered
    let bad = Tensor::ones((1, 3), DType::F64, &Device::Cpu).unwrap();
    assert!(kernels::max_pool_merged(x.as_tensor(), 2, 1, 3, Some(&bad))
        .unwrap()
        .is_none());
    assert!(kernels::max_pool_merged(x.as_tensor(), 2, 2, 3, None)
        .unwrap()
        .is_none());
}

#[test]
fn merged_pool_gradient_goes_to_the_first_valid_winner_on_many_ties() {
    // Values from {0, 1, 2}: most windows hold ties. The reference is the definition, written
    // out per element: the first valid position of the window that attains its max.
    let (b, l, d) = (2usize, 13usize, 70usize); // d > 64: two channel passes
    let xs: Vec<f64> = (0..b * l * d)
        .map(|i| ((i * 7 + i / 5) % 3) as f64)
        .collect();
    let x =
        Var::from_tensor(&Tensor::from_vec(xs.clone(), (b, l, d), &Device::Cpu).unwrap()).unwrap();
    let valid: Vec<f64> = (0..b * l)
        .map(|i| {
            if (i % 4 == 1) || (i / l == 1 && i % l > 9) {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(valid.clone(), (b, l), &Device::Cpu).unwrap();
    for (k, s) in [(4usize, 2usize), (3, 1), (2, 2), (5, 3)] {
        for masked in [false, true] {
            let ok = |bi: usize, src: usize| !masked || valid[bi * l + src] != 0.0;
            let out = (l - 1) / s + 1;
            let gs: Vec<f64> = (0..b * out * d)
                .map(|i| 1.0 + (i % 11) as f64 / 8.0)
                .collect();
            let g = Tensor::from_vec(gs.clone(), (b, out, d), &Device::Cpu).unwrap();
            let y = kernels::max_pool_merged(x.as_tensor(), k, s, out, masked.then_some(&mask))
                .unwrap()
                .expect("fused");
            let dx = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = dx.get(x.as_tensor()).unwrap().flatten_all().unwrap();
            let (y, dx) = (
                y.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                dx.to_vec1::<f64>().unwrap(),
            );
            let (mut want_y, mut want_dx) = (vec![0.0; b * out * d], vec![0.0; b * l * d]);
            for bi in 0..b {
                for t in 0..out {
                    for c in 0..d {
                        let mut best: Option<usize> = None;
                        for src in (t * s..(t * s + k).min(l)).filter(|&p| ok(bi, p)) {
                            let v = xs[(bi * l + src) * d + c];
                            if best.is_none_or(|w| v > xs[(bi * l + w) * d + c]) {
                                best = Some(src);
                            }
                        }
                        if let Some(w) = best {
                            let o = (bi * out + t) * d + c;
                            want_y[o] = xs[(bi * l + w) * d + c];
                            want_dx[(bi * l + w) * d + c] += gs[o];
                        }
                    }
                }
            }
            assert_eq!(y, want_y, "k={k} s={s} masked={masked}: values");
            assert_eq!(dx, want_dx, "k={k} s={s} masked={masked}: gradient");
        }
    }
}

#[test]
fn linear_matches_matmul_with_and_without_bias() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let x = Var::from_tensor(&randn(&[2, 7, 5], 31, dtype)).unwrap();
        let w = Var::from_tensor(&randn(&[9, 5], 32, dtype)).unwrap();
        let b = Var::from_tensor(&randn(&[9], 33, dtype)).unwrap();
        let r = randn(&[2, 7, 9], 34, dtype);
        let (yf, gf) = grads(&[&x, &w, &b], &r, || {
            kernels::linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))
                .unwrap()
                .expect("fused")
        });
        let (yc, gc) = grads(&[&x, &w, &b], &r, || {
            x.as_tensor()
                .broadcast_matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap()
        });
        assert!(max_diff(&yf, &yc) < tol, "{dtype:?} values");
        for (i, name) in ["dx", "dW", "db"].iter().enumerate() {
            assert!(max_diff(&gf[i], &gc[i]) < tol, "{dtype:?} {name}");
        }
        let (yf, gf) = grads(&[&x, &w], &r, || {
            kernels::linear(x.as_tensor(), w.as_tensor(), None)
                .unwrap()
                .expect("fused")
        });
        let (yc, gc) = grads(&[&x, &w], &r, || {
            x.as_tensor()
                .broadcast_matmul(&w.as_tensor().t().unwrap())
                .unwrap()
        });
        assert!(max_diff(&yf, &yc) < tol, "{dtype:?} values, no bias");
        assert!(max_diff(&gf[0], &gc[0]) < tol, "{dtype:?} dx, no bias");
        assert!(max_diff(&gf[1], &gc[1]) < tol, "{dtype:?} dW, no bias");
    }
    // a shape mismatch is an error, not a panic
    let x = randn(&[2, 4], 35, DType::F32);
    let w = randn(&[3, 5], 36, DType::F32);
    assert!(kernels::linear(&x, &w, None).is_err());
}

#[test]
fn mask_rows_matches_broadcast_mul_bit_for_bit_and_forms_no_mask_gradient() {
    for dtype in [DType::F64, DType::F32] {
        // rows of 37 (more rows than one parallel task holds), negative values under zeros
        // of the mask (the sign of the zero must match too)
        let (b, l, d) = (3usize, 300usize, 37usize);
        let x = Var::from_tensor(&randn(&[b, l, d], 61, dtype)).unwrap();
        let m: Vec<f64> = (0..b * l)
            .map(|i| ((i * 7) % 5 != 0) as u8 as f64)
            .collect();
        let m = Tensor::from_vec(m, (b, l), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let mv = Var::from_tensor(&m).unwrap();
        let r = randn(&[b, l, d], 62, dtype);
        let (yf, gf) = grads(&[&x], &r, || {
            kernels::mask_rows(x.as_tensor(), mv.as_tensor())
                .unwrap()
                .expect("fused")
        });
        let (yc, gc) = grads(&[&x], &r, || {
            x.as_tensor()
                .broadcast_mul(&m.unsqueeze(2).unwrap())
                .unwrap()
        });
        assert_eq!(bits(&yf), bits(&yc), "{dtype:?} values");
        assert_eq!(bits(&gf[0]), bits(&gc[0]), "{dtype:?} dx");
        // the mask is a constant: even a Var mask gets no gradient
        let y = kernels::mask_rows(x.as_tensor(), mv.as_tensor())
            .unwrap()
            .expect("fused");
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(mv.as_tensor()).is_none(), "{dtype:?} mask gradient");
        // the ops-level function agrees with the kernel and takes any mask dtype
        let yo = convluna::ops::mask_rows(x.as_tensor(), &m.to_dtype(DType::U8).unwrap()).unwrap();
        assert_eq!(bits(&yo), bits(&yc), "{dtype:?} ops::mask_rows");
    }
    // what the kernel does not cover: other dtypes, mismatched shapes
    let x = randn(&[2, 3, 4], 63, DType::F16);
    let m = Tensor::ones((2, 3), DType::F16, &Device::Cpu).unwrap();
    assert!(kernels::mask_rows(&x, &m).unwrap().is_none(), "f16");
    let x = randn(&[2, 3, 4], 63, DType::F32);
    let m = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(
        kernels::mask_rows(&x, &m).unwrap().is_none(),
        "mask [2, 4] for x [2, 3, 4]"
    );
    assert!(
        convluna::ops::mask_rows(&x, &m).is_err(),
        "the composite path errors"
    );
}

#[test]
fn ffn_matches_composite_with_and_without_dropout() {
    let (rows, d, f) = (7usize, 5usize, 9usize);
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
        let x = Var::from_tensor(&randn(&[1, rows, d], 51, dtype)).unwrap();
        let w1 = Var::from_tensor(&randn(&[f, d], 52, dtype)).unwrap();
        let b1 = Var::from_tensor(&randn(&[f], 53, dtype)).unwrap();
        let w2 = Var::from_tensor(&randn(&[d, f], 54, dtype)).unwrap();
        let b2 = Var::from_tensor(&randn(&[d], 55, dtype)).unwrap();
        let r = randn(&[1, rows, d], 56, dtype);
        let keep: Vec<f32> = (0..rows * f)
            .map(|i| if (i * 5) % 3 == 0 { 0.0 } else { 1.5 })
            .collect();
        let keep_t = Tensor::from_vec(keep.clone(), (1, rows, f), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let vars = [&x, &w1, &b1, &w2, &b2];
        for with_keep in [false, true] {
            let (yf, gf) = grads(&vars, &r, || {
                let cat = |w: &Var, b: &Var| {
                    Tensor::cat(&[w.as_tensor(), &b.as_tensor().unsqueeze(1).unwrap()], 1).unwrap()
                };
                kernels::ffn(
                    x.as_tensor(),
                    &cat(&w1, &b1),
                    &cat(&w2, &b2),
                    with_keep.then(|| keep.clone()),
                )
                .unwrap()
                .expect("fused")
            });
            let (yc, gc) = grads(&vars, &r, || {
                let lin = |x: &Tensor, w: &Var, b: &Var| {
                    x.broadcast_matmul(&w.as_tensor().t().unwrap())
                        .unwrap()
                        .broadcast_add(b.as_tensor())
                        .unwrap()
                };
                // exact GELU from erf (Candle's gelu_erf backward rounds 1/√(2π))
                let z = lin(x.as_tensor(), &w1, &b1);
                let cdf = ((&z / 2f64.sqrt()).unwrap().erf().unwrap() + 1.0).unwrap();
                let a = ((&z * 0.5).unwrap() * cdf).unwrap();
                let a = if with_keep { (a * &keep_t).unwrap() } else { a };
                lin(&a, &w2, &b2)
            });
            let what = format!("{dtype:?} keep={with_keep}");
            assert!(max_diff(&yf, &yc) < tol, "{what}: values");
            for (i, name) in ["dx", "dW1", "db1", "dW2", "db2"].iter().enumerate() {
                assert!(max_diff(&gf[i], &gc[i]) < tol, "{what}: {name}");
            }
        }
    }
}

#[test]
fn kernels_decline_what_they_do_not_cover() {
    let x = randn(&[2, 3, 4], 15, DType::F16);
    assert!(
        kernels::softmax_scaled(&x, &Scale::Constant(1.0), None)
            .unwrap()
            .is_none(),
        "f16 stays composite"
    );
    let x = randn(&[2, 3, 4], 15, DType::F32);
    let bad_bias = randn(&[2, 3, 4], 16, DType::F32);
    assert!(
        kernels::softmax_scaled(&x, &Scale::Constant(1.0), Some(&bad_bias))
            .unwrap()
            .is_none(),
        "full bias stays composite"
    );
    let q = randn(&[1, 2, 3, 4], 17, DType::F16);
    assert!(
        kernels::attention(&q, &q, &q, kernels::HeadLayout::Split, 1.0, None, None)
            .unwrap()
            .is_none(),
        "f16 attention stays composite"
    );
    let q = randn(&[1, 2, 3, 4], 18, DType::F32);
    assert!(
        kernels::attention(
            &q,
            &q,
            &q,
            kernels::HeadLayout::Split,
            1.0,
            None,
            Some(vec![1.0; 5])
        )
        .unwrap()
        .is_none(),
        "a keep-mask of the wrong length stays composite"
    );
    let (x, w) = (
        randn(&[2, 3, 4], 19, DType::F32),
        randn(&[4], 20, DType::F32),
    );
    for (r, what) in [
        (randn(&[2, 1, 4], 21, DType::F32), "a broadcast residual"),
        (
            randn(&[2, 3, 4], 21, DType::F64),
            "a residual of another dtype",
        ),
    ] {
        assert!(
            kernels::add_layer_norm(&x, &r, &w, &w, 1e-6)
                .unwrap()
                .is_none(),
            "{what} stays composite"
        );
    }
}
