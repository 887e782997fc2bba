//! A small, dependency-light throughput probe used by `scripts/bench-vs-pytorch.sh`:
//! one process measures one (family, length, mode) case of a 4-layer encoder and prints a
//! single JSON line (tokens/s, seconds per step, peak RSS). The PyTorch side is
//! `scripts/reference.py bench`, which prints the same fields.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --example bench_encoder -- \
//!     --family convluna --len 4096 --mode train
//! cargo run --release --example bench_encoder -- --mode matmul      # f32 matmul peak
//! ```
//! Thread count: Candle's CPU backend (its matmul and its rayon pool) reads
//! `RAYON_NUM_THREADS`; `--threads` sets it before any tensor is created.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use clap::Parser;
use convluna::{
    BlockConfig, BlockPreset, Encoder, EncoderConfig, FilterConfig, LunaConfig, ParamStore,
    StackConfig,
};

#[derive(Parser, Debug)]
struct Args {
    /// convluna (masked, conv k=4), convluna-unmasked, convluna-pool (masked, max-pool k=4 s=2),
    /// convluna-pool-unmasked, luna, transformer
    #[arg(long, default_value = "convluna")]
    family: String,
    /// Sequence length L (the batch is tokens / L).
    #[arg(long, default_value_t = 1024)]
    len: usize,
    /// Tokens per step B·L.
    #[arg(long, default_value_t = 16384)]
    tokens: usize,
    /// Memory length m.
    #[arg(long, default_value_t = 256)]
    memory: usize,
    #[arg(long, default_value_t = 128)]
    d: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 512)]
    ffn: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// fwd (inference: weights as plain tensors, so no backward graph is recorded), train
    /// (forward + backward of mean(hidden)), matmul (peak GFLOP/s), plot (read the JSON lines
    /// of `--results` and write `--svg`).
    #[arg(long, default_value = "train")]
    mode: String,
    /// `--mode fwd` with the weights as `Var`s, so that every op records the graph (what a
    /// forward pass inside training costs).
    #[arg(long)]
    track: bool,
    /// Timed steps (at least), after `warmup` untimed ones.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Stop adding timed steps after this many seconds (at least one step is timed).
    #[arg(long, default_value_t = 20.0)]
    max_seconds: f64,
    /// Sets RAYON_NUM_THREADS (when not already set) before Candle starts its pools.
    #[arg(long)]
    threads: Option<usize>,
    /// Call `convluna::kernels::tune_glibc_malloc()` first (the in-process equivalent of the
    /// GLIBC_TUNABLES setting of BENCHMARKS.md).
    #[arg(long)]
    tune_malloc: bool,
    /// cpu, cuda or metal (the latter two need the matching cargo feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `--mode plot`: JSON lines written by scripts/bench-vs-pytorch.sh.
    #[arg(long)]
    results: Option<std::path::PathBuf>,
    /// `--mode plot`: output SVG.
    #[arg(long, default_value = "docs/bench-tokens-per-s.svg")]
    svg: std::path::PathBuf,
    /// `--mode plot`: which allocator setting to plot (tuned or stock).
    #[arg(long, default_value = "tuned")]
    alloc: String,
}

