//! A training run on an LRA task as one serialisable description: [`RunOptions`].
//!
//! The `lra` example, the reproduction study and your own drivers share this code: options
//! are resolved against a preset ([`RunOptions::resolved`]), checked in full before any data
//! is generated or read ([`RunOptions::plan`]), the data is loaded and measured against the
//! length limit ([`Plan::load_data`], see [`crate::data::fit_lengths`]: nothing is cut
//! unless truncation was asked for), and the run is trained ([`Plan::run`]) into a folder
//! whose `run.json` records the resolved options.
//!
//! # Presets
//! - [`Preset::Quick`] (the default): sized for a 2-core CPU. d = 64, 2 layers, 4 heads,
//!   FFN 128, m = 16, dropout 0.1, batch 32, 2,000 steps with an evaluation every 200, AdamW
//!   (lr 2·10⁻³, weight decay 0.01, norms, biases and τ exempt), linear warmup over 10 % of the
//!   steps then cosine decay to 5 %, gradient clipping at 1, padding masked, each batch padded
//!   to its longest sequence; ListOps generated with short trees (20–199 tokens, 10,000 /
//!   1,000 / 1,000 examples).
//! - [`Preset::Paper`]: the authors' settings (`lra/setups.py`): d = 128, 4 heads, FFN 512,
//!   the task's layers, batch, learning rate with their rsqrt warmup, weight decay on every
//!   parameter, no clipping, m = 256, full lengths, batches padded to the task length, and —
//!   as their code runs ConvLuna and Luna — **no padding mask** (`masked = false`; the
//!   Transformer always masks its keys).
//!
//! In both presets the best checkpoint is chosen on the **full** validation split;
//! `eval_batches` restricts that to a prefix, and the run's log says so.
//!
//! # Resuming
//! [`RunOptions::merge_recorded`] checks the options given for a resume against those
//! recorded in `run.json`: an option that differs is an [`Error::ResumeMismatch`] naming it;
//! an option left out is taken from the record. The trainer then checks the model and
//! training configs against the checkpoint itself.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::config::{BlockConfig, FilterConfig, ModelConfig, PairFeatures, Pooling, ScaleConfig};
use crate::data::{self, LengthFit, Splits};
use crate::error::{Error, Result};
use crate::optim::{AdamWConfig, Schedule};
use crate::preset::{BlockPreset, LraTask};
use crate::train::{Event, NonFinitePolicy, Summary, TrainConfig, Trainer};

/// The model family of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// ConvLuna: per-head conv filter k = 4 and learned τ in packing ([`BlockPreset::Convluna`]).
    Convluna,
    /// Luna as the ConvLuna authors ran it ([`BlockPreset::Luna`]).
    Luna,
    /// Luna as Ma et al. define it ([`BlockPreset::LunaMa`]).
    LunaMa,
    /// The pre-LN softmax Transformer.
    Transformer,
    /// Locality control: the Transformer with ConvLuna's filter on its keys and values.
    FilteredTransformer,
    /// Locality control: no attention, token mixing only by ConvLuna's filter (mean pooling).
    ConvMixer,
}

impl ModelKind {
    /// Every kind with its name (as the command line spells it).
    pub const ALL: [(&'static str, ModelKind); 6] = [
        ("convluna", ModelKind::Convluna),
        ("luna", ModelKind::Luna),
        ("luna-ma", ModelKind::LunaMa),
        ("transformer", ModelKind::Transformer),
        ("filtered-transformer", ModelKind::FilteredTransformer),
        ("conv-mixer", ModelKind::ConvMixer),
    ];

    /// The kind's name.
    pub fn name(&self) -> &'static str {
        crate::preset::name_of(&Self::ALL, self)
    }

    /// Looks a kind up by name ([`Error::UnknownPreset`] lists the known names).
    pub fn from_name(name: &str) -> Result<Self> {
        crate::preset::by_name(&Self::ALL, name)
    }

    /// Whether the kind has a memory (the Luna family).
    pub fn has_memory(&self) -> bool {
        matches!(
            self,
            ModelKind::Convluna | ModelKind::Luna | ModelKind::LunaMa
        )
    }

    /// Whether the kind has a filter (ConvLuna and the two locality controls).
    pub fn has_filter(&self) -> bool {
        matches!(
            self,
            ModelKind::Convluna
                | ModelKind::Luna
                | ModelKind::LunaMa
                | ModelKind::FilteredTransformer
                | ModelKind::ConvMixer
        )
    }
}

