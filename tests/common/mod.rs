//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use convluna::*;

pub fn dims(d: usize, h: usize, f: usize) -> BlockDims {
    BlockDims {
        d_model: d,
        num_heads: h,
        ffn_dim: f,
        dropout: 0.0,
        attention_dropout: 0.0,
    }
}

pub fn luna_cfg(
    m: usize,
    projections: Projections,
    pack: ScaleConfig,
    unpack: ScaleConfig,
    filter: FilterConfig,
    masked: bool,
) -> LunaConfig {
    LunaConfig {
        memory_len: m,
        projections,
        pack_scale: pack,
        unpack_scale: unpack,
        filter,
        mask_padding: masked,
        residual_dropout: false,
        memory_init_std: None,
        memory_init_inv_sqrt_d: false,
    }
}

/// ConvLuna (authors' projections and scales) with the given filter.
pub fn convluna(m: usize, filter: FilterConfig, masked: bool) -> LunaConfig {
    luna_cfg(
        m,
        Projections::SharedNoValue,
        ScaleConfig::LearnedTemperature { init: 0.3 },
        ScaleConfig::None,
        filter,
        masked,
    )
}

/// Every filter variant worth checking.
pub fn filters() -> Vec<(&'static str, FilterConfig)> {
    vec![
        ("identity", FilterConfig::Identity),
        (
            "conv4s1",
            FilterConfig::Conv {
                kernel: 4,
                stride: 1,
                per_channel: false,
            },
        ),
        (
            "conv3s1",
            FilterConfig::Conv {
                kernel: 3,
                stride: 1,
                per_channel: false,
            },
        ),
        (
            "conv4s2",
            FilterConfig::Conv {
                kernel: 4,
                stride: 2,
                per_channel: false,
            },
        ),
        (
            "depthwise3s1",
            FilterConfig::Conv {
                kernel: 3,
                stride: 1,
                per_channel: true,
            },
        ),
        (
            "depthwise2s3",
            FilterConfig::Conv {
                kernel: 2,
                stride: 3,
                per_channel: true,
            },
        ),
        (
            "pool4s2",
            FilterConfig::MaxPool {
                kernel: 4,
                stride: 2,
            },
        ),
        (
            "pool3s1",
            FilterConfig::MaxPool {
                kernel: 3,
                stride: 1,
            },
        ),
    ]
}

/// Deterministic pseudo-random tensor (values in about [-1, 1]).
pub fn randn(shape: &[usize], seed: u64, dtype: DType, dev: &Device) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// 0/1 mask `[B, L]` with `lens[b]` valid positions.
pub fn mask(lens: &[usize], l: usize, dtype: DType, dev: &Device) -> Tensor {
    let v: Vec<f64> = lens
        .iter()
        .flat_map(|&n| (0..l).map(move |t| if t < n { 1.0 } else { 0.0 }))
        .collect();
    Tensor::from_vec(v, (lens.len(), l), dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

pub fn to_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Central finite differences against the analytic gradient for a sample of entries of every
/// variable. Panics with the variable name and index on a mismatch. Returns the largest error.
pub fn gradcheck(vars: &[(String, Var)], loss: impl Fn() -> Tensor, per_var: usize) -> f64 {
    let l = loss();
    let grads = l.backward().unwrap();
    let eps = 1e-6;
    let mut worst: f64 = 0.0;
    for (name, var) in vars {
        // an unused parameter has no recorded gradient: it must then be zero (checked below)
        let g = grads
            .get(var)
            .map(to_vec)
            .unwrap_or_else(|| vec![0.0; var.elem_count()]);
        let orig = to_vec(var.as_tensor());
        let n = orig.len();
        let step = (n / per_var).max(1);
        let mut idxs: Vec<usize> = (0..n).step_by(step).take(per_var).collect();
        if n > 1 {
            idxs.push(n - 1);
        }
        for idx in idxs {
            let mut v = orig.clone();
            v[idx] = orig[idx] + eps;
            var.set(&Tensor::from_vec(v.clone(), var.shape(), var.device()).unwrap())
                .unwrap();
            let lp = loss().to_scalar::<f64>().unwrap();
            v[idx] = orig[idx] - eps;
            var.set(&Tensor::from_vec(v, var.shape(), var.device()).unwrap())
                .unwrap();
            let lm = loss().to_scalar::<f64>().unwrap();
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), var.device()).unwrap())
                .unwrap();
            let num = (lp - lm) / (2.0 * eps);
            let err = (num - g[idx]).abs();
            let tol = 1e-6 + 1e-5 * num.abs().max(g[idx].abs());
            assert!(
                err <= tol,
                "`{name}`[{idx}]: finite difference {num:.9e}, analytic {:.9e}",
                g[idx]
            );
            worst = worst.max(err);
        }
    }
    worst
}

/// The device the tests run on: `CONVLUNA_TEST_DEVICE=cuda` (or `metal`) selects an
/// accelerator in a build with that feature; the default is the CPU.
pub fn test_device() -> Device {
    match std::env::var("CONVLUNA_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0)
            .expect("CONVLUNA_TEST_DEVICE=cuda needs a build with --features cuda and a GPU"),
        Ok("metal") => Device::new_metal(0)
            .expect("CONVLUNA_TEST_DEVICE=metal needs a build with --features metal"),
        _ => Device::Cpu,
    }
}

/// Compute dtype of the parity tests: `CONVLUNA_TEST_DTYPE=bf16` (GPU checks) or f32.
pub fn test_dtype() -> (DType, f64) {
    match std::env::var("CONVLUNA_TEST_DTYPE").as_deref() {
        // bf16 has an 8-bit mantissa: relative error ~4e-3 per op; through a block of
        // matmuls, softmaxes and LayerNorms the documented tolerance is 5e-2 of the scale.
        Ok("bf16") => (DType::BF16, 5e-2),
        _ => (DType::F32, 1e-5),
    }
}

static TMP_COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A fresh, empty folder under the system temp dir, unique per process and call.
pub fn tmpdir(tag: &str) -> std::path::PathBuf {
    let n = TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("convluna-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}
