//! What the examples share: the run options as command-line flags, device selection and a
//! progress observer. The logic lives in the library (`convluna::experiment`); this only
//! parses and prints.
#![allow(dead_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use convluna::config::{PairFeatures, Pooling};
use convluna::experiment::{
    DataSource, Difficulty, FilterKind, ListOpsSize, ModelKind, Preset, RunOptions, ScheduleKind,
    Temperature,
};
use convluna::preset::LraTask;
use convluna::train::Event;
use indicatif::{ProgressBar, ProgressStyle};

/// `convluna::experiment::RunOptions` as flags: every flag is optional, the preset fills the
/// rest (`--resume` takes what is not given from the run's `run.json`).
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Task [default: listops].
    #[arg(long, value_parser = task_name)]
    pub task: Option<LraTask>,
    /// Model family [default: convluna].
    #[arg(long, value_parser = model_name)]
    pub model: Option<ModelKind>,
    /// quick (CPU-sized) or paper (the authors' settings) [default: quick].
    #[arg(long, value_parser = by_name::<Preset>)]
    pub preset: Option<Preset>,
    /// `hub`: the real IMDb (Text) or CIFAR-10 (Image) from the Hugging Face Hub (needs the
    /// `hub` feature) [default: local].
    #[arg(long, value_parser = by_name::<DataSource>)]
    pub data: Option<DataSource>,
    /// Official LRA files or a substitute corpus (see README); ListOps and Pathfinder are
    /// generated without it.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Examples to generate for the training split (generated ListOps / Pathfinder, pairs);
    /// for data read from disk, keep the first this many training examples.
    #[arg(long)]
    pub train_examples: Option<usize>,
    /// Generated Pathfinder difficulty [quick: easy, paper: hard].
    #[arg(long, value_parser = by_name::<Difficulty>)]
    pub difficulty: Option<Difficulty>,
    /// Generated ListOps: small (20–199 tokens) or official (LRA's, 501–1999 tokens)
    /// [quick: small; paper: official].
    #[arg(long, value_parser = by_name::<ListOpsSize>)]
    pub listops: Option<ListOpsSize>,
    /// Image tasks: average the images over N×N blocks (32×32 → 16×16 with 2).
    #[arg(long)]
    pub downsample: Option<usize>,
    /// Length limit: longer documents stop the run before training unless --truncate
    /// [default: the task's LRA length; 1000 for text tasks under the quick preset].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Cut documents longer than --max-len instead of stopping.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub truncate: Option<bool>,
    /// Seed of data, initialisation, data order and dropout [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Memory length m (Luna family).
    #[arg(long)]
    pub memory: Option<usize>,
    /// Filter of the packing keys and values (or of a locality control).
    #[arg(long, value_parser = by_name::<FilterKind>)]
    pub filter: Option<FilterKind>,
    /// Filter kernel.
    #[arg(long)]
    pub kernel: Option<usize>,
    /// Filter stride.
    #[arg(long)]
    pub stride: Option<usize>,
    /// Scale of the packing logits (Luna family).
    #[arg(long, value_parser = by_name::<Temperature>)]
    pub temperature: Option<Temperature>,
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub heads: Option<usize>,
    /// FFN width (also the head's).
    #[arg(long)]
    pub ffn: Option<usize>,
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Mask padding out of packing: `--masked` or `--masked false` [quick: true; paper:
    /// false, as the authors' code].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub masked: Option<bool>,
    /// Retrieval head [default: concat, the authors' DualClassifier].
    #[arg(long, value_parser = by_name::<PairFeatures>)]
    pub pair_head: Option<PairFeatures>,
    /// Classifier pooling [default: cls; mean for the conv mixer].
    #[arg(long, value_parser = by_name::<Pooling>)]
    pub pooling: Option<Pooling>,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warmup steps [quick: 10 % of the steps; paper: the authors'].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Learning-rate schedule: cosine (warmup, then cosine decay to 5 %), constant (warmup,
    /// then constant) or rsqrt (the authors') [quick: cosine; paper: rsqrt].
    #[arg(long, value_parser = by_name::<ScheduleKind>)]
    pub schedule: Option<ScheduleKind>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Validate on this many batches only [default: the full validation split].
    #[arg(long)]
    pub eval_batches: Option<usize>,
    /// Stop after this many evaluations without a new best validation accuracy.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Also evaluate (with the memory diagnostics) before the first update, as step 0.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub eval_at_start: Option<bool>,
    /// Skip steps with a non-finite loss or gradient instead of stopping.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub skip_non_finite: Option<bool>,
    /// Compute dtype: f32, f64, bf16, f16 (half types are meant for GPUs).
    #[arg(long)]
    pub dtype: Option<String>,
}

fn task_name(s: &str) -> Result<LraTask, String> {
    LraTask::from_name(s).map_err(|e| e.to_string())
}

fn model_name(s: &str) -> Result<ModelKind, String> {
    ModelKind::from_name(s).map_err(|e| e.to_string())
}

/// Parses a library enum by the name its serde form (and `run.json`) uses, so that the
/// command line and the recorded options spell every value the same way.
pub fn by_name<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| {
        let e = e.to_string();
        // serde says "unknown variant `x`, expected one of `a`, `b`"
        e.split(" at line").next().unwrap_or(&e).to_string()
    })
}

