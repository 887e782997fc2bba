//! A reusable trainer: AdamW (optionally exempting norms, biases and τ from decay), the
//! authors' rsqrt or warmup + cosine schedules, gradient clipping and accumulation, periodic
//! evaluation with memory diagnostics, best-checkpoint selection by validation accuracy, test
//! evaluation of the best checkpoint, and checkpoints that survive a kill.
//!
//! ## Reproducibility and resume
//! Everything random is derived from `TrainConfig::seed`: parameter init ([`ParamStore`]),
//! the data order of each epoch ([`crate::data::epoch_order`]) and the dropout masks of each
//! step ([`crate::DropoutRng::reseed`] with `mix_seed(seed, step)`; the scheme is in [`crate::rng`]). A checkpoint stores weights,
//! AdamW moments, the step, the epoch and the position in it, so `resume` continues exactly
//! where the run stopped and ends with the same weights as an uninterrupted run.
//!
//! ## Files in `out_dir`
//! - `metrics.jsonl`: one JSON object per line (`kind` = `train`, `eval`, `test`, `skipped`);
//! - `checkpoints/step-NNNNNNNN/` (`model.safetensors`, `optimizer.safetensors`,
//!   `state.json`, `config.json`), each written to a temporary folder and renamed, then
//!   named by the pointer files `checkpoints/LATEST` and `checkpoints/BEST` (written
//!   atomically). `state.json` records each file's size and FNV-1a hash, so a corrupted or
//!   half-written checkpoint is refused with a clear error;
//! - `summary.json`: the final numbers.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::data::{epoch_order, make_batch, Batch, Dataset, PadTo, Splits};
use crate::diagnostics::{diagnose, pack_row_divergences, LayerDiagnostics, DISTINCT_THRESHOLD};
use crate::encoder::EncoderOutput;
use crate::error::{Error, Result};
use crate::layers::DropoutRng;
use crate::model::{TaskInputs, TaskModel};
use crate::optim::{accumulate, grad_norm, scale_grads, AdamW, AdamWConfig, Schedule};
use crate::params::{load_tensors, write_atomic, ParamStore};

mod checkpoint;
pub use checkpoint::{differing_fields, CHECKPOINT_FORMAT};
use checkpoint::{LogWindow, Progress};

