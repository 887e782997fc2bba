//! Criterion benches of the attentions, filters, blocks and a 4-layer encoder, forward and
//! forward + backward, throughput in tokens/s (criterion's `elem/s`).
//!
//! Shapes (issue 7): B·L = 16384 tokens a step, d = 128, h = 4, FFN 512, m ∈ {16, 256},
//! conv kernel 4, f32. Bench ids are `<device>/<bench>/<case>/L=<len>`, e.g.
//! `cpu/encoder-train/convluna-m256/L=4096`, so runs on different devices never mix.
//!
//! ```text
//! cargo bench --bench layers                             # default grid (about 4 min on 2 cores)
//! CONVLUNA_BENCH_FULL=1 cargo bench --bench layers       # every L in 512 … 16384, both m
//! cargo bench --bench layers -- encoder-train            # criterion's name filter
//! cargo bench --features cuda --bench layers             # the same benches on CUDA (cuda/…)
//! ```
//! Threads: `RAYON_NUM_THREADS` (Candle's CPU matmul and elementwise pools and the crate's
//! fused kernels all read it); when unset the bench sets it to `CONVLUNA_BENCH_THREADS` or 2
//! before any tensor is created. The default grid is L ∈ {1024, 16384} (and 1024 only for
//! the Transformer encoder, whose L² attention makes L = 16384 a minutes-long step).

use std::time::Duration;

use candle_core::{DType, Device, Tensor, Var};
use convluna::{
    BlockDims, BlockPreset, ConvFilter, Encoder, EncoderConfig, Filter, LunaBlock, MaxPoolFilter,
    ParamStore, StackConfig, TransformerBlock,
};
use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, BenchmarkId, Criterion, Throughput};

const TOKENS: usize = 16384;
const D: usize = 128;
const H: usize = 4;
const FFN: usize = 512;

fn device() -> (Device, &'static str) {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return (d, "cuda");
    }
    #[cfg(feature = "metal")]
    if let Ok(d) = Device::new_metal(0) {
        return (d, "metal");
    }
    (Device::Cpu, "cpu")
}

fn full() -> bool {
    std::env::var_os("CONVLUNA_BENCH_FULL").is_some_and(|v| !v.is_empty() && v != "0")
}

fn lengths() -> Vec<usize> {
    if full() {
        vec![512, 1024, 2048, 4096, 8192, 16384]
    } else {
        vec![1024, 16384]
    }
}

fn memories() -> Vec<usize> {
    if full() {
        vec![16, 256]
    } else {
        vec![256]
    }
}

fn dims() -> BlockDims {
    BlockDims {
        d_model: D,
        num_heads: H,
        ffn_dim: FFN,
        dropout: 0.0,
        attention_dropout: 0.0,
    }
}

fn randn(shape: &[usize], dev: &Device) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, dev).unwrap()
}

fn sync(dev: &Device) {
    dev.synchronize().unwrap();
}

/// Runs `f` (which returns the output) either as is, or with a backward of its mean.
fn step(train: bool, f: impl Fn() -> Tensor) {
    let y = f();
    if train {
        let g = y.mean_all().unwrap().backward().unwrap();
        std::hint::black_box(g);
    } else {
        std::hint::black_box(y);
    }
}

/// The group `name`: 10 samples, the given warm-up and measurement times, tokens/s.
fn group<'a>(
    c: &'a mut Criterion,
    name: String,
    warm_up_ms: u64,
    measure_s: u64,
) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(warm_up_ms))
        .measurement_time(Duration::from_secs(measure_s));
    g.throughput(Throughput::Elements(TOKENS as u64));
    g
}

/// Benches `f` as `<case>/L=<l>`: its forward, or with `train` forward + backward of its mean.
fn bench(
    g: &mut BenchmarkGroup<'_, WallTime>,
    case: impl Into<String>,
    l: usize,
    train: bool,
    dev: &Device,
    f: impl Fn() -> Tensor,
) {
    g.bench_function(BenchmarkId::new(case.into(), format!("L={l}")), |bn| {
        bn.iter(|| {
            step(train, &f);
            sync(dev)
        })
    });
}