/// Which settings fill the options that are not given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Sized for a 2-core CPU (see the module docs).
    Quick,
    /// The authors' settings (see the module docs).
    Paper,
}

/// The filter of the packing keys and values (or of a locality control).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilterKind {
    /// No filter.
    Identity,
    /// One kernel per head (the authors').
    Conv,
    /// One kernel per channel.
    Depthwise,
    /// Max-pool.
    Pool,
}

/// The scale of the packing logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Temperature {
    /// Learned τ, init 0 (ConvLuna).
    Learned,
    /// Fixed τ = 0 (no scaling).
    Fixed,
    /// 1/√d_h (Luna).
    InvSqrt,
}

/// The learning-rate schedule of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Linear warmup, then cosine decay to 5 % at the last step (the quick preset's).
    Cosine,
    /// Linear warmup, then constant: the decay does not force a plateau, so a run ends by
    /// early stopping (`patience`) or at its step cap.
    Constant,
    /// The authors' rsqrt warmup schedule (the paper preset's).
    Rsqrt,
}

/// Which settings generate ListOps when no files are given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListOpsSize {
    /// 20 < length < 200, depth 6, 2–5 arguments (the quick preset's; mean ≈ 70 tokens).
    Small,
    /// LRA's own settings: 500 < length < 2000, depth 10, 2–10 arguments (the paper
    /// preset's).
    Official,
}

/// Generated Pathfinder difficulty (contour length 6, 9 or 14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Difficulty {
    /// Contour length 6.
    Easy,
    /// Contour length 9.
    Intermediate,
    /// Contour length 14 (LRA's "hard", the paper's Pathfinder).
    Hard,
}

/// Where the data comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataSource {
    /// The files of `data_dir` when it is given; otherwise generated (ListOps, Pathfinder) or
    /// installed (Fashion-MNIST).
    Local,
    /// The Hugging Face Hub (feature `hub`): IMDb for Text, CIFAR-10 for Image, cached under
    /// the Hugging Face cache ([`crate::data`]'s `hub` module).
    Hub,
}

/// Everything that defines a run. `None` means "the preset's value" until
/// [`RunOptions::resolved`] fills it in; the resolved options are what `run.json` records.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// The task (default ListOps).
    pub task: Option<LraTask>,
    /// The model family (default ConvLuna).
    pub model: Option<ModelKind>,
    /// The preset (default quick).
    pub preset: Option<Preset>,
    /// Where the data comes from (default local).
    pub data: Option<DataSource>,
    /// Official LRA files or a substitute corpus; ListOps and Pathfinder are generated
    /// without it.
    pub data_dir: Option<PathBuf>,
    /// Examples to generate for the training split (generated ListOps and Pathfinder; pairs
    /// built from a text corpus). For a corpus read from disk (images, text, ListOps or
    /// Pathfinder files, AAN pairs), the first this many examples of its training split: a
    /// smaller training set with the same validation and test sets.
    pub train_examples: Option<usize>,
    /// Generated Pathfinder's difficulty (quick: easy, paper: hard).
    pub difficulty: Option<Difficulty>,
    /// Generated ListOps: `small` (quick) or `official`, LRA's settings (paper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listops: Option<ListOpsSize>,
    /// Image tasks: average the images over `downsample × downsample` blocks (32×32 → 16×16
    /// with 2), a shorter sequence for small budgets; the data set's name says so.
    pub downsample: Option<usize>,
    /// Length limit: longer documents stop the run before training unless `truncate`.
    /// Default: the task's LRA length (ListOps 2000, Text and Retrieval 4000 per document,
    /// images 1024), 1000 for Text and Retrieval under the quick preset.
    pub max_len: Option<usize>,
    /// Cut documents longer than `max_len` instead of stopping (default false).
    pub truncate: Option<bool>,
    /// Seed of data generation, initialisation, data order and dropout (default 0).
    pub seed: Option<u64>,
    /// Memory length m (Luna family).
    pub memory: Option<usize>,
    /// Filter kind (ConvLuna family and locality controls).
    pub filter: Option<FilterKind>,
    /// Filter kernel.
    pub kernel: Option<usize>,
    /// Filter stride.
    pub stride: Option<usize>,
    /// Packing logit scale (Luna family).
    pub temperature: Option<Temperature>,
    /// Layers.
    pub layers: Option<usize>,
    /// Model width d.
    pub width: Option<usize>,
    /// Heads.
    pub heads: Option<usize>,
    /// FFN width (and head width).
    pub ffn: Option<usize>,
    /// Dropout (FFN and attention).
    pub dropout: Option<f64>,
    /// Mask padding out of packing (Luna family; quick: true, paper: false as the authors).
    pub masked: Option<bool>,
    /// Retrieval head: `concat` (the authors' `DualClassifier`, default) or `interaction`
    /// (the LRA paper's).
    pub pair_head: Option<PairFeatures>,
    /// Pooling of the classifier (default CLS; mean for the conv mixer).
    pub pooling: Option<Pooling>,
    /// Optimisation steps.
    pub steps: Option<usize>,
    /// Steps the learning-rate schedule spans (default: `steps`). A finished run continued
    /// with more `steps` keeps the span it started with, so the extra steps continue its
    /// schedule: `cosine` stays at its final rate (5 % of the peak; the decay is not
    /// stretched), `constant` and `rsqrt` go on as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_steps: Option<usize>,
    /// Batch size.
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    pub lr: Option<f64>,
    /// Warmup steps.
    pub warmup: Option<usize>,
    /// Learning-rate schedule (quick: cosine, paper: rsqrt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleKind>,
    /// AdamW weight decay.
    pub weight_decay: Option<f64>,
    /// Evaluate every this many steps.
    pub eval_every: Option<usize>,
    /// Validate on this many batches only (default: the full validation split).
    pub eval_batches: Option<usize>,
    /// Stop after this many evaluations without a new best (default: never).
    pub patience: Option<usize>,
    /// Also evaluate (with the memory diagnostics) before the first update, as step 0: the
    /// baseline of "how the memory changes during training" (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_at_start: Option<bool>,
    /// Skip steps with a non-finite loss or gradient instead of stopping.
    pub skip_non_finite: Option<bool>,
    /// `f32`, `bf16` or `f16`.
    pub dtype: Option<String>,
}