fn vm_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Forward FLOPs of one block at `n` tokens in batches of `b` (matmuls, conv), as BENCHMARKS.md counts them.
#[allow(clippy::too_many_arguments)]
pub fn block_fwd_flops(
    family: &str,
    n: f64,
    b: f64,
    l: f64,
    d: f64,
    f: f64,
    m: f64,
    k: f64,
) -> f64 {
    match family {
        "transformer" => n * (8.0 * d * d + 4.0 * d * f) + 4.0 * n * l * d,
        "luna" => n * (8.0 * d * d + 4.0 * d * f + 8.0 * m * d) + b * 8.0 * m * d * d,
        _ => n * (6.0 * d * d + 4.0 * d * f + 8.0 * m * d + 4.0 * k * d) + b * 6.0 * m * d * d,
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let tuned = a.tune_malloc && convluna::kernels::tune_glibc_malloc();
    if let Some(t) = a.threads {
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        }
    }
    let threads = candle_core::utils::get_num_threads();
    let dev = match a.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        "metal" => Device::new_metal(0)?,
        other => anyhow::bail!("unknown --device {other} (cpu, cuda, metal)"),
    };
    if a.mode == "matmul" {
        return matmul_peak(&dev, threads);
    }
    if a.mode == "plot" {
        return plot(&a);
    }
    let b = (a.tokens / a.len).max(1);
    let block = match a.family.as_str() {
        "convluna" => BlockPreset::ConvlunaMasked.block(a.memory),
        "convluna-unmasked" => BlockPreset::Convluna.block(a.memory),
        "luna" => BlockPreset::Luna.block(a.memory),
        "transformer" => BlockPreset::Transformer.block(a.memory),
        "convluna-pool" | "convluna-pool-unmasked" => {
            let masked = a.family == "convluna-pool";
            let preset = if masked {
                BlockPreset::ConvlunaMasked
            } else {
                BlockPreset::Convluna
            };
            match preset.block(a.memory) {
                BlockConfig::Luna(l) => BlockConfig::Luna(LunaConfig {
                    filter: FilterConfig::MaxPool {
                        kernel: 4,
                        stride: 2,
                    },
                    ..l
                }),
                other => other,
            }
        }
        f => anyhow::bail!("unknown family {f}"),
    };
    let cfg = EncoderConfig::tokens(256, a.len)
        .with_cls(false)
        .with_stack(
            StackConfig::default()
                .with_block(block)
                .with_d_model(a.d)
                .with_heads(a.heads)
                .with_ffn_dim(a.ffn)
                .with_layers(a.layers)
                .with_dropout(0.0),
        );
    let store = ParamStore::new(7);
    let mut enc = Encoder::new(&cfg, store.var_builder(DType::F32, &dev))?;
    let vars: Vec<Var> = store.varmap().all_vars();
    if a.mode == "fwd" && !a.track {
        // Inference as a user runs it: the same weights as plain tensors (e.g. from
        // `VarBuilder::from_mmaped_safetensors`), so no op records a backward graph.
        let frozen: std::collections::HashMap<String, Tensor> = store
            .varmap()
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned VarMap lock"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        enc = Encoder::new(&cfg, VarBuilder::from_tensors(frozen, DType::F32, &dev))?;
    }
    // ids 1..=255, no padding (the mask is all ones, but masked mode still does its work).
    let ids: Vec<u32> = (0..b * a.len)
        .map(|i| 1 + ((i * 7919) % 255) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (b, a.len), &dev)?;
    let train = a.mode == "train";
    let rss0 = vm_kib("VmRSS:");
    let step = || -> anyhow::Result<f32> {
        let out = enc.encode(&ids, None, false)?;
        let loss = out.hidden.mean_all()?;
        if train {
            let grads = loss.backward()?;
            // touch one gradient so nothing is optimised away
            let g = grads
                .get(vars[0].as_tensor())
                .map(|g| g.dims().len())
                .unwrap_or(0);
            std::hint::black_box(g);
        }
        Ok(loss.to_scalar::<f32>()?)
    };
    for _ in 0..a.warmup {
        step()?;
    }
    let mut times = Vec::new();
    let t_all = Instant::now();
    while times.len() < a.iters.max(1) {
        let t = Instant::now();
        std::hint::black_box(step()?);
        times.push(t.elapsed().as_secs_f64());
        if t_all.elapsed().as_secs_f64() > a.max_seconds {
            break;
        }
    }
    times.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let med = times[times.len() / 2];
    let best = times[0];
    let n = (b * a.len) as f64;
    let per_block = block_fwd_flops(
        &a.family,
        n,
        b as f64,
        a.len as f64,
        a.d as f64,
        a.ffn as f64,
        a.memory as f64,
        4.0,
    );
    let flops = per_block * a.layers as f64 * if train { 3.0 } else { 1.0 };
    println!(
        "{{\"impl\":\"convluna\",\"device\":\"{}\",\"family\":\"{}\",\"len\":{},\"batch\":{},\"mode\":\"{}\",\"threads\":{},\"tune_malloc\":{},\"steps\":{},\"sec_median\":{:.5},\"sec_best\":{:.5},\"tokens_per_s\":{:.1},\"gflop_per_step\":{:.3},\"gflops\":{:.2},\"rss_start_mib\":{:.1},\"peak_rss_mib\":{:.1},\"cpu\":{},\"isa\":\"{}\",\"features\":{},\"version\":\"{}\"}}",
        a.device,
        a.family,
        a.len,
        b,
        if a.mode == "fwd" && a.track {
            "fwd-tracked"
        } else {
            a.mode.as_str()
        },
        threads,
        tuned,
        times.len(),
        med,
        best,
        n / med,
        flops / 1e9,
        flops / med / 1e9,
        rss0 as f64 / 1024.0,
        vm_kib("VmHWM:") as f64 / 1024.0,
        serde_json::Value::from(cpu_model()),
        isa(),
        serde_json::Value::from(features()),
        env!("CARGO_PKG_VERSION"),
    );
    Ok(())
}