/// A Luna-family block of `preset` with memory length `m`.
fn luna_block(preset: BlockPreset, m: usize, dev: &Device) -> LunaBlock {
    let store = ParamStore::new(1);
    let cfg = preset.block(m);
    LunaBlock::new(
        cfg.luna().unwrap(),
        &dims(),
        store.var_builder(DType::F32, dev),
    )
    .unwrap()
}

fn modes() -> [(&'static str, bool); 2] {
    [("fwd", false), ("train", true)]
}

fn bench_attention(c: &mut Criterion) {
    let (dev, dn) = device();
    for (mode, train) in modes() {
        for m in memories() {
            let mut g = group(c, format!("{dn}/pack-{mode}/m{m}"), 300, 2);
            for l in lengths() {
                let b = TOKENS / l;
                let blk = luna_block(BlockPreset::ConvlunaMasked, m, &dev);
                let x = Var::from_tensor(&randn(&[b, l, D], &dev)).unwrap();
                let p = Var::from_tensor(&randn(&[b, m, D], &dev)).unwrap();
                let mask = Tensor::ones((b, l), DType::F32, &dev).unwrap();
                bench(&mut g, "convluna", l, train, &dev, || {
                    blk.pack()
                        .forward_t(x.as_tensor(), p.as_tensor(), Some(&mask), false)
                        .unwrap()
                        .memory
                });
            }
            g.finish();
            let mut g = group(c, format!("{dn}/unpack-{mode}/m{m}"), 300, 2);
            for l in lengths() {
                let b = TOKENS / l;
                let blk = luna_block(BlockPreset::ConvlunaMasked, m, &dev);
                let x = Var::from_tensor(&randn(&[b, l, D], &dev)).unwrap();
                let yp = Var::from_tensor(&randn(&[b, m, D], &dev)).unwrap();
                bench(&mut g, "convluna", l, train, &dev, || {
                    blk.unpack()
                        .forward_t(x.as_tensor(), yp.as_tensor(), false)
                        .unwrap()
                });
            }
            g.finish();
        }
    }
}

fn bench_filters(c: &mut Criterion) {
    let (dev, dn) = device();
    for (mode, train) in modes() {
        let mut g = group(c, format!("{dn}/filter-{mode}"), 300, 2);
        for l in lengths() {
            let b = TOKENS / l;
            let store = ParamStore::new(1);
            let conv = ConvFilter::new(
                4,
                1,
                false,
                H,
                D / H,
                store.var_builder(DType::F32, &dev).pp("conv"),
            )
            .unwrap();
            let pool = MaxPoolFilter::new(4, 4).unwrap();
            let x = Var::from_tensor(&randn(&[b, H, l, D / H], &dev)).unwrap();
            bench(&mut g, "conv-k4s1", l, train, &dev, || {
                conv.forward(x.as_tensor()).unwrap()
            });
            bench(&mut g, "maxpool-k4s4", l, train, &dev, || {
                pool.forward(x.as_tensor()).unwrap()
            });
            // What the packing attention calls on CPU: the heads in the model dimension and
            // the padding mask folded in (fused kernels; composite on other devices).
            let xm = Var::from_tensor(&randn(&[b, l, D], &dev)).unwrap();
            let mask = Tensor::ones((b, l), DType::F32, &dev).unwrap();
            for (name, f) in [
                ("conv-k4s1-merged", &conv as &dyn Filter),
                ("maxpool-k4s4-merged", &pool),
            ] {
                bench(&mut g, name, l, train, &dev, || {
                    filter_merged_or_split(f, xm.as_tensor(), &mask)
                });
            }
        }
        g.finish();
    }
}

/// `f.forward_merged` where the filter has a fused kernel for the device, else the split path.
fn filter_merged_or_split(f: &dyn Filter, x: &Tensor, mask: &Tensor) -> Tensor {
    if let Some(y) = f.forward_merged(x, H, Some(mask)).unwrap() {
        return y;
    }
    let (b, l, _) = x.dims3().unwrap();
    let pad = f.masked_right_pad(l);
    let xs = x
        .pad_with_zeros(1, 0, pad)
        .unwrap()
        .reshape((b, l + pad, H, D / H))
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    f.forward_masked(&xs, &mask.pad_with_zeros(1, 0, pad).unwrap())
        .unwrap()
}

fn bench_blocks(c: &mut Criterion) {
    let (dev, dn) = device();
    for (mode, train) in modes() {
        let mut g = group(c, format!("{dn}/block-{mode}"), 300, 3);
        for l in lengths() {
            let b = TOKENS / l;
            let x = Var::from_tensor(&randn(&[b, l, D], &dev)).unwrap();
            let mask = Tensor::ones((b, l), DType::F32, &dev).unwrap();
            for m in memories() {
                for (name, preset) in [
                    ("convluna", BlockPreset::ConvlunaMasked),
                    ("luna", BlockPreset::Luna),
                ] {
                    let blk = luna_block(preset, m, &dev);
                    let p = Var::from_tensor(&randn(&[b, m, D], &dev)).unwrap();
                    bench(&mut g, format!("{name}-m{m}"), l, train, &dev, || {
                        blk.forward_t(x.as_tensor(), p.as_tensor(), Some(&mask), false)
                            .unwrap()
                            .x
                    });
                }
            }
            if l <= 4096 || full() && l <= 8192 {
                let store = ParamStore::new(1);
                let blk =
                    TransformerBlock::new(&dims(), store.var_builder(DType::F32, &dev)).unwrap();
                bench(&mut g, "transformer", l, train, &dev, || {
                    blk.forward_t(x.as_tensor(), Some(&mask), false).unwrap()
                });
            }
        }
        g.finish();
    }
}

fn bench_encoder(c: &mut Criterion) {
    let (dev, dn) = device();
    for (mode, train) in modes() {
        let mut g = group(c, format!("{dn}/encoder-{mode}"), 100, 5);
        for l in lengths() {
            let b = TOKENS / l;
            let ids: Vec<u32> = (0..b * l).map(|i| 1 + ((i * 7919) % 255) as u32).collect();
            let ids = Tensor::from_vec(ids, (b, l), &dev).unwrap();
            let mut cases: Vec<(String, convluna::BlockConfig)> = Vec::new();
            for m in memories() {
                cases.push((
                    format!("convluna-m{m}"),
                    BlockPreset::ConvlunaMasked.block(m),
                ));
                cases.push((format!("luna-m{m}"), BlockPreset::Luna.block(m)));
            }
            if l <= 1024 || full() && l <= 4096 {
                cases.push(("transformer".into(), BlockPreset::Transformer.block(1)));
            }
            for (name, block) in cases {
                let cfg = EncoderConfig::tokens(256, l).with_cls(false).with_stack(
                    StackConfig::default()
                        .with_block(block)
                        .with_d_model(D)
                        .with_heads(H)
                        .with_ffn_dim(FFN)
                        .with_layers(4)
                        .with_dropout(0.0),
                );
                let store = ParamStore::new(1);
                let enc = Encoder::new(&cfg, store.var_builder(DType::F32, &dev)).unwrap();
                bench(&mut g, name, l, train, &dev, || {
                    enc.encode(&ids, None, false).unwrap().hidden
                });
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench_filters, bench_attention, bench_blocks, bench_encoder
}

fn main() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let t = std::env::var("CONVLUNA_BENCH_THREADS").unwrap_or_else(|_| "2".into());
        std::env::set_var("RAYON_NUM_THREADS", t);
    }
    eprintln!(
        "convluna benches: device {}, RAYON_NUM_THREADS={}, grid {}",
        device().1,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
        if full() {
            "full"
        } else {
            "default (CONVLUNA_BENCH_FULL=1 for all lengths)"
        }
    );
    benches();
    Criterion::default().configure_from_args().final_summary();
}