/// Where Debian's `dataset-fashion-mnist` package puts its files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

fn not_applicable(option: &str, model: ModelKind) -> Error {
    Error::config(
        option,
        format!("does not apply to --model {}", model.name()),
    )
}

impl RunOptions {
    /// The options with every unset field filled from the preset (and the model's block
    /// preset). Fails on options that do not apply to the model.
    pub fn resolved(&self) -> Result<RunOptions> {
        let mut o = self.clone();
        let preset = *o.preset.get_or_insert(Preset::Quick);
        let task = *o.task.get_or_insert(LraTask::Listops);
        let model = *o.model.get_or_insert(ModelKind::Convluna);
        let quick = preset == Preset::Quick;
        let s = task.paper_settings();
        o.seed.get_or_insert(0);
        if *o.data.get_or_insert(DataSource::Local) == DataSource::Hub {
            if !matches!(task, LraTask::Text | LraTask::Image) {
                return Err(Error::config(
                    "data",
                    "hub: the Hub holds the Text (IMDb) and Image (CIFAR-10) data only",
                ));
            }
            if o.data_dir.is_some() {
                return Err(Error::config("data", "hub and data_dir exclude each other"));
            }
            if !cfg!(feature = "hub") {
                return Err(Error::config(
                    "data",
                    "hub: this build lacks the `hub` feature (cargo run --features hub …)",
                ));
            }
        }
        o.truncate.get_or_insert(false);
        if o.downsample.is_some()
            && !matches!(task, LraTask::Image | LraTask::Pathfinder | LraTask::PathX)
        {
            return Err(Error::config(
                "downsample",
                "applies to the image tasks only",
            ));
        }
        o.skip_non_finite.get_or_insert(false);
        o.dtype.get_or_insert_with(|| "f32".into());
        o.max_len.get_or_insert(match (quick, task) {
            (true, LraTask::Text | LraTask::Retrieval) => 1000,
            _ => task.seq_len(),
        });
        if task == LraTask::Pathfinder && o.data_dir.is_none() {
            o.difficulty.get_or_insert(if quick {
                Difficulty::Easy
            } else {
                Difficulty::Hard
            });
        } else if o.difficulty.is_some() {
            return Err(Error::config(
                "difficulty",
                "applies to generated Pathfinder only",
            ));
        }
        if task == LraTask::Listops && o.data_dir.is_none() {
            o.listops.get_or_insert(if quick {
                ListOpsSize::Small
            } else {
                ListOpsSize::Official
            });
        } else if o.listops.is_some() {
            return Err(Error::config(
                "listops",
                "applies to generated ListOps only (the task without --data-dir)",
            ));
        }
        if generates_training_set(task, o.data_dir.as_deref()) {
            o.train_examples.get_or_insert(match (task, quick) {
                (LraTask::Listops, true) => 10_000,
                (LraTask::Listops, false) => 96_000,
                (LraTask::Pathfinder, true) => 4_000,
                (LraTask::Pathfinder, false) => 160_000,
                (_, true) => 4_000,
                (_, false) => 20_000,
            });
        }
        o.width.get_or_insert(if quick { 64 } else { 128 });
        o.layers
            .get_or_insert(if quick { 2 } else { task.paper_layers() });
        o.heads.get_or_insert(4);
        o.ffn.get_or_insert(if quick { 128 } else { 512 });
        o.dropout.get_or_insert(if quick {
            0.1_f64.min(s.dropout)
        } else {
            s.dropout
        });
        o.pooling.get_or_insert(if model == ModelKind::ConvMixer {
            Pooling::Mean
        } else {
            Pooling::Cls
        });
        if task == LraTask::Retrieval {
            o.pair_head.get_or_insert(PairFeatures::Concat);
        } else if o.pair_head.is_some() {
            return Err(Error::config(
                "pair_head",
                "applies to the Retrieval task only",
            ));
        }
        if model.has_memory() {
            o.memory.get_or_insert(if quick { 16 } else { 256 });
            o.masked.get_or_insert(quick);
            let default_temp = match model {
                ModelKind::Convluna => Temperature::Learned,
                _ => Temperature::InvSqrt,
            };
            o.temperature.get_or_insert(default_temp);
        } else {
            for (name, set) in [
                ("memory", o.memory.is_some()),
                ("temperature", o.temperature.is_some()),
                ("masked", o.masked.is_some()),
            ] {
                if set {
                    return Err(not_applicable(name, model));
                }
            }
        }
        if model.has_filter() {
            let default_filter = match model {
                ModelKind::Luna | ModelKind::LunaMa => FilterKind::Identity,
                _ => FilterKind::Conv,
            };
            let f = *o.filter.get_or_insert(default_filter);
            if f == FilterKind::Identity {
                if o.kernel.is_some() || o.stride.is_some() {
                    return Err(Error::config(
                        "kernel",
                        "--kernel and --stride need a --filter other than identity",
                    ));
                }
            } else {
                o.kernel.get_or_insert(4);
                o.stride.get_or_insert(1);
            }
        } else {
            for (name, set) in [
                ("filter", o.filter.is_some()),
                ("kernel", o.kernel.is_some()),
                ("stride", o.stride.is_some()),
            ] {
                if set {
                    return Err(not_applicable(name, model));
                }
            }
        }
        let steps = *o.steps.get_or_insert(if quick { 2000 } else { s.steps });
        o.batch_size
            .get_or_insert(if quick { 32 } else { s.batch_size });
        o.lr.get_or_insert(if quick { 2e-3 } else { s.lr });
        o.warmup
            .get_or_insert(if quick { steps / 10 } else { s.warmup });
        o.weight_decay
            .get_or_insert(if quick { 0.01 } else { s.weight_decay });
        o.schedule.get_or_insert(if quick {
            ScheduleKind::Cosine
        } else {
            ScheduleKind::Rsqrt
        });
        // quick: every 200 steps; paper: as the authors (ListOps 200, the others 500)
        o.eval_every
            .get_or_insert(if quick || task == LraTask::Listops {
                200
            } else {
                500
            });
        Ok(o)
    }

