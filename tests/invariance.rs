//! Invariances: appending padding, permuting the batch, m = 1, short sequences, dtypes.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use convluna::*;

const D: usize = 16;
const H: usize = 4;
const F: usize = 24;

fn block(cfg: &LunaConfig, dtype: DType) -> LunaBlock {
    LunaBlock::new(
        cfg,
        &dims(D, H, F),
        ParamStore::new(5).var_builder(dtype, &Device::Cpu),
    )
    .unwrap()
}

#[test]
fn appending_padding_changes_nothing_at_real_tokens() {
    let dev = Device::Cpu;
    for (name, f) in filters() {
        let blk = block(&convluna(4, f.clone(), true), DType::F32);
        let n = 9;
        let x = randn(&[1, n, D], 1, DType::F32, &dev);
        let p = randn(&[1, 4, D], 2, DType::F32, &dev);
        let m = mask(&[n], n, DType::F32, &dev);
        let a = blk.forward_t(&x, &p, Some(&m), false).unwrap();
        for extra in [1usize, 3, 8] {
            // garbage (not zeros) at the padded positions: the mask alone must exclude them
            let pad = randn(&[1, extra, D], 40 + extra as u64, DType::F32, &dev)
                .affine(5.0, 1.0)
                .unwrap();
            let xp = Tensor::cat(&[&x, &pad], 1).unwrap();
            let mp = mask(&[n], n + extra, DType::F32, &dev);
            let b = blk.forward_t(&xp, &p, Some(&mp), false).unwrap();
            let dx = max_abs_diff(&a.x, &b.x.narrow(1, 0, n).unwrap());
            let dm = max_abs_diff(&a.memory, &b.memory);
            assert!(
                dx < 1e-5 && dm < 1e-5,
                "{name} +{extra} pads: Δx {dx:.2e}, Δmemory {dm:.2e}"
            );
        }
    }
}

#[test]
fn unmasked_mode_lets_padding_in() {
    // The authors' behaviour: with masking off, padding changes the memory.
    let dev = Device::Cpu;
    let blk = block(
        &convluna(4, FilterConfig::authors_conv(), false),
        DType::F32,
    );
    let x = randn(&[1, 6, D], 1, DType::F32, &dev);
    let p = randn(&[1, 4, D], 2, DType::F32, &dev);
    let a = blk
        .forward_t(&x, &p, Some(&mask(&[6], 6, DType::F32, &dev)), false)
        .unwrap();
    let xp = Tensor::cat(
        &[&x, &Tensor::zeros((1, 3, D), DType::F32, &dev).unwrap()],
        1,
    )
    .unwrap();
    let b = blk
        .forward_t(&xp, &p, Some(&mask(&[6], 9, DType::F32, &dev)), false)
        .unwrap();
    assert!(max_abs_diff(&a.memory, &b.memory) > 1e-4);
}

#[test]
fn encoder_padding_invariance_with_cls() {
    let dev = Device::Cpu;
    for preset in [
        BlockPreset::ConvlunaMasked,
        BlockPreset::Luna,
        BlockPreset::LunaMa,
        BlockPreset::Transformer,
    ] {
        let cfg = EncoderConfig::tokens(12, 16).with_stack(
            StackConfig::default()
                .with_block(preset.block(3))
                .with_d_model(D)
                .with_heads(H)
                .with_ffn_dim(F)
                .with_layers(2)
                .with_dropout(0.1),
        );
        let enc = Encoder::new(&cfg, ParamStore::new(3).var_builder(DType::F32, &dev)).unwrap();
        let ids = Tensor::new(&[[3u32, 5, 7, 1, 11, 2]], &dev).unwrap();
        let ids_p = Tensor::new(&[[3u32, 5, 7, 1, 11, 2, 0, 0, 0, 0]], &dev).unwrap();
        let a = enc.encode(&ids, None, false).unwrap();
        let b = enc.encode(&ids_p, None, false).unwrap();
        let d = max_abs_diff(&a.hidden, &b.hidden.narrow(1, 0, 7).unwrap());
        assert!(d < 1e-5, "{preset:?}: {d}");
        if let (Some(ma), Some(mb)) = (a.memory, b.memory) {
            assert!(max_abs_diff(&ma, &mb) < 1e-5);
        }
    }
}