impl RunArgs {
    /// The options these flags give (unset flags stay unset).
    pub fn options(&self) -> RunOptions {
        RunOptions {
            task: self.task,
            model: self.model,
            preset: self.preset,
            data: self.data,
            data_dir: self.data_dir.clone(),
            train_examples: self.train_examples,
            difficulty: self.difficulty,
            listops: self.listops,
            downsample: self.downsample,
            max_len: self.max_len,
            truncate: self.truncate,
            seed: self.seed,
            memory: self.memory,
            filter: self.filter,
            kernel: self.kernel,
            stride: self.stride,
            temperature: self.temperature,
            layers: self.layers,
            width: self.width,
            heads: self.heads,
            ffn: self.ffn,
            dropout: self.dropout,
            masked: self.masked,
            pair_head: self.pair_head,
            pooling: self.pooling,
            steps: self.steps,
            schedule_steps: None,
            batch_size: self.batch_size,
            lr: self.lr,
            warmup: self.warmup,
            schedule: self.schedule,
            weight_decay: self.weight_decay,
            eval_every: self.eval_every,
            eval_batches: self.eval_batches,
            patience: self.patience,
            eval_at_start: self.eval_at_start,
            skip_non_finite: self.skip_non_finite,
            dtype: self.dtype.clone(),
        }
    }
}

/// Where to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Metal,
}

/// The device, with a hint when the build lacks its feature.
pub fn device(kind: DeviceKind) -> Result<Device> {
    Ok(match kind {
        DeviceKind::Cpu => Device::Cpu,
        DeviceKind::Cuda => {
            Device::new_cuda(0).context("CUDA device (build with --features cuda)")?
        }
        DeviceKind::Metal => {
            Device::new_metal(0).context("Metal device (build with --features metal)")?
        }
    })
}

/// Prints above the progress bar, or plainly when the bar is hidden (output not a terminal).
pub fn say(pb: &ProgressBar, msg: String) {
    if pb.is_hidden() {
        eprintln!("{msg}");
    } else {
        pb.println(msg);
    }
}

/// A progress bar over `steps` steps.
pub fn progress_bar(steps: usize) -> ProgressBar {
    let pb = ProgressBar::new(steps as u64);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

/// An observer that moves `pb` and prints each evaluation (with the last layer's memory
/// diagnostics) above it.
pub fn observer(pb: &ProgressBar) -> impl FnMut(&Event) + '_ {
    let mut last_val = String::new();
    move |e: &Event| match e {
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
                    let packed = d
                        .packed
                        .as_ref()
                        .map(|p| format!(", Y_p rank {:.1}", p.effective_rank))
                        .unwrap_or_default();
                    let js = d
                        .pack_row_divergence
                        .map(|j| format!(", pack-row JS {j:.2}"))
                        .unwrap_or_default();
                    format!(
                        ", last layer: pack entropy {:.2}{packed}{js}",
                        d.pack_entropy
                    )
                })
                .unwrap_or_default();
            say(
                pb,
                format!(
                    "step {:>6}: val loss {:.4}, val acc {:.4} ({} examples){mem}",
                    m.step, m.loss, m.acc, m.examples
                ),
            );
        }
        Event::Resumed { step } => say(pb, format!("resumed from step {step}")),
        Event::Test(_) | Event::Checkpoint { .. } => {}
    }
}