/// A model the [`Trainer`] can train: the crate's [`TaskModel`], or yours.
///
/// Build its parameters from a [`ParamStore`]'s `VarBuilder` (seeded per parameter name, so
/// the same seed gives the same model on every device) and hand both to
/// [`Trainer::with_model`]: the trainer then checkpoints, resumes, early-stops and stays
/// bit-reproducible for it exactly as for the crate's models. Only [`TrainModel::logits`] is
/// required.
///
/// ```
/// use candle_core::{DType, Device, Module, Tensor};
/// use convluna::train::{TrainConfig, TrainModel, Trainer};
/// use convluna::{ParamStore, TaskInputs};
///
/// /// Mean of the token embeddings, then a linear classifier.
/// struct BagOfTokens { embed: candle_nn::Embedding, out: candle_nn::Linear }
///
/// impl TrainModel for BagOfTokens {
///     fn logits(&self, inputs: TaskInputs<'_>, _train: bool) -> convluna::Result<Tensor> {
///         let TaskInputs::Single { input, .. } = inputs else {
///             return Err(convluna::Error::shape("inputs", "one document", "a pair"));
///         };
///         let h = self.embed.forward(input)?.mean(1)?;
///         Ok(self.out.forward(&h)?)
///     }
/// }
///
/// # fn main() -> convluna::Result<()> {
/// let store = ParamStore::new(0);
/// let vb = store.var_builder(DType::F32, &Device::Cpu);
/// let model = BagOfTokens {
///     embed: candle_nn::embedding(16, 8, vb.pp("embed"))?,
///     out: candle_nn::linear(8, 10, vb.pp("out"))?,
/// };
/// let trainer = Trainer::with_model(Box::new(model), store, &TrainConfig::default(), &Device::Cpu)?;
/// # Ok(()) }
/// ```
pub trait TrainModel {
    /// Logits `[B, classes]` of a batch (`train`: dropout on).
    fn logits(&self, inputs: TaskInputs<'_>, train: bool) -> Result<Tensor>;

    /// The generator every dropout of the model draws from; the trainer reseeds it before
    /// each step from the run's seed and the step, so that a resumed run draws the same
    /// masks. `None` (the default): the model has no dropout, or draws nothing random.
    fn dropout_rng(&self) -> Option<&DropoutRng> {
        None
    }

    /// The model's configuration, recorded in every checkpoint (`config.json` and the
    /// weights' header) and compared on resume: a resume never continues a different model.
    /// Default: `null` (nothing recorded or compared).
    fn config(&self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    /// Logits and the encoder's per-layer trace of a batch, for the memory diagnostics of
    /// Luna-family models. Default: `None` (no diagnostics).
    fn traced(&self, _inputs: TaskInputs<'_>) -> Result<Option<(Tensor, EncoderOutput)>> {
        Ok(None)
    }

    /// The learned pack temperatures τ of every layer (logged at evaluations). Default: none.
    fn taus(&self) -> Result<Vec<f64>> {
        Ok(Vec::new())
    }
}

impl TrainModel for TaskModel {
    fn logits(&self, inputs: TaskInputs<'_>, train: bool) -> Result<Tensor> {
        self.forward_t(inputs, train)
    }

    fn dropout_rng(&self) -> Option<&DropoutRng> {
        Some(TaskModel::dropout_rng(self))
    }

    fn config(&self) -> Result<serde_json::Value> {
        serde_json::to_value(TaskModel::config(self))
            .map_err(|e| Error::format("<config>", e.to_string()))
    }

    fn traced(&self, inputs: TaskInputs<'_>) -> Result<Option<(Tensor, EncoderOutput)>> {
        if self.encoder().config().stack.block.luna().is_none() {
            return Ok(None);
        }
        Ok(Some(match (self, inputs) {
            (TaskModel::Single(m), TaskInputs::Single { input, mask }) => {
                m.forward_traced(input, mask, false)?
            }
            (TaskModel::Pair(m), inputs @ TaskInputs::Pair { input1, mask1, .. }) => (
                self.forward_t(inputs, false)?,
                m.encoder().forward_traced(input1, mask1, false)?,
            ),
            // mismatched inputs: forward_t names the mismatch
            (_, inputs) => {
                self.forward_t(inputs, false)?;
                return Err(Error::shape(
                    "inputs",
                    "as many documents as the model reads",
                    "other",
                ));
            }
        }))
    }

    fn taus(&self) -> Result<Vec<f64>> {
        let mut v = Vec::new();
        for b in self.encoder().blocks() {
            if let crate::block::EncoderBlock::Luna(l) = b {
                if let Some(t) = l.pack().scale().tau()? {
                    v.push(t);
                }
            }
        }
        Ok(v)
    }
}

/// What to do when the loss or the gradient norm is not finite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinitePolicy {
    /// Stop with [`Error::NonFinite`] naming the step.
    Stop,
    /// Skip the update, record it in the metrics, and go on.
    Skip,
}

/// Training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimisation steps.
    pub steps: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per step (gradient accumulation), ≥ 1.
    pub accumulate: usize,
    /// Base learning rate (see [`Schedule::lr`]).
    pub lr: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// AdamW settings (weight decay, exemptions).
    pub optimizer: AdamWConfig,
    /// Clip the global gradient norm to this value.
    pub clip_norm: Option<f64>,
    /// Evaluate on the validation set every this many steps (and at the end).
    pub eval_every: usize,
    /// Evaluate on at most this many validation batches (`None`: all).
    pub eval_batches: Option<usize>,
    /// Write a resumable checkpoint every this many steps (and at every evaluation).
    pub checkpoint_every: usize,
    /// Log training metrics every this many steps.
    pub log_every: usize,
    /// Seed of init, data order and dropout.
    pub seed: u64,
    /// Pad every batch to the task length (`true`, as the authors) or to its longest sequence.
    pub pad_to_task_length: bool,
    /// Non-finite loss or gradient handling.
    pub non_finite: NonFinitePolicy,
    /// Compute memory diagnostics at each evaluation (Luna family).
    pub diagnostics: bool,
    /// Examples used for diagnostics.
    pub diagnostic_examples: usize,
    /// Stop early after this many evaluations in a row without a new best validation
    /// accuracy (`None`: train all `steps`).
    #[serde(default)]
    pub patience: Option<usize>,
    /// Also evaluate on the validation set before the first update, logged as the
    /// evaluation of step 0 (the untrained model's accuracy and memory diagnostics). It
    /// takes no part in choosing the best checkpoint or in early stopping.
    #[serde(default)]
    pub eval_at_start: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 32,
            accumulate: 1,
            lr: 1e-3,
            schedule: Schedule::Cosine {
                warmup: 100,
                total: 1000,
                min_ratio: 0.0,
            },
            optimizer: AdamWConfig::default(),
            clip_norm: Some(1.0),
            eval_every: 100,
            eval_batches: None,
            checkpoint_every: 100,
            log_every: 10,
            seed: 0,
            pad_to_task_length: false,
            non_finite: NonFinitePolicy::Stop,
            diagnostics: true,
            diagnostic_examples: 16,
            patience: None,
            eval_at_start: false,
        }
    }
}