    /// Combines the options given for a resume with those recorded when the run started
    /// (`recorded`, resolved, read from `file`): an option given with another value than the
    /// recorded one is [`Error::ResumeMismatch`]; an option not given takes the recorded
    /// value. Two options may change: `steps`, to a larger number (a finished run continues
    /// for more steps; `schedule_steps` keeps the schedule's original span), and `patience`.
    pub fn merge_recorded(&self, recorded: &RunOptions, file: &Path) -> Result<RunOptions> {
        let given = serde_json::to_value(self).map_err(|e| Error::format(file, e.to_string()))?;
        let mut merged =
            serde_json::to_value(recorded).map_err(|e| Error::format(file, e.to_string()))?;
        let (Some(g), Some(m)) = (given.as_object(), merged.as_object_mut()) else {
            return Err(Error::format(file, "options are not a JSON object"));
        };
        for (key, value) in g {
            if value.is_null() {
                continue;
            }
            let old = m.get(key).cloned().unwrap_or(serde_json::Value::Null);
            let more_steps = key == "steps" && value.as_u64() > old.as_u64();
            if key == "patience" || (more_steps && old.is_u64()) {
                if more_steps && m.get("schedule_steps").is_none_or(|v| v.is_null()) {
                    m.insert("schedule_steps".into(), old.clone());
                }
                m.insert(key.clone(), value.clone());
                continue;
            }
            if &old != value {
                let show = |v: &serde_json::Value| match v {
                    serde_json::Value::Null => "not set".to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                return Err(Error::ResumeMismatch {
                    option: key.replace('_', "-"),
                    given: show(value),
                    recorded: show(&old),
                    file: file.to_path_buf(),
                });
            }
        }
        serde_json::from_value(merged).map_err(|e| Error::format(file, e.to_string()))
    }

    /// Resolves and checks every option, and builds the model and training configs with the
    /// task's class count and length (corrected from the data by [`Plan::load_data`]).
    /// Nothing is generated or read.
    pub fn plan(&self) -> Result<Plan> {
        let options = self.resolved()?;
        let plan = Plan {
            task: options.task.unwrap_or(LraTask::Listops),
            model: options.model.unwrap_or(ModelKind::Convluna),
            dtype: parse_dtype(options.dtype.as_deref().unwrap_or("f32"))?,
            model_config: build_model_config(&options)?,
            train_config: build_train_config(&options)?,
            options,
        };
        plan.model_config.validate()?;
        plan.train_config.validate()?;
        Ok(plan)
    }

    /// A name for the run: `<task>-<model>-s<seed>`.
    pub fn run_name(&self) -> String {
        let task = self.task.unwrap_or(LraTask::Listops);
        format!(
            "{}-{}-s{}",
            task.name(),
            self.model.unwrap_or(ModelKind::Convluna).name(),
            self.seed.unwrap_or(0)
        )
    }
}

fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        "f64" => Ok(DType::F64),
        other => Err(Error::config(
            "dtype",
            format!("`{other}` is not one of f32, f64, bf16, f16"),
        )),
    }
}