#[test]
fn permuting_the_batch_permutes_outputs() {
    let dev = Device::Cpu;
    for (_, f) in filters() {
        let blk = block(&convluna(4, f, true), DType::F32);
        let x = randn(&[3, 10, D], 1, DType::F32, &dev);
        let p = randn(&[3, 4, D], 2, DType::F32, &dev);
        let m = mask(&[10, 7, 5], 10, DType::F32, &dev);
        let perm = Tensor::new(&[2u32, 0, 1], &dev).unwrap();
        let a = blk.forward_t(&x, &p, Some(&m), false).unwrap();
        let b = blk
            .forward_t(
                &x.index_select(&perm, 0).unwrap(),
                &p.index_select(&perm, 0).unwrap(),
                Some(&m.index_select(&perm, 0).unwrap()),
                false,
            )
            .unwrap();
        assert!(max_abs_diff(&a.x.index_select(&perm, 0).unwrap(), &b.x) < 1e-5);
        assert!(max_abs_diff(&a.memory.index_select(&perm, 0).unwrap(), &b.memory) < 1e-5);
    }
}

#[test]
fn single_memory_slot_works() {
    let dev = Device::Cpu;
    let blk = block(&convluna(1, FilterConfig::authors_conv(), true), DType::F32);
    let out = blk
        .forward_traced(
            &randn(&[2, 5, D], 1, DType::F32, &dev),
            &randn(&[2, 1, D], 2, DType::F32, &dev),
            None,
            false,
        )
        .unwrap();
    assert_eq!(out.memory.dims(), &[2, 1, D]);
    assert_eq!(out.pack_attention.as_ref().unwrap().dims(), &[2, H, 1, 5]);
    // pack attention rows are distributions
    let s = out.pack_attention.as_ref().unwrap().sum(3).unwrap();
    assert!(max_abs_diff(&s, &s.ones_like().unwrap()) < 1e-5);
}