impl TrainConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("train.steps", self.steps),
            ("train.batch_size", self.batch_size),
            ("train.accumulate", self.accumulate),
            ("train.eval_every", self.eval_every),
            ("train.checkpoint_every", self.checkpoint_every),
            ("train.log_every", self.log_every),
        ];
        for (f, v) in positive {
            if v == 0 {
                return Err(Error::config(f, "must be at least 1"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config(
                "train.lr",
                format!("must be positive, got {}", self.lr),
            ));
        }
        if let Some(c) = self.clip_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::config(
                    "train.clip_norm",
                    format!("must be positive, got {c}"),
                ));
            }
        }
        if !(self.optimizer.weight_decay >= 0.0 && self.optimizer.weight_decay.is_finite()) {
            return Err(Error::config("train.optimizer.weight_decay", "must be ≥ 0"));
        }
        if self.eval_batches == Some(0) {
            return Err(Error::config("train.eval_batches", "must be at least 1"));
        }
        if self.patience == Some(0) {
            return Err(Error::config("train.patience", "must be at least 1"));
        }
        if self.diagnostic_examples == 0 {
            return Err(Error::config(
                "train.diagnostic_examples",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Metrics of one logged training step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Step (1-based).
    pub step: usize,
    /// Mean training loss over the steps since the last log.
    pub loss: f64,
    /// Training accuracy over the steps since the last log.
    pub acc: f64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (unpadded) tokens per second since the last log.
    pub tokens_per_s: f64,
    /// Seconds of training since the run started, summed over resumes (see
    /// [`Summary::wall_s`]).
    pub elapsed_s: f64,
}

/// Metrics of one evaluation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Step at which the model was evaluated.
    pub step: usize,
    /// `val` or `test`.
    pub split: String,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Accuracy.
    pub acc: f64,
    /// Examples evaluated.
    pub examples: usize,
    /// Per-layer memory diagnostics (Luna family, when enabled).
    #[serde(default)]
    pub diagnostics: Vec<LayerDiagnostics>,
    /// τ of each layer's packing (learned temperatures only).
    #[serde(default)]
    pub tau: Vec<f64>,
    /// Cosine similarity matrix of the final memory of the first evaluated example.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_memory_cosine: Option<Vec<Vec<f64>>>,
    /// Per layer, the pairwise Jensen–Shannon divergences (bits, averaged over heads) of the
    /// pack-attention rows of the first evaluated example: an `m × m` heatmap of which memory
    /// slots read the same positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_row_divergence: Option<Vec<Vec<Vec<f64>>>>,
}

/// What the trainer reports to its observer.
#[derive(Clone, Debug)]
pub enum Event {
    /// A training step finished (every step; `logged` on logging steps).
    Step {
        /// Metrics (averaged since the last log when `logged`).
        metrics: StepMetrics,
        /// Whether this step was written to the metrics file.
        logged: bool,
    },
    /// A validation evaluation finished.
    Eval(EvalMetrics),
    /// The test evaluation of the best checkpoint finished.
    Test(EvalMetrics),
    /// A checkpoint was written.
    Checkpoint {
        /// Step of the checkpoint.
        step: usize,
        /// Its folder.
        path: PathBuf,
    },
    /// The run resumed from a checkpoint.
    Resumed {
        /// Step of the checkpoint.
        step: usize,
    },
}

/// The outcome of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Steps trained (in total, across resumes).
    pub steps: usize,
    /// Step of the best validation accuracy.
    pub best_step: usize,
    /// Best validation accuracy.
    pub best_val_acc: f64,
    /// Test metrics of the best checkpoint.
    pub test: EvalMetrics,
    /// Fraction of the most common test label.
    pub test_majority: f64,
    /// Steps skipped for non-finite values.
    pub skipped_steps: usize,
    /// Whether training stopped early (`patience` evaluations without improvement).
    #[serde(default)]
    pub stopped_early: bool,
    /// Wall time of the run's training (evaluations included, the final test evaluation
    /// not), seconds, summed over every process that trained it: a resumed run adds its
    /// time to the time its checkpoint recorded, so a run killed and resumed reports what it
    /// cost, less what the killed process did after its last checkpoint (redone, and counted
    /// once, by the resumed one).
    pub wall_s: f64,
    /// Parameters.
    pub parameters: usize,
}