fn filter_config(o: &RunOptions) -> FilterConfig {
    let (k, s) = (o.kernel.unwrap_or(4), o.stride.unwrap_or(1));
    match o.filter.unwrap_or(FilterKind::Identity) {
        FilterKind::Identity => FilterConfig::Identity,
        FilterKind::Conv => FilterConfig::Conv {
            kernel: k,
            stride: s,
            per_channel: false,
        },
        FilterKind::Depthwise => FilterConfig::Conv {
            kernel: k,
            stride: s,
            per_channel: true,
        },
        FilterKind::Pool => FilterConfig::MaxPool {
            kernel: k,
            stride: s,
        },
    }
}

fn build_model_config(o: &RunOptions) -> Result<ModelConfig> {
    let task = o.task.unwrap_or(LraTask::Listops);
    let model = o.model.unwrap_or(ModelKind::Convluna);
    let d = o.width.unwrap_or(64);
    let m = o.memory.unwrap_or(1);
    let block = match model {
        ModelKind::Transformer => BlockConfig::Transformer,
        ModelKind::FilteredTransformer => BlockConfig::FilteredTransformer {
            filter: filter_config(o),
        },
        ModelKind::ConvMixer => BlockConfig::ConvMixer {
            filter: filter_config(o),
        },
        ModelKind::Convluna | ModelKind::Luna | ModelKind::LunaMa => {
            let preset = match model {
                ModelKind::Convluna => BlockPreset::Convluna,
                ModelKind::Luna => BlockPreset::Luna,
                _ => BlockPreset::LunaMa,
            };
            let mut block = preset.block(m);
            if let BlockConfig::Luna(l) = &mut block {
                l.filter = filter_config(o);
                l.mask_padding = o.masked.unwrap_or(true);
                l.pack_scale = match o.temperature.unwrap_or(Temperature::Learned) {
                    Temperature::Learned => ScaleConfig::LearnedTemperature { init: 0.0 },
                    Temperature::Fixed => ScaleConfig::FixedTemperature { tau: 0.0 },
                    Temperature::InvSqrt => ScaleConfig::InvSqrtHeadDim,
                };
            }
            block
        }
    };
    let mut mc = task.paper_model(block);
    mc.encoder.max_len = o.max_len.unwrap_or(task.seq_len());
    mc.encoder.stack.d_model = d;
    mc.encoder.stack.num_layers = o.layers.unwrap_or(2);
    mc.encoder.stack.num_heads = o.heads.unwrap_or(4);
    mc.encoder.stack.ffn_dim = o.ffn.unwrap_or(128);
    mc.head.hidden_dim = mc.encoder.stack.ffn_dim;
    let dropout = o.dropout.unwrap_or(0.1);
    mc.encoder.stack.dropout = dropout;
    mc.encoder.stack.attention_dropout = dropout;
    mc.head.pooling = o.pooling.unwrap_or(Pooling::Cls);
    if task == LraTask::Retrieval {
        mc.head.pair = o.pair_head;
    }
    Ok(mc)
}

