//! Candle 0.11 pitfalls the crate designs around. Each `upstream_*` test pins the upstream
//! behaviour (if one starts failing after a Candle upgrade, the bug was fixed and the
//! workaround can be revisited); each `ours_*` test shows the crate's replacement is right.

mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::*;
use convluna::layers::{softmax_last_dim, LayerNorm};
use convluna::*;

fn x64(shape: &[usize], seed: u64) -> Var {
    Var::from_tensor(&randn(shape, seed, DType::F64, &Device::Cpu)).unwrap()
}

#[test]
fn upstream_softmax_last_dim_records_no_gradient() {
    let x = x64(&[2, 5], 1);
    let r = randn(&[2, 5], 2, DType::F64, &Device::Cpu);
    let y = candle_nn::ops::softmax_last_dim(x.as_tensor()).unwrap();
    let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(
        g.get(&x).is_none(),
        "Candle's softmax_last_dim now records a gradient"
    );
}

#[test]
fn ours_softmax_matches_and_has_the_right_gradient() {
    let x = x64(&[2, 5], 1);
    let r = randn(&[2, 5], 2, DType::F64, &Device::Cpu);
    let a = softmax_last_dim(x.as_tensor()).unwrap();
    let b = candle_nn::ops::softmax_last_dim(x.as_tensor()).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-12);
    gradcheck(
        &[("x".into(), x.clone())],
        || {
            (softmax_last_dim(x.as_tensor()).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
        },
        10,
    );
}

#[test]
fn upstream_layer_norm_records_no_gradient() {
    let f32v = |shape: &[usize], seed| {
        Var::from_tensor(&randn(shape, seed, DType::F32, &Device::Cpu)).unwrap()
    };
    let (x, w, b) = (f32v(&[3, 8], 1), f32v(&[8], 2), f32v(&[8], 3));
    let y = candle_nn::ops::layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6).unwrap();
    let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(
        g.get(&x).is_none() && g.get(&w).is_none(),
        "Candle's layer_norm now records gradients"
    );
}

#[test]
fn ours_layer_norm_matches_and_has_the_right_gradient() {
    let x = x64(&[3, 8], 1);
    let store = ParamStore::new(1);
    let ln = LayerNorm::new(8, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
    for (_, v) in store.vars() {
        v.set(&randn(v.dims(), 5, DType::F64, &Device::Cpu))
            .unwrap();
    }
    let (w, b) = (store.get("weight").unwrap(), store.get("bias").unwrap());
    use candle_core::Module;
    let a = ln.forward(x.as_tensor()).unwrap();
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let c = candle_nn::ops::layer_norm(
        &f(x.as_tensor()),
        &f(w.as_tensor()),
        &f(b.as_tensor()),
        1e-6,
    )
    .unwrap();
    assert!(max_abs_diff(&a, &c) < 1e-5);
    let r = randn(&[3, 8], 9, DType::F64, &Device::Cpu);
    let mut vars = store.vars();
    vars.push(("x".into(), x.clone()));
    gradcheck(
        &vars,
        || {
            (ln.forward(x.as_tensor()).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
        },
        8,
    );
}

/// Largest |analytic − finite difference| of d/dθ Σ(conv1d(x, w)·r) over every entry of θ.
fn conv1d_grad_error(batch: usize, out_ch: usize, padding: usize, wrt_kernel: bool) -> f64 {
    let dev = Device::Cpu;
    let x = x64(&[batch, 2, 7], 1);
    let w = x64(&[out_ch, 2, 3], 2);
    let lo = 7 + 2 * padding - 2;
    let r = randn(&[batch, out_ch, lo], 3, DType::F64, &dev);
    let loss = |x: &Tensor, w: &Tensor| {
        (x.conv1d(w, padding, 1, 1, 1).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let g = loss(x.as_tensor(), w.as_tensor()).backward().unwrap();
    let (var, other) = if wrt_kernel { (&w, &x) } else { (&x, &w) };
    let ga = to_vec(g.get(var).unwrap());
    let base = to_vec(var.as_tensor());
    let mut worst: f64 = 0.0;
    for i in 0..base.len() {
        let mut v = base.clone();
        v[i] += 1e-6;
        let tp = Tensor::from_vec(v.clone(), var.shape(), &dev).unwrap();
        v[i] -= 2e-6;
        let tm = Tensor::from_vec(v, var.shape(), &dev).unwrap();
        let (lp, lm) = if wrt_kernel {
            (loss(other.as_tensor(), &tp), loss(other.as_tensor(), &tm))
        } else {
            (loss(&tp, other.as_tensor()), loss(&tm, other.as_tensor()))
        };
        let fd = (lp.to_scalar::<f64>().unwrap() - lm.to_scalar::<f64>().unwrap()) / 2e-6;
        worst = worst.max((fd - ga[i]).abs());
    }
    worst
}

#[test]
fn upstream_conv1d_gradients_are_wrong_for_batches() {
    let k = conv1d_grad_error(2, 3, 1, true);
    let i = conv1d_grad_error(2, 3, 0, false);
    eprintln!(
        "conv1d kernel-grad error (B=2, 3 out ch): {k:.3e}; input-grad error (B=2, pad 0): {i:.3e}"
    );
    assert!(
        k > 1e-3 || i > 1e-3,
        "Candle's conv1d gradients now agree with finite differences"
    );
    // with batch 1 and one output channel they are right, so the check above is meaningful
    assert!(conv1d_grad_error(1, 1, 1, true) < 1e-6);
}

#[test]
fn upstream_max_pool2d_backward_is_scaled_or_fails() {
    let x = x64(&[1, 1, 1, 8], 4);
    // kernel = stride = 2 along time: each max should get gradient 1
    let y = x.as_tensor().max_pool2d((1, 2)).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let total: f64 = to_vec(g.get(&x).unwrap()).iter().sum();
    eprintln!("max_pool2d gradient mass: {total} (should be 4)");
    let scaled = (total - 4.0).abs() > 1e-9;
    // kernel ≠ stride
    let y2 = x.as_tensor().max_pool2d_with_stride((1, 3), (1, 2));
    let failed = match y2 {
        Err(_) => true,
        Ok(y2) => y2.sum_all().unwrap().backward().is_err(),
    };
    assert!(
        scaled || failed,
        "Candle's max_pool2d backward now looks right"
    );
}

#[test]
fn ours_pooling_gives_each_max_its_full_gradient() {
    let x = x64(&[1, 1, 8, 1], 4);
    let f = MaxPoolFilter::new(2, 2).unwrap();
    let y = f.forward(x.as_tensor()).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let total: f64 = to_vec(g.get(&x).unwrap()).iter().sum();
    assert!((total - 4.0).abs() < 1e-12, "{total}");
}