/// The CPU's model name (Linux's /proc/cpuinfo), for the record of a measurement.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The widest vector instruction set the CPU reports among those the kernels use.
fn isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2+fma";
        }
        "x86-64"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH
    }
}

/// The crate's backend features this binary was built with.
fn features() -> Vec<&'static str> {
    [
        ("cuda", cfg!(feature = "cuda")),
        ("cudnn", cfg!(feature = "cudnn")),
        ("metal", cfg!(feature = "metal")),
        ("mkl", cfg!(feature = "mkl")),
        ("accelerate", cfg!(feature = "accelerate")),
    ]
    .into_iter()
    .filter_map(|(f, on)| on.then_some(f))
    .collect()
}

/// f32 matmul throughput of Candle's CPU backend on square and model-shaped products: the
/// linear layers' shapes, and the attention's thin ones (d_h = 32 deep or wide, as batches of
/// enough products to hide the call).
fn matmul_peak(dev: &Device, threads: usize) -> anyhow::Result<()> {
    for &(m, k, n) in &[
        (2048usize, 2048usize, 2048usize),
        (16384, 128, 512),
        (16384, 512, 128),
        (16384, 128, 128),
        (256, 256, 32),
        (4096, 256, 32),
        (256, 4096, 32),
        (256, 32, 256),
        (4096, 32, 256),
    ] {
        // a leading batch dimension only where one product is too small to time alone
        let batch = ((1usize << 27) / (m * k * n)).max(1);
        let lead = if batch > 1 { vec![batch] } else { vec![] };
        let x = Tensor::randn(0f32, 1.0, [&lead[..], &[m, k]].concat(), dev)?;
        let y = Tensor::randn(0f32, 1.0, [&lead[..], &[k, n]].concat(), dev)?;
        let _ = x.matmul(&y)?;
        let mut best = f64::MAX;
        for _ in 0..10 {
            let t = Instant::now();
            std::hint::black_box(x.matmul(&y)?);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{{\"impl\":\"convluna\",\"mode\":\"matmul\",\"shape\":\"{m}x{k}x{n}\",\"batch\":{batch},\"threads\":{threads},\"gflops\":{:.2},\"cpu\":{},\"isa\":\"{}\"}}",
            2.0 * (batch * m * k * n) as f64 / best / 1e9,
            serde_json::Value::from(cpu_model()),
            isa(),
        );
    }
    Ok(())
}

/// Tokens/s against L, one panel per mode, a line per (implementation, family).
fn plot(a: &Args) -> anyhow::Result<()> {
    use convluna::plot::{write_panels, Panel, Series};
    use std::collections::BTreeMap;
    let path = a
        .results
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--results is required"))?;
    let mut lines: BTreeMap<(String, String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for l in std::fs::read_to_string(path)?.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v["alloc"].as_str() != Some(a.alloc.as_str()) || v["tokens_per_s"].as_f64().is_none() {
            continue;
        }
        let key = (
            v["mode"].as_str().unwrap_or("").to_string(),
            v["impl"].as_str().unwrap_or("").to_string(),
            v["family"].as_str().unwrap_or("").to_string(),
        );
        lines.entry(key).or_default().push((
            v["len"].as_f64().unwrap_or(0.0),
            v["tokens_per_s"].as_f64().unwrap_or(0.0),
        ));
    }
    let mut panels: Vec<Panel> = Vec::new();
    for ((mode, imp, fam), mut pts) in lines {
        pts.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap());
        // several repetitions per length: keep the best (least disturbed) one
        pts.dedup_by(|x, y| {
            if x.0 == y.0 {
                y.1 = y.1.max(x.1);
                true
            } else {
                false
            }
        });
        let title = format!(
            "{mode} tokens/s, {} threads, {} malloc",
            a.threads.unwrap_or(2),
            a.alloc
        );
        let idx = match panels.iter().position(|p| p.title == title) {
            Some(i) => i,
            None => {
                panels.push(Panel {
                    title,
                    x_label: "sequence length L (B·L = 16384)".into(),
                    y_label: "tokens/s".into(),
                    series: vec![],
                    log_x: true,
                });
                panels.len() - 1
            }
        };
        // "luna" for convluna's lines, "luna (torch)" for the PyTorch reference's
        let label = if imp == "pytorch" {
            format!("{fam} (torch)")
        } else {
            fam.clone()
        };
        let mut s = Series::new(label, pts);
        s.dashed = imp == "pytorch";
        panels[idx].series.push(s);
    }
    write_panels(&a.svg, &panels, 1)?;
    println!("wrote {}", a.svg.display());
    Ok(())
}