fn build_train_config(o: &RunOptions) -> Result<TrainConfig> {
    let quick = o.preset != Some(Preset::Paper);
    let steps = o.steps.unwrap_or(600);
    let warmup = o.warmup.unwrap_or(steps / 10);
    Ok(TrainConfig {
        steps,
        batch_size: o.batch_size.unwrap_or(32),
        accumulate: 1,
        lr: o.lr.unwrap_or(2e-3),
        schedule: match o.schedule {
            Some(ScheduleKind::Cosine) => Schedule::Cosine {
                warmup,
                total: o.schedule_steps.unwrap_or(steps),
                min_ratio: 0.05,
            },
            Some(ScheduleKind::Constant) => Schedule::WarmupConstant { warmup },
            Some(ScheduleKind::Rsqrt) => Schedule::Rsqrt { warmup },
            None if quick => Schedule::Cosine {
                warmup,
                total: o.schedule_steps.unwrap_or(steps),
                min_ratio: 0.05,
            },
            None => Schedule::Rsqrt { warmup },
        },
        optimizer: AdamWConfig {
            weight_decay: o.weight_decay.unwrap_or(0.01),
            exempt_norms_biases_temperature: quick,
            ..Default::default()
        },
        clip_norm: quick.then_some(1.0),
        eval_every: o.eval_every.unwrap_or(100),
        eval_batches: o.eval_batches,
        checkpoint_every: o.eval_every.unwrap_or(100),
        log_every: 10,
        seed: o.seed.unwrap_or(0),
        pad_to_task_length: !quick,
        non_finite: if o.skip_non_finite == Some(true) {
            NonFinitePolicy::Skip
        } else {
            NonFinitePolicy::Stop
        },
        diagnostics: true,
        diagnostic_examples: 16,
        patience: o.patience,
        eval_at_start: o.eval_at_start.unwrap_or(false),
    })
}

/// A checked run: resolved options, model and training configs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The resolved options (what `run.json` records).
    pub options: RunOptions,
    /// The task.
    pub task: LraTask,
    /// The model family.
    pub model: ModelKind,
    /// Compute dtype.
    pub dtype: DType,
    /// The model (class count and length set from the data by [`Plan::load_data`]).
    pub model_config: ModelConfig,
    /// The training settings.
    pub train_config: TrainConfig,
}

/// What [`Plan::load_data`] read and how it fits the run's length limit.
#[derive(Clone, Debug)]
pub struct LoadedData {
    /// The splits (cut to the limit only when truncation was asked for).
    pub splits: Splits,
    /// Lengths against the limit.
    pub lengths: LengthFit,
}

/// What the run recorded in `run.json`: enough to resume it and to tell what it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The resolved options.
    pub options: RunOptions,
    /// The data set's name.
    pub data: String,
    /// Examples per split (train, val, test).
    pub sizes: [usize; 3],
    /// The run's length and what was cut.
    pub lengths: String,
    /// Whether packing masked the padding (Luna family; the Transformer always masks).
    pub masked: Option<bool>,
    /// The model config.
    pub model_config: ModelConfig,
    /// The training config.
    pub train_config: TrainConfig,
}

/// The record file of a run folder.
pub const RUN_FILE: &str = "run.json";