#[test]
fn sequences_shorter_than_the_kernel() {
    let dev = Device::Cpu;
    // stride-1 convolution pads: any length works, even 1
    let blk = block(
        &convluna(
            2,
            FilterConfig::Conv {
                kernel: 4,
                stride: 1,
                per_channel: false,
            },
            true,
        ),
        DType::F32,
    );
    let out = blk
        .forward_t(
            &randn(&[1, 1, D], 1, DType::F32, &dev),
            &randn(&[1, 2, D], 2, DType::F32, &dev),
            None,
            false,
        )
        .unwrap();
    assert_eq!(out.x.dims(), &[1, 1, D]);
    let length_changing = [
        FilterConfig::MaxPool {
            kernel: 4,
            stride: 2,
        },
        FilterConfig::Conv {
            kernel: 4,
            stride: 2,
            per_channel: false,
        },
    ];
    // masked pooling / stride > 1 pads the sequence to one window: defined
    for f in length_changing.clone() {
        let blk = block(&convluna(2, f, true), DType::F32);
        let out = blk
            .forward_traced(
                &randn(&[1, 3, D], 1, DType::F32, &dev),
                &randn(&[1, 2, D], 2, DType::F32, &dev),
                None,
                false,
            )
            .unwrap();
        assert_eq!(out.pack_attention.as_ref().unwrap().dims(), &[1, H, 2, 2]);
    }
    // unmasked (authors') pooling / stride > 1 cannot: a typed error, not a panic
    for f in length_changing {
        let blk = block(&convluna(2, f, false), DType::F32);
        let err = blk
            .forward_t(
                &randn(&[1, 3, D], 1, DType::F32, &dev),
                &randn(&[1, 2, D], 2, DType::F32, &dev),
                None,
                false,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::SequenceTooShort {
                    len: 3,
                    kernel: 4,
                    stride: 2
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn filtered_mask_follows_the_windows() {
    let dev = Device::Cpu;
    let m = mask(&[5], 9, DType::F32, &dev);
    // the window rule itself, on a same-padded window (conv k=4 s=1: 1 left, 2 right):
    // position 5 reads 4..7, which holds 4 → valid
    let w = Window::conv(4, 1);
    assert_eq!(
        to_vec(&filter::windowed_mask(&w, &m).unwrap()),
        vec![1., 1., 1., 1., 1., 1., 0., 0., 0.]
    );
    // but a stride-1 conv keeps the length and therefore the mask itself
    let store = ParamStore::new(0);
    let conv = ConvFilter::new(4, 1, false, 2, 2, store.var_builder(DType::F32, &dev)).unwrap();
    assert_eq!(to_vec(&conv.filter_mask(&m).unwrap()), to_vec(&m));
    // masked mode pads so that a window starts at every t·s < L
    assert_eq!(Window::pool(4, 2).coverage_pad(9), 3);
    assert_eq!(Window::pool(4, 2).coverage_pad(10), 2);
    assert_eq!(Window::pool(3, 1).coverage_pad(9), 2);
    assert_eq!(Window::conv(4, 1).coverage_pad(9), 0);
    // pool k=4 s=2: windows 0..3, 2..5, 4..7 → valid, valid, valid (4 is valid)
    let w = Window::pool(4, 2);
    assert_eq!(
        to_vec(&filter::windowed_mask(&w, &m).unwrap()),
        vec![1., 1., 1.]
    );
    let m = mask(&[3], 9, DType::F32, &dev);
    assert_eq!(
        to_vec(&filter::windowed_mask(&w, &m).unwrap()),
        vec![1., 1., 0.]
    );
}

#[test]
fn all_padding_example_gives_finite_output() {
    let dev = Device::Cpu;
    let blk = block(&convluna(2, FilterConfig::authors_conv(), true), DType::F32);
    let out = blk
        .forward_t(
            &randn(&[2, 6, D], 1, DType::F32, &dev),
            &randn(&[2, 2, D], 2, DType::F32, &dev),
            Some(&mask(&[6, 0], 6, DType::F32, &dev)),
            false,
        )
        .unwrap();
    assert!(to_vec(&out.x).iter().all(|v| v.is_finite()));
    assert!(to_vec(&out.memory).iter().all(|v| v.is_finite()));
}

#[test]
fn half_precision_forward_runs_and_tracks_f32() {
    let dev = Device::Cpu;
    let cfg = convluna(4, FilterConfig::authors_conv(), true);
    let x = randn(&[2, 8, D], 1, DType::F32, &dev);
    let p = randn(&[2, 4, D], 2, DType::F32, &dev);
    let m = mask(&[8, 5], 8, DType::F32, &dev);
    let a = block(&cfg, DType::F32)
        .forward_t(&x, &p, Some(&m), false)
        .unwrap();
    for dt in [DType::BF16, DType::F16] {
        let b = block(&cfg, dt)
            .forward_t(
                &x.to_dtype(dt).unwrap(),
                &p.to_dtype(dt).unwrap(),
                Some(&m),
                false,
            )
            .unwrap();
        let d = max_abs_diff(&a.x, &b.x);
        assert!(d < 0.1, "{dt:?}: {d}");
    }
}

#[test]
fn dropout_only_in_training_and_reproducible() {
    let dev = Device::Cpu;
    let mut cfg = convluna(4, FilterConfig::authors_conv(), true);
    cfg.residual_dropout = true;
    let d = BlockDims {
        d_model: D,
        num_heads: H,
        ffn_dim: F,
        dropout: 0.3,
        attention_dropout: 0.3,
    };
    let blk = LunaBlock::new(&cfg, &d, ParamStore::new(5).var_builder(DType::F32, &dev)).unwrap();
    let rng = blk.dropout_rng().clone();
    let x = randn(&[2, 8, D], 1, DType::F32, &dev);
    let p = randn(&[2, 4, D], 2, DType::F32, &dev);
    let e1 = blk.forward_t(&x, &p, None, false).unwrap();
    let e2 = blk.forward_t(&x, &p, None, false).unwrap();
    assert_eq!(max_abs_diff(&e1.x, &e2.x), 0.0);
    rng.reseed(1);
    let t1 = blk.forward_t(&x, &p, None, true).unwrap();
    rng.reseed(1);
    let t2 = blk.forward_t(&x, &p, None, true).unwrap();
    assert_eq!(max_abs_diff(&t1.x, &t2.x), 0.0);
    assert!(max_abs_diff(&t1.x, &e1.x) > 1e-3);
}

/// Masked max-pool: a pad is −∞ inside the max, so it never wins over real (negative) keys,
/// and a window of padding only gives 0 (it is masked out of the attention).
#[test]
fn masked_max_pool_never_lets_padding_win() {
    let dev = Device::Cpu;
    // one head, one channel, 6 positions, all negative; the last two are padding
    let x = Tensor::new(&[-5f32, -4., -3., -2., -7., -9.], &dev)
        .unwrap()
        .reshape((1, 1, 6, 1))
        .unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 1., 0., 0.]], &dev).unwrap();
    let pool = MaxPoolFilter::new(2, 1).unwrap();
    let y: Vec<f32> = pool
        .forward_masked(&x, &mask)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // windows (0,1) (1,2) (2,3) (3,4) (4,5): the fourth holds a real −2 and a pad,
    // the fifth only padding
    assert_eq!(y, vec![-4., -3., -2., -2., 0.]);
    // the filtered mask agrees: the last window is padding
    let fm: Vec<f32> = pool
        .filter_mask(&mask)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(fm, vec![1., 1., 1., 1., 0.]);
}

/// CLS initialisation as the authors': `xavier_uniform_` on [1, 1, d] for token inputs
/// (U(±√(3/d))), N(0, 1) for pixels.
#[test]
fn cls_initialisation_follows_the_authors() {
    let dev = Device::Cpu;
    let d = 128;
    let enc = |input| {
        let cfg = EncoderConfig {
            input,
            max_len: 8,
            positions: Positions::Learned,
            cls: true,
            stack: StackConfig::default()
                .with_block(BlockPreset::Transformer.block(4))
                .with_d_model(d)
                .with_heads(4)
                .with_ffn_dim(16)
                .with_layers(1)
                .with_dropout(0.0),
        };
        let store = ParamStore::new(11);
        Encoder::new(&cfg, store.var_builder(DType::F64, &dev)).unwrap();
        store.tensors()["cls"].to_vec1::<f64>().unwrap()
    };
    let bound = (3.0 / d as f64).sqrt();
    let tok = enc(InputConfig::Tokens { vocab_size: 10 });
    assert!(tok.iter().all(|v| v.abs() <= bound), "outside ±√(3/d)");
    let var = tok.iter().map(|v| v * v).sum::<f64>() / d as f64;
    // U(±b) has variance b²/3 = 1/d
    assert!((var * d as f64 - 1.0).abs() < 0.3, "variance {var}");
    let pix = enc(InputConfig::Pixels {
        mean: 0.5,
        std: 0.5,
    });
    assert!(pix.iter().any(|v| v.abs() > 1.0), "pixels keep N(0, 1)");
}

#[test]
fn keeping_the_pack_weights_changes_no_bit() {
    // forward_t keeps no attention weights (the fused backward rebuilds them); forward_traced
    // keeps and returns them: the same outputs and the same gradients, bit for bit.
    let dev = Device::Cpu;
    let bits = |t: &Tensor| -> Vec<u64> { to_vec(t).iter().map(|v| v.to_bits()).collect() };
    for (name, f) in filters() {
        for dtype in [DType::F32, DType::F64] {
            let blk = block(&convluna(4, f.clone(), true), dtype);
            let x = candle_core::Var::from_tensor(&randn(&[2, 11, D], 1, dtype, &dev)).unwrap();
            let p = randn(&[2, 4, D], 2, dtype, &dev);
            let m = mask(&[11, 7], 11, dtype, &dev);
            let run = |traced: bool| {
                let out = if traced {
                    blk.forward_traced(x.as_tensor(), &p, Some(&m), false)
                } else {
                    blk.forward_t(x.as_tensor(), &p, Some(&m), false)
                }
                .unwrap();
                assert_eq!(out.pack_attention.is_some(), traced, "{name}");
                let loss = (out.x.sqr().unwrap().sum_all().unwrap()
                    + out.memory.sqr().unwrap().sum_all().unwrap())
                .unwrap();
                let g = loss.backward().unwrap();
                (bits(&out.x), bits(&out.memory), bits(g.get(&x).unwrap()))
            };
            assert_eq!(run(false), run(true), "{name} {dtype:?}");
        }
    }
}