/// What one optimisation step measured.
struct StepOutcome {
    /// Mean loss over the micro-batches.
    loss: f64,
    /// Correct predictions.
    right: usize,
    /// Examples.
    seen: usize,
    /// Real (unpadded) tokens.
    tokens: usize,
    /// Global gradient norm before clipping.
    norm: f64,
}

/// What a traced evaluation batch tells about the memory.
#[derive(Default)]
struct Traced {
    layers: Vec<LayerDiagnostics>,
    final_memory_cosine: Option<Vec<Vec<f64>>>,
    pack_row_divergence: Option<Vec<Vec<Vec<f64>>>>,
}

/// The trainer: a model, its parameters, an optimiser, and the run's state.
pub struct Trainer {
    /// The model's configuration as recorded in checkpoints ([`TrainModel::config`]).
    model_cfg: serde_json::Value,
    /// The same, as the JSON text written to `config.json` and the weights' header.
    model_json: String,
    cfg: TrainConfig,
    store: ParamStore,
    vars: Vec<(String, Var)>,
    model: Box<dyn TrainModel>,
    opt: AdamW,
    device: Device,
    progress: Progress,
    /// The training order of `epoch` (derived from seed and epoch; cached, not checkpointed).
    order: Option<(u64, Vec<usize>)>,
}

fn inputs(b: &Batch) -> TaskInputs<'_> {
    match (&b.input2, &b.mask2) {
        (Some(i2), m2) => TaskInputs::Pair {
            input1: &b.input,
            mask1: Some(&b.mask),
            input2: i2,
            mask2: m2.as_ref(),
        },
        (None, _) => TaskInputs::Single {
            input: &b.input,
            mask: Some(&b.mask),
        },
    }
}

fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.argmax(1)?.to_dtype(DType::U32)?;
    Ok(pred
        .eq(&labels.to_dtype(DType::U32)?)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize)
}

impl Trainer {
    /// Builds the crate's model for `model_cfg` (parameters seeded by `cfg.seed`) in `dtype`
    /// on `device`.
    pub fn new(
        model_cfg: &ModelConfig,
        cfg: &TrainConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        model_cfg.validate()?;
        cfg.validate()?;
        let store = ParamStore::new(cfg.seed);
        let model = TaskModel::new(model_cfg, store.var_builder(dtype, device))?;
        Self::with_json(Box::new(model), store, cfg, device, model_cfg.to_json()?)
    }

    /// Trains a model of your own ([`TrainModel`]) whose parameters live in `store` (build
    /// them from `store.var_builder(..)`; `ParamStore::new(cfg.seed)` for a seeded run).
    pub fn with_model(
        model: Box<dyn TrainModel>,
        store: ParamStore,
        cfg: &TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let json = serde_json::to_string_pretty(&model.config()?)
            .map_err(|e| Error::format("<config>", e.to_string()))?;
        Self::with_json(model, store, cfg, device, json)
    }

    fn with_json(
        model: Box<dyn TrainModel>,
        store: ParamStore,
        cfg: &TrainConfig,
        device: &Device,
        model_json: String,
    ) -> Result<Self> {
        let vars = store.vars();
        if vars.is_empty() {
            return Err(Error::config(
                "model",
                "the parameter store holds no parameter: build the model from its var_builder",
            ));
        }
        let opt = AdamW::new(vars.clone(), cfg.optimizer.clone())?;
        let model_cfg = serde_json::from_str(&model_json)
            .map_err(|e| Error::format("<config>", e.to_string()))?;
        Ok(Self {
            model_cfg,
            model_json,
            cfg: cfg.clone(),
            store,
            vars,
            model,
            opt,
            device: device.clone(),
            progress: Progress {
                step: 0,
                epoch: 0,
                cursor: 0,
                best_val_acc: f64::NEG_INFINITY,
                best_step: 0,
                skipped_steps: 0,
                evals_since_best: 0,
                window: LogWindow::default(),
                elapsed_s: 0.0,
            },
            order: None,
        })
    }

