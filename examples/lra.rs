//! Train ConvLuna, Luna or a Transformer on a Long Range Arena task.
//!
//! ```sh
//! cargo run --release --example lra                      # ConvLuna on generated ListOps, quick preset
//! cargo run --release --example lra -- --model luna      # the Luna baseline
//! cargo run --release --example lra -- --task image --data-dir data/fashion-mnist
//! cargo run --release --features cuda --example lra -- --preset paper --device cuda --task listops
//! cargo run --release --example lra -- --resume runs/listops-convluna-s0   # continue a killed run
//! ```
//! Writes `metrics.jsonl`, checkpoints, `summary.json` and plots (`curves.svg`, `memory.svg`,
//! `memory-cosine.svg`) into `--out` (default `runs/<task>-<model>-s<seed>`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Parser, ValueEnum};
use convluna::data::{self, Splits};
use convluna::optim::{AdamWConfig, Schedule};
use convluna::train::{Event, NonFinitePolicy, TrainConfig, Trainer};
use convluna::*;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Task {
    Listops,
    Text,
    Retrieval,
    Image,
    Pathfinder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModelKind {
    /// ConvLuna (filter + learned τ), padding masked.
    Convluna,
    /// Luna as the ConvLuna authors ran it.
    Luna,
    /// Luna as Ma et al. define it.
    LunaMa,
    /// Pre-LN Transformer.
    Transformer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Preset {
    /// Sized for a 2-core CPU: short generated sequences, a small model, minutes.
    Quick,
    /// The authors' settings (SPEC §6): full lengths, d = 128, for a GPU.
    Paper,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FilterKind {
    Identity,
    Conv,
    Depthwise,
    Pool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Temperature {
    /// Learned τ, init 0 (ConvLuna).
    Learned,
    /// Fixed τ = 0 (no scaling).
    Fixed,
    /// 1/√d_h (Luna).
    InvSqrt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceKind {
    Cpu,
    Cuda,
    Metal,
}

#[derive(Parser, Debug)]
#[command(about = "Train ConvLuna / Luna / Transformer on a Long Range Arena task")]
struct Args {
    #[arg(long, value_enum, default_value_t = Task::Listops)]
    task: Task,
    #[arg(long, value_enum, default_value_t = ModelKind::Convluna)]
    model: ModelKind,
    #[arg(long, value_enum, default_value_t = Preset::Quick)]
    preset: Preset,
    /// Official LRA files or a substitute corpus (see README); ListOps and Pathfinder are generated without it.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Output folder (default runs/<task>-<model>-s<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its latest checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Memory length m.
    #[arg(long)]
    memory: Option<usize>,
    #[arg(long, value_enum)]
    filter: Option<FilterKind>,
    #[arg(long)]
    kernel: Option<usize>,
    #[arg(long)]
    stride: Option<usize>,
    /// Scale of the packing logits.
    #[arg(long, value_enum)]
    temperature: Option<Temperature>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    ffn: Option<usize>,
    /// Let padding take part in packing, as the authors' code does.
    #[arg(long)]
    unmasked: bool,
    /// Sequence length (truncation) for text-like tasks and generated ListOps.
    #[arg(long)]
    max_len: Option<usize>,
    /// Examples to generate for the training split (ListOps / Pathfinder without --data-dir).
    #[arg(long)]
    train_examples: Option<usize>,
    #[arg(long)]
    eval_every: Option<usize>,
    /// Skip steps with a non-finite loss or gradient instead of stopping.
    #[arg(long)]
    skip_non_finite: bool,
    /// Compute in this dtype (f32, bf16, f16; half types are meant for GPUs).
    #[arg(long, default_value = "f32")]
    dtype: String,
}

fn block_for(kind: ModelKind, m: usize, d: usize) -> BlockConfig {
    match kind {
        ModelKind::Convluna => BlockPreset::ConvlunaMasked.block(m, d),
        ModelKind::Luna => BlockPreset::Luna.block(m, d),
        ModelKind::LunaMa => BlockPreset::LunaMa.block(m, d),
        ModelKind::Transformer => BlockPreset::Transformer.block(m, d),
    }
}

fn lra_task(t: Task) -> LraTask {
    match t {
        Task::Listops => LraTask::Listops,
        Task::Text => LraTask::Text,
        Task::Retrieval => LraTask::Retrieval,
        Task::Image => LraTask::Image,
        Task::Pathfinder => LraTask::Pathfinder,
    }
}

/// Quick ListOps: short trees that a 2-core CPU learns in minutes.
fn quick_listops() -> data::ListOpsConfig {
    data::ListOpsConfig::small()
}

/// Where Debian's dataset-fashion-mnist package puts its files.
const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

fn load_data(a: &Args, max_len: usize) -> Result<Splits> {
    let quick = a.preset == Preset::Quick;
    let seed = a.seed;
    Ok(match (a.task, &a.data_dir) {
        (Task::Listops, Some(d)) => data::read_listops_dir(d, max_len).with_context(|| format!("reading ListOps from {}", d.display()))?,
        (Task::Listops, None) => {
            let cfg = if quick { quick_listops() } else { data::ListOpsConfig::official() };
            let n = a.train_examples.unwrap_or(if quick { 10_000 } else { 96_000 });
            let (v, t) = if quick { (1000, 1000) } else { (2000, 2000) };
            eprintln!("generating ListOps: {n}/{v}/{t} examples (seed {seed}) …");
            data::ListOpsDataset::try_generate_splits(&cfg, n, v, t, seed, max_len)?
        }
        (Task::Pathfinder, Some(d)) => data::read_pathfinder_dir(d, (80, 10, 10)).with_context(|| format!("reading Pathfinder from {}", d.display()))?,
        (Task::Pathfinder, None) => {
            let cfg = if quick { data::PathfinderConfig::easy() } else { data::PathfinderConfig::hard() };
            let n = a.train_examples.unwrap_or(if quick { 4000 } else { 160_000 });
            let (v, t) = if quick { (500, 1000) } else { (20_000, 20_000) };
            eprintln!("generating Pathfinder (contour length {}): {n}/{v}/{t} examples …", cfg.contour_length);
            data::PathfinderDataset::try_generate_splits(&cfg, n, v, t, seed)?
        }
        (Task::Image, dir) => {
            let d = dir.clone().unwrap_or_else(|| PathBuf::from(DEBIAN_FASHION_MNIST));
            if d.join("data_batch_1.bin").exists() || d.join("cifar-10-batches-bin").exists() {
                let d = if d.join("cifar-10-batches-bin").exists() { d.join("cifar-10-batches-bin") } else { d };
                data::read_cifar10_dir(&d)?
            } else if d.exists() {
                data::read_fashion_mnist_dir(&d).with_context(|| format!("reading Fashion-MNIST from {}", d.display()))?
            } else {
                bail!(
                    "no image data: pass --data-dir with CIFAR-10 binary batches, or install the Fashion-MNIST \
                     substitute (`sudo apt-get install dataset-fashion-mnist`, or `scripts/fetch-data.sh data`)"
                )
            }
        }
        (Task::Text, Some(d)) => {
            if d.join("train").join("pos").exists() {
                data::read_imdb_dir(d, max_len)?
            } else if d.join("spam-assassin").exists() || d.to_string_lossy().contains("spam") {
                data::read_spam_assassin(d, max_len)?
            } else {
                data::read_bbc(d, max_len).with_context(|| format!("reading a folder-per-class corpus from {}", d.display()))?
            }
        }
        (Task::Text, None) => bail!(
            "the Text task needs --data-dir: the IMDb `aclImdb` folder, or a substitute installed by \
             `scripts/fetch-data.sh data` (data/spam-assassin or data/bbc)"
        ),
        (Task::Retrieval, Some(d)) => {
            if d.join("new_aan_pairs.train.tsv").exists() {
                data::read_aan_dir(d, max_len)?
            } else {
                let corpus = if d.to_string_lossy().contains("spam") { data::read_spam_assassin(d, max_len)? } else { data::read_bbc(d, max_len)? };
                let n = a.train_examples.unwrap_or(if quick { 4000 } else { 20_000 });
                data::pair_substitute_splits(&corpus, n, (n / 8).max(100), (n / 4).max(200), seed)?
            }
        }
        (Task::Retrieval, None) => bail!(
            "the Retrieval task needs --data-dir: the folder with new_aan_pairs.{{train,eval,test}}.tsv, or a \
             text substitute (data/bbc) from which document pairs are built"
        ),
    })
}

/// Prints above the progress bar, or plainly when the bar is hidden (output not a terminal).
fn say(pb: &ProgressBar, msg: String) {
    if pb.is_hidden() {
        eprintln!("{msg}");
    } else {
        pb.println(msg);
    }
}

fn main() -> Result<()> {
    // keep freed memory in the process: fresh large buffers otherwise page-fault on every
    // step (see BENCHMARKS.md; about 2× on CPU training)
    convluna::kernels::tune_glibc_malloc();
    let a = Args::parse();
    let task = lra_task(a.task);
    let quick = a.preset == Preset::Quick;
    let dtype = match a.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("unknown --dtype {other} (f32, bf16, f16)"),
    };
    let device = match a.device {
        DeviceKind::Cpu => Device::Cpu,
        DeviceKind::Cuda => {
            Device::new_cuda(0).context("CUDA device (build with --features cuda)")?
        }
        DeviceKind::Metal => {
            Device::new_metal(0).context("Metal device (build with --features metal)")?
        }
    };

    // ---- model and training settings: preset, then overrides
    let s = task.paper_settings();
    let default_len = match (quick, a.task) {
        (true, Task::Listops) => quick_listops().max_len,
        (true, Task::Text | Task::Retrieval) => 1000,
        _ => task.seq_len(),
    };
    let max_len = a.max_len.unwrap_or(default_len);
    let splits = load_data(&a, max_len)?;
    let data_len = splits.train.max_len();
    let memory = a.memory.unwrap_or(if quick { 16 } else { 256 });
    let d = a.width.unwrap_or(if quick { 64 } else { 128 });
    let mut mc = task.paper_model(block_for(a.model, memory, d));
    mc.encoder.max_len = data_len;
    mc.encoder.d_model = d;
    mc.head.num_classes = splits.train.num_classes();
    if quick {
        mc.encoder.num_layers = 2;
        mc.encoder.ffn_dim = 128;
        mc.head.hidden_dim = 128;
        mc.encoder.dropout = 0.1_f64.min(s.dropout.max(0.0));
        mc.encoder.attention_dropout = mc.encoder.dropout;
    }
    if let Some(l) = a.layers {
        mc.encoder.num_layers = l;
    }
    if let Some(h) = a.heads {
        mc.encoder.num_heads = h;
    }
    if let Some(f) = a.ffn {
        mc.encoder.ffn_dim = f;
        mc.head.hidden_dim = f;
    }
    if let BlockConfig::Luna(l) = &mut mc.encoder.block {
        let (k0, s0) = match l.filter {
            FilterConfig::Conv { kernel, stride, .. }
            | FilterConfig::MaxPool { kernel, stride } => (kernel, stride),
            FilterConfig::Identity => (4, 1),
        };
        let (k, st) = (a.kernel.unwrap_or(k0), a.stride.unwrap_or(s0));
        if let Some(f) = a.filter {
            l.filter = match f {
                FilterKind::Identity => FilterConfig::Identity,
                FilterKind::Conv => FilterConfig::Conv {
                    kernel: k,
                    stride: st,
                    per_channel: false,
                },
                FilterKind::Depthwise => FilterConfig::Conv {
                    kernel: k,
                    stride: st,
                    per_channel: true,
                },
                FilterKind::Pool => FilterConfig::MaxPool {
                    kernel: k,
                    stride: st,
                },
            };
        } else if a.kernel.is_some() || a.stride.is_some() {
            l.filter = match l.filter {
                FilterConfig::MaxPool { .. } => FilterConfig::MaxPool {
                    kernel: k,
                    stride: st,
                },
                FilterConfig::Conv { per_channel, .. } => FilterConfig::Conv {
                    kernel: k,
                    stride: st,
                    per_channel,
                },
                FilterConfig::Identity => FilterConfig::Conv {
                    kernel: k,
                    stride: st,
                    per_channel: false,
                },
            };
        }
        if let Some(t) = a.temperature {
            l.pack_scale = match t {
                Temperature::Learned => Scale::LearnedTemperature { init: 0.0 },
                Temperature::Fixed => Scale::FixedTemperature { tau: 0.0 },
                Temperature::InvSqrt => Scale::InvSqrtHeadDim,
            };
        }
        if a.unmasked {
            l.mask_padding = false;
        }
    } else if a.filter.is_some() || a.temperature.is_some() || a.memory.is_some() {
        eprintln!("note: --filter, --temperature and --memory do not apply to the Transformer");
    }
    mc.validate()?;

    let steps = a.steps.unwrap_or(if quick { 600 } else { s.steps });
    let lr = a.lr.unwrap_or(if quick { 2e-3 } else { s.lr });
    let tc = TrainConfig {
        steps,
        batch_size: a
            .batch_size
            .unwrap_or(if quick { 32 } else { s.batch_size }),
        accumulate: 1,
        lr,
        schedule: if quick {
            Schedule::Cosine {
                warmup: steps / 10,
                total: steps,
                min_ratio: 0.05,
            }
        } else {
            Schedule::Rsqrt { warmup: s.warmup }
        },
        optimizer: AdamWConfig {
            weight_decay: if quick { 0.01 } else { s.weight_decay },
            exempt_norms_biases_temperature: quick,
            ..Default::default()
        },
        clip_norm: if quick { Some(1.0) } else { None },
        eval_every: a.eval_every.unwrap_or(if quick { 100 } else { 1000 }),
        eval_batches: if quick { Some(32) } else { Some(50) },
        checkpoint_every: if quick { 100 } else { 1000 },
        log_every: 10,
        seed: a.seed,
        pad_to_task_length: !quick,
        non_finite: if a.skip_non_finite {
            NonFinitePolicy::Skip
        } else {
            NonFinitePolicy::Stop
        },
        diagnostics: true,
        diagnostic_examples: 16,
    };

    let model_name = match a.model {
        ModelKind::Convluna => "convluna",
        ModelKind::Luna => "luna",
        ModelKind::LunaMa => "luna-ma",
        ModelKind::Transformer => "transformer",
    };
    let out = match (&a.resume, &a.out) {
        (Some(r), _) => r.clone(),
        (None, Some(o)) => o.clone(),
        (None, None) => {
            PathBuf::from(format!("runs/{:?}-{model_name}-s{}", a.task, a.seed).to_lowercase())
        }
    };
    eprintln!("{}", splits.summary());
    let mut trainer = Trainer::new(&mc, &tc, dtype, &device)?;
    eprintln!(
        "model: {model_name} ({} parameters), {} layers, d = {}, heads = {}, memory = {}, device {:?}\nout: {}",
        trainer.params().num_parameters(),
        mc.encoder.num_layers,
        mc.encoder.d_model,
        mc.encoder.num_heads,
        mc.encoder.block.luna().map_or("-".to_string(), |l| l.memory_len.to_string()),
        a.device,
        out.display()
    );
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("run.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "task": format!("{:?}", a.task).to_lowercase(), "model": model_name, "preset": format!("{:?}", a.preset).to_lowercase(),
            "data": splits.train.name(), "model_config": mc, "train_config": tc,
        }))?,
    )?;

    let pb = ProgressBar::new(steps as u64);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut last_val = String::new();
    let mut observer = |e: &Event| match e {
        Event::Step { metrics: m, .. } => {
            pb.set_position(m.step as u64);
            pb.set_message(format!(
                "loss {:.3} acc {:.3} {:.0} tok/s {last_val}",
                m.loss, m.acc, m.tokens_per_s
            ));
        }
        Event::Eval(m) => {
            last_val = format!("| val acc {:.3}", m.acc);
            let mem = m
                .diagnostics
                .last()
                .map(|d| {
                    format!(
                        ", last-layer memory: {:.1} distinct, rank {:.1}",
                        d.memory_out.distinct, d.memory_out.effective_rank
                    )
                })
                .unwrap_or_default();
            say(
                &pb,
                format!(
                    "step {:>6}: val loss {:.4}, val acc {:.4}{mem}",
                    m.step, m.loss, m.acc
                ),
            );
        }
        Event::Resumed { step } => say(&pb, format!("resumed from step {step}")),
        Event::Test(_) | Event::Checkpoint { .. } => {}
    };
    let summary = trainer.fit(&splits, &out, a.resume.is_some(), &mut observer)?;
    pb.finish_and_clear();
    let plots = report::plot_run(&out, &format!("{model_name} on {}", splits.train.name()))?;

    println!("\n{:<28} {}", "task / data", splits.train.name());
    println!("{:<28} {model_name}", "model");
    println!("{:<28} {}", "steps", summary.steps);
    println!("{:<28} {:.1}", "training wall time (s)", summary.wall_s);
    println!(
        "{:<28} {:.4} (step {})",
        "best validation accuracy", summary.best_val_acc, summary.best_step
    );
    println!("{:<28} {:.4}", "test accuracy", summary.test.acc);
    println!(
        "{:<28} {:.4}",
        "majority class (test)", summary.test_majority
    );
    if let Some(d) = summary.test.diagnostics.last() {
        println!(
            "{:<28} {:.2} of {} (effective rank {:.2})",
            "distinct memory vectors", d.memory_out.distinct, memory, d.memory_out.effective_rank
        );
    }
    if !summary.test.tau.is_empty() {
        println!(
            "{:<28} {:?}",
            "learned τ per layer",
            summary
                .test
                .tau
                .iter()
                .map(|t| (t * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
    }
    println!("{:<28} {}", "metrics", out.join("metrics.jsonl").display());
    for p in plots {
        println!("{:<28} {}", "plot", p.display());
    }
    if splits.train.name().contains("substitute") {
        println!("note: trained on a substitute data set; these are not LRA numbers.");
    }
    Ok(())
}