/// Reads `dir/run.json`.
pub fn read_record(dir: &Path) -> Result<RunRecord> {
    let path = dir.join(RUN_FILE);
    let s = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&s).map_err(|e| {
        Error::format(
            &path,
            format!("line {} column {}: {e}", e.line(), e.column()),
        )
    })
}

/// Whether the crate generates the task's training set, `train_examples` examples of it:
/// ListOps and Pathfinder without `data_dir`, and Retrieval pairs built from a text corpus
/// (a `data_dir` without the AAN files). Otherwise the training set is read from disk and
/// `train_examples`, when given, keeps its first examples.
fn generates_training_set(task: LraTask, data_dir: Option<&Path>) -> bool {
    match (task, data_dir) {
        (LraTask::Listops | LraTask::Pathfinder, None) => true,
        (LraTask::Retrieval, Some(d)) => !d.join(AAN_TRAIN_FILE).exists(),
        _ => false,
    }
}

/// The AAN training file whose presence makes a Retrieval `data_dir` the real LRA data.
const AAN_TRAIN_FILE: &str = "new_aan_pairs.train.tsv";

impl Plan {
    /// Generates or reads the data, measures it against the length limit (an error before
    /// training when documents would be cut without `truncate`), and sets the model's class
    /// count and length from it.
    pub fn load_data(&mut self) -> Result<LoadedData> {
        let o = &self.options;
        let quick = o.preset != Some(Preset::Paper);
        let seed = o.seed.unwrap_or(0);
        let n = o.train_examples.unwrap_or(0);
        // Readers get no length limit here: fit_lengths measures and decides below.
        let all = usize::MAX;
        #[cfg(feature = "hub")]
        let hub = o.data == Some(DataSource::Hub);
        #[cfg(not(feature = "hub"))]
        let hub = false;
        let splits = match (self.task, &o.data_dir) {
            #[cfg(feature = "hub")]
            (LraTask::Text, None) if hub => data::hub::imdb_splits()?,
            #[cfg(feature = "hub")]
            (LraTask::Image, None) if hub => data::hub::cifar10_splits()?,
            _ if hub => return Err(Error::config("data", "hub: not for this task")),
            (LraTask::Listops, Some(d)) => data::read_listops_dir(d, all)?,
            (LraTask::Listops, None) => {
                let official = match o.listops {
                    Some(size) => size == ListOpsSize::Official,
                    None => !quick,
                };
                let cfg = if official {
                    data::ListOpsConfig::official()
                } else {
                    data::ListOpsConfig::small()
                };
                let (v, t) = if quick { (1000, 1000) } else { (2000, 2000) };
                data::ListOpsDataset::try_generate_splits(&cfg, n, v, t, seed, all)?
            }
            (LraTask::Pathfinder | LraTask::PathX, Some(d)) => {
                data::read_pathfinder_dir(d, (80, 10, 10))?
            }
            (LraTask::Pathfinder, None) => {
                let cfg = match o.difficulty.unwrap_or(Difficulty::Easy) {
                    Difficulty::Easy => data::PathfinderConfig::easy(),
                    Difficulty::Intermediate => data::PathfinderConfig::intermediate(),
                    Difficulty::Hard => data::PathfinderConfig::hard(),
                };
                let (v, t) = if quick {
                    ((n / 8).max(500), (n / 4).max(1000))
                } else {
                    (20_000, 20_000)
                };
                data::PathfinderDataset::try_generate_splits(&cfg, n, v, t, seed)?
            }
            (LraTask::PathX, None) => {
                return Err(Error::config(
                    "data_dir",
                    "Path-X needs --data-dir with the pathfinder128 files",
                ))
            }
            (LraTask::Image, dir) => {
                let d = dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEBIAN_FASHION_MNIST));
                if d.join("cifar-10-batches-bin").exists() {
                    data::read_cifar10_dir(&d.join("cifar-10-batches-bin"))?
                } else if d.join("data_batch_1.bin").exists() {
                    data::read_cifar10_dir(&d)?
                } else if d.exists() {
                    data::read_fashion_mnist_dir(&d)?
                } else {
                    return Err(Error::config(
                        "data_dir",
                        format!(
                            "no image data at {}: pass --data-dir with CIFAR-10 binary batches, or install the Fashion-MNIST substitute (`apt-get install dataset-fashion-mnist`, or `scripts/fetch-data.sh data`)",
                            d.display()
                        ),
                    ));
                }
            }
            (LraTask::Text, Some(d)) => read_text_corpus(d)?,
            (LraTask::Text, None) => {
                return Err(Error::config(
                    "data_dir",
                    "the Text task needs --data-dir: the IMDb `aclImdb` folder, or a substitute installed by `scripts/fetch-data.sh data` (data/spam-assassin or data/bbc)",
                ))
            }
            (LraTask::Retrieval, Some(d)) => {
                if d.join(AAN_TRAIN_FILE).exists() {
                    data::read_aan_dir(d, all)?
                } else {
                    let corpus = read_text_corpus(d)?;
                    data::pair_substitute_splits(&corpus, n, (n / 8).max(100), (n / 4).max(200), seed)?
                }
            }
            (LraTask::Retrieval, None) => {
                return Err(Error::config(
                    "data_dir",
                    "the Retrieval task needs --data-dir: the folder with new_aan_pairs.{train,eval,test}.tsv, or a text corpus (data/bbc) from which document pairs are built",
                ))
            }
        };
        let splits = match o.train_examples {
            Some(n) if !generates_training_set(self.task, o.data_dir.as_deref()) => {
                splits.with_train_prefix(n)?
            }
            _ => splits,
        };
        let splits = match o.downsample {
            Some(f) if f > 1 => data::downsample_splits(&splits, f)?,
            _ => splits,
        };
        let lengths = data::fit_lengths(
            &splits,
            o.max_len.unwrap_or(self.task.seq_len()),
            o.truncate.unwrap_or(false),
            !quick,
        )?;
        self.model_config.encoder.max_len = lengths.max_len;
        self.model_config.head.num_classes = lengths.splits.train.num_classes();
        self.model_config.validate()?;
        Ok(LoadedData {
            splits: lengths.splits.clone(),
            lengths,
        })
    }

    /// Trains into `out` (writing `run.json` first) and returns the summary; with `resume`,
    /// continues the run in `out` from its latest checkpoint.
    pub fn run(
        &self,
        data: &LoadedData,
        device: &Device,
        out: &Path,
        resume: bool,
        observer: &mut dyn FnMut(&Event),
    ) -> Result<Summary> {
        let record = RunRecord {
            options: self.options.clone(),
            data: data.splits.train.name(),
            sizes: [
                data.splits.train.len(),
                data.splits.val.len(),
                data.splits.test.len(),
            ],
            lengths: data.lengths.describe(),
            masked: self
                .model_config
                .encoder
                .stack
                .block
                .luna()
                .map(|l| l.mask_padding),
            model_config: self.model_config.clone(),
            train_config: self.train_config.clone(),
        };
        if resume {
            let old = read_record(out)?;
            if (old.data.as_str(), old.sizes) != (record.data.as_str(), record.sizes) {
                return Err(Error::format(
                    out.join(RUN_FILE),
                    format!(
                        "the run was trained on {} ({:?} examples), this data is {} ({:?})",
                        old.data, old.sizes, record.data, record.sizes
                    ),
                ));
            }
        } else {
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
            let s = serde_json::to_string_pretty(&record)
                .map_err(|e| Error::format(out.join(RUN_FILE), e.to_string()))?;
            crate::params::write_atomic(&out.join(RUN_FILE), s.as_bytes())?;
        }
        let mut trainer = Trainer::new(&self.model_config, &self.train_config, self.dtype, device)?;
        trainer.fit(&data.splits, out, resume, observer)
    }
}

/// A byte-level text corpus: IMDb (`aclImdb`), SpamAssassin, BBC news, or any folder of class
/// folders (named after the folder).
fn read_text_corpus(d: &Path) -> Result<Splits> {
    let all = usize::MAX;
    if d.join("train").join("pos").exists() || d.join("aclImdb").exists() {
        return data::read_imdb_dir(d, all);
    }
    if d.join("spam-assassin").exists() || d.to_string_lossy().contains("spam") {
        return data::read_spam_assassin(d, all);
    }
    if d.to_string_lossy().contains("bbc") || d.join("bbcnews").exists() {
        return data::read_bbc(d, all);
    }
    let name = d.file_name().map_or_else(
        || d.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let ds = data::read_class_folders(d, all, &format!("text: {name} (folder per class)"))?;
    Ok(data::split_corpus(ds, data::text::SPLIT_SEED))
}