    /// The model.
    pub fn model(&self) -> &dyn TrainModel {
        self.model.as_ref()
    }

    /// The parameters.
    pub fn params(&self) -> &ParamStore {
        &self.store
    }

    /// Steps done so far.
    pub fn step(&self) -> usize {
        self.progress.step
    }

    fn pad(&self, ds: &dyn Dataset) -> PadTo {
        if self.cfg.pad_to_task_length {
            PadTo::Fixed(ds.max_len())
        } else {
            PadTo::Longest
        }
    }

    /// Indices of the next training micro-batch; advances epoch and cursor.
    fn next_indices(&mut self, ds: &dyn Dataset) -> Result<Vec<usize>> {
        let n = ds.len();
        if n == 0 {
            return Err(Error::config("data.train", "the training set is empty"));
        }
        let bs = self.cfg.batch_size.min(n);
        loop {
            if self
                .order
                .as_ref()
                .is_none_or(|(e, o)| *e != self.progress.epoch || o.len() != n)
            {
                self.order = Some((
                    self.progress.epoch,
                    epoch_order(n, self.cfg.seed, self.progress.epoch, true),
                ));
            }
            let start = self.progress.cursor * bs;
            if start + bs <= n {
                self.progress.cursor += 1;
                let order = self
                    .order
                    .as_ref()
                    .map(|(_, o)| &o[start..start + bs])
                    .unwrap_or_default();
                return Ok(order.to_vec());
            }
            self.progress.epoch += 1;
            self.progress.cursor = 0;
        }
    }

    /// Evaluates on (a prefix of) `ds` in its stored order.
    pub fn evaluate(
        &self,
        ds: &dyn Dataset,
        split: &str,
        max_batches: Option<usize>,
        diagnostics: bool,
    ) -> Result<EvalMetrics> {
        let n = ds.len();
        if n == 0 {
            return Err(Error::config(
                format!("data.{split}"),
                "the data set is empty",
            ));
        }
        let bs = self.cfg.batch_size;
        let batches = n.div_ceil(bs).min(max_batches.unwrap_or(usize::MAX)).max(1);
        let (mut loss_sum, mut right, mut seen) = (0f64, 0usize, 0usize);
        let mut traced = Traced::default();
        for bi in 0..batches {
            let idx: Vec<usize> = (bi * bs..((bi + 1) * bs).min(n)).collect();
            let batch = make_batch(ds, &idx, self.pad(ds), &self.device)?;
            let logits = if bi == 0 && diagnostics {
                let (logits, t) = self.traced(&batch)?;
                traced = t;
                logits
            } else {
                self.model.logits(inputs(&batch), false)?
            };
            let loss = candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F32)?, &batch.labels)?
                .to_scalar::<f32>()? as f64;
            loss_sum += loss * idx.len() as f64;
            right += correct(&logits, &batch.labels)?;
            seen += idx.len();
        }
        Ok(EvalMetrics {
            step: self.progress.step,
            split: split.to_string(),
            loss: loss_sum / seen as f64,
            acc: right as f64 / seen as f64,
            examples: seen,
            diagnostics: traced.layers,
            tau: self.taus()?,
            final_memory_cosine: traced.final_memory_cosine,
            pack_row_divergence: traced.pack_row_divergence,
        })
    }

    /// Logits of `batch` and, for Luna-family models, the memory diagnostics of its layers.
    fn traced(&self, batch: &Batch) -> Result<(Tensor, Traced)> {
        let Some((logits, out)) = self.model.traced(inputs(batch))? else {
            return Ok((self.model.logits(inputs(batch), false)?, Traced::default()));
        };
        let trace = out.trace.unwrap_or_default();
        let layers = diagnose(&trace, DISTINCT_THRESHOLD, self.cfg.diagnostic_examples)?;
        let final_memory_cosine = match &out.memory {
            Some(mem) => {
                let p = mem
                    .narrow(0, 0, 1)?
                    .squeeze(0)?
                    .to_dtype(DType::F64)?
                    .to_vec2::<f64>()?;
                Some(crate::diagnostics::cosine_matrix(&p))
            }
            None => None,
        };
        let pack_row_divergence = trace
            .iter()
            .map(|t| pack_row_divergences(&t.pack_attention, &t.pack_mask, 0))
            .collect::<Result<Option<Vec<_>>>>()?;
        Ok((
            logits,
            Traced {
                layers,
                final_memory_cosine,
                pack_row_divergence,
            },
        ))
    }

    /// τ of every layer's pack attention (learned temperatures only).
    pub fn taus(&self) -> Result<Vec<f64>> {
        self.model.taus()
    }

    /// One optimisation step (with accumulation), or `None` when the step was skipped for a
    /// non-finite value.
    fn train_step(&mut self, train: &dyn Dataset) -> Result<Option<StepOutcome>> {
        let step = self.progress.step + 1;
        if let Some(rng) = self.model.dropout_rng() {
            rng.reseed(crate::rng::mix_seed(self.cfg.seed, step as u64));
        }
        let vars: Vec<Var> = self.vars.iter().map(|(_, v)| v.clone()).collect();
        let mut grads: Option<GradStore> = None;
        let (mut loss_sum, mut right, mut seen, mut tokens) = (0f64, 0usize, 0usize, 0usize);
        let k = self.cfg.accumulate;
        for _ in 0..k {
            let idx = self.next_indices(train)?;
            let batch = make_batch(train, &idx, self.pad(train), &self.device)?;
            let logits = self.model.logits(inputs(&batch), true)?;
            let loss =
                candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F32)?, &batch.labels)?;
            let lv = loss.to_scalar::<f32>()? as f64;
            loss_sum += lv;
            right += correct(&logits, &batch.labels)?;
            seen += idx.len();
            tokens += batch.tokens;
            if !lv.is_finite() {
                return self.non_finite(step, "loss", lv);
            }
            let g = (loss / k as f64)?.backward()?;
            match grads.as_mut() {
                None => grads = Some(g),
                Some(a) => accumulate(a, g, &vars)?,
            }
        }
        let mut grads =
            grads.ok_or_else(|| Error::config("train.accumulate", "must be at least 1"))?;
        let norm = grad_norm(&grads, &vars)?;
        if !norm.is_finite() {
            return self.non_finite(step, "gradient norm", norm);
        }
        if let Some(c) = self.cfg.clip_norm {
            if norm > c {
                scale_grads(&mut grads, &vars, c / norm)?;
            }
        }
        let lr = self.cfg.schedule.lr(self.cfg.lr, step);
        self.opt.step(&grads, lr)?;
        self.progress.step = step;
        Ok(Some(StepOutcome {
            loss: loss_sum / k as f64,
            right,
            seen,
            tokens,
            norm,
        }))
    }

    fn non_finite(&mut self, step: usize, what: &str, value: f64) -> Result<Option<StepOutcome>> {
        match self.cfg.non_finite {
            NonFinitePolicy::Stop => Err(Error::NonFinite {
                step,
                what: what.to_string(),
                value,
            }),
            NonFinitePolicy::Skip => {
                self.progress.skipped_steps += 1;
                self.progress.step = step;
                Ok(None)
            }
        }
    }

    /// Writes a resumable checkpoint of the current state into `dir/checkpoints/` and points
    /// `LATEST` (and `BEST` when `best`) at it.
    pub fn save_checkpoint(&self, out_dir: &Path, best: bool) -> Result<PathBuf> {
        checkpoint::write(
            out_dir,
            &checkpoint::Contents {
                store: &self.store,
                optimizer: self.opt.state_tensors(),
                model: &self.model_cfg,
                model_json: &self.model_json,
                train: &self.cfg,
                progress: self.progress,
            },
            best,
        )
    }

    /// Restores the state of `out_dir`'s latest checkpoint. The model and training configs
    /// must be the ones the checkpoint recorded: a resume never silently continues a
    /// different run (the error names the fields that differ). Two training settings may
    /// differ: `steps`, to continue a finished run for more steps (never fewer than the
    /// checkpoint has done), and `patience`.
    pub fn resume(&mut self, out_dir: &Path) -> Result<usize> {
        let (dir, st) = checkpoint::read(out_dir, "LATEST")?;
        if self.cfg.steps < st.progress.step {
            return Err(Error::config(
                "train.steps",
                format!(
                    "{} is fewer than the {} steps the checkpoint in {} has done",
                    self.cfg.steps,
                    st.progress.step,
                    dir.display()
                ),
            ));
        }
        let recorded = TrainConfig {
            steps: self.cfg.steps,
            patience: self.cfg.patience,
            ..st.train.clone()
        };
        for (what, diff) in [
            ("model", differing_fields(&st.model, &self.model_cfg)),
            ("training", differing_fields(&recorded, &self.cfg)),
        ] {
            if !diff.is_empty() {
                return Err(Error::format(
                    dir.join("state.json"),
                    format!(
                        "the checkpoint's {what} config differs from this run's in: {}",
                        diff.join(", ")
                    ),
                ));
            }
        }
        self.store.load(&dir.join("model.safetensors"))?;
        let opt_path = dir.join("optimizer.safetensors");
        let ot = load_tensors(&opt_path, &self.device)?;
        self.opt.load_state(
            &ot,
            st.progress.step as u64 - st.progress.skipped_steps as u64,
            &opt_path,
        )?;
        self.progress = st.progress;
        Ok(st.progress.step)
    }

    /// Loads the weights of `out_dir`'s best checkpoint into the model.
    pub fn load_best(&self, out_dir: &Path) -> Result<usize> {
        let (dir, st) = checkpoint::read(out_dir, "BEST")?;
        self.store.load(&dir.join("model.safetensors"))?;
        Ok(st.progress.step)
    }

    /// Trains to `cfg.steps`, evaluating, checkpointing and logging into `out_dir`; with
    /// `resume`, continues from `out_dir`'s latest checkpoint. Ends with a test evaluation of
    /// the best checkpoint.
    pub fn fit(
        &mut self,
        splits: &Splits,
        out_dir: &Path,
        resume: bool,
        observer: &mut dyn FnMut(&Event),
    ) -> Result<Summary> {
        self.fit_until(splits, out_dir, resume, None, observer)?
            .ok_or_else(|| Error::config("train.steps", "training stopped before its last step"))
    }

    /// As [`Trainer::fit`], but returns `None` right after step `until` (without a final
    /// checkpoint or test evaluation), as if the process had been killed there: the tool for
    /// time-boxed runs and for testing resume.
    pub fn fit_until(
        &mut self,
        splits: &Splits,
        out_dir: &Path,
        resume: bool,
        until: Option<usize>,
        observer: &mut dyn FnMut(&Event),
    ) -> Result<Option<Summary>> {
        std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
        let metrics_path = out_dir.join("metrics.jsonl");
        if resume {
            let s = self.resume(out_dir)?;
            observer(&Event::Resumed { step: s });
            // keep the metrics up to the checkpoint; the rest is about to be redone
            let old = std::fs::read_to_string(&metrics_path).unwrap_or_default();
            let kept: Vec<&str> = old
                .lines()
                .filter(|l| {
                    // up to the checkpoint, less a finished run's test line (a continued run
                    // writes its own at its new end)
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .filter(|v| v.get("kind").and_then(|k| k.as_str()) != Some("test"))
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|st| st as usize <= s)
                })
                .collect();
            write_atomic(
                &metrics_path,
                (kept.join("\n") + if kept.is_empty() { "" } else { "\n" }).as_bytes(),
            )?;
        } else {
            write_atomic(&metrics_path, b"")?;
        }
        let mut metrics = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&metrics_path)
            .map_err(|e| Error::io(&metrics_path, e))?;
        let mut log = |v: serde_json::Value| -> Result<()> {
            writeln!(metrics, "{v}").map_err(|e| Error::io(&metrics_path, e))?;
            metrics.flush().map_err(|e| Error::io(&metrics_path, e))
        };
        // wall time: what the checkpoint recorded (0 on a fresh run) plus this process's
        let t0 = Instant::now();
        let elapsed_before = self.progress.elapsed_s;
        let elapsed = move || elapsed_before + t0.elapsed().as_secs_f64();
        let mut acc_tokens = 0usize;
        let mut t_log = Instant::now();
        let train = splits.train.as_ref();
        if self.cfg.eval_at_start && self.progress.step == 0 {
            let e = self.evaluate(
                splits.val.as_ref(),
                "val",
                self.cfg.eval_batches,
                self.cfg.diagnostics,
            )?;
            let mut v = serde_json::to_value(&e)
                .map_err(|e| Error::format(&metrics_path, e.to_string()))?;
            v["kind"] = "eval".into();
            log(v)?;
            observer(&Event::Eval(e));
        }
        let patience = self.cfg.patience;
        let patience_spent = |p: &Progress| patience.is_some_and(|n| p.evals_since_best >= n);
        while self.progress.step < self.cfg.steps && !patience_spent(&self.progress) {
            if until.is_some_and(|u| self.progress.step >= u) {
                return Ok(None);
            }
            let outcome = self.train_step(train)?;
            let step = self.progress.step;
            match outcome {
                None => log(serde_json::json!({"kind": "skipped", "step": step}))?,
                Some(StepOutcome {
                    loss,
                    right,
                    seen,
                    tokens,
                    norm,
                }) => {
                    let w = &mut self.progress.window;
                    w.loss += loss;
                    w.right += right;
                    w.seen += seen;
                    w.steps += 1;
                    acc_tokens += tokens;
                    let w = *w;
                    let logged = step.is_multiple_of(self.cfg.log_every) || step == self.cfg.steps;
                    let dt = t_log.elapsed().as_secs_f64().max(1e-9);
                    let m = StepMetrics {
                        step,
                        loss: w.loss / w.steps as f64,
                        acc: w.right as f64 / w.seen.max(1) as f64,
                        lr: self.cfg.schedule.lr(self.cfg.lr, step),
                        grad_norm: norm,
                        tokens_per_s: acc_tokens as f64 / dt,
                        elapsed_s: elapsed(),
                    };
                    if logged {
                        let mut v = serde_json::to_value(&m)
                            .map_err(|e| Error::format(&metrics_path, e.to_string()))?;
                        v["kind"] = "train".into();
                        log(v)?;
                        self.progress.window = LogWindow::default();
                        acc_tokens = 0;
                        t_log = Instant::now();
                    }
                    observer(&Event::Step { metrics: m, logged });
                }
            }
            let eval_now = step.is_multiple_of(self.cfg.eval_every) || step == self.cfg.steps;
            if eval_now {
                let e = self.evaluate(
                    splits.val.as_ref(),
                    "val",
                    self.cfg.eval_batches,
                    self.cfg.diagnostics,
                )?;
                let mut v = serde_json::to_value(&e)
                    .map_err(|e| Error::format(&metrics_path, e.to_string()))?;
                v["kind"] = "eval".into();
                log(v)?;
                let best = e.acc > self.progress.best_val_acc;
                if best {
                    self.progress.best_val_acc = e.acc;
                    self.progress.best_step = step;
                    self.progress.evals_since_best = 0;
                } else {
                    self.progress.evals_since_best += 1;
                }
                observer(&Event::Eval(e));
                self.progress.elapsed_s = elapsed();
                let path = self.save_checkpoint(out_dir, best)?;
                observer(&Event::Checkpoint { step, path });
            } else if step.is_multiple_of(self.cfg.checkpoint_every) {
                self.progress.elapsed_s = elapsed();
                let path = self.save_checkpoint(out_dir, false)?;
                observer(&Event::Checkpoint { step, path });
            }
        }
        let wall_s = elapsed();
        let best_step = self.load_best(out_dir)?;
        let mut test = self.evaluate(splits.test.as_ref(), "test", None, self.cfg.diagnostics)?;
        test.step = best_step;
        let mut v =
            serde_json::to_value(&test).map_err(|e| Error::format(&metrics_path, e.to_string()))?;
        v["kind"] = "test".into();
        log(v)?;
        observer(&Event::Test(test.clone()));
        let summary = Summary {
            steps: self.progress.step,
            best_step,
            best_val_acc: self.progress.best_val_acc,
            test,
            test_majority: crate::data::majority_fraction(splits.test.as_ref())?,
            skipped_steps: self.progress.skipped_steps,
            stopped_early: self.progress.step < self.cfg.steps,
            wall_s,
            parameters: self.store.num_parameters(),
        };
        let s = serde_json::to_string_pretty(&summary)
            .map_err(|e| Error::format(out_dir, e.to_string()))?;
        write_atomic(&out_dir.join("summary.json"), s.as_bytes())?;
        Ok(Some(summary))
    }

    /// The weights as named tensors (e.g. to compare runs).
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.store.tensors()
    }
}
