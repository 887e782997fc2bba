//! Whole models: an [`Encoder`] with a head, built from a [`ModelConfig`], and self-describing
//! checkpoints (`model.safetensors` with the config JSON in its header and beside it).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarBuilder;

use crate::config::ModelConfig;
use crate::encoder::{Encoder, EncoderOutput};
use crate::error::{Error, Result};
use crate::head::{ClassifierHead, PairHead};
use crate::layers::DropoutRng;
use crate::params::{load_metadata, write_atomic, ParamStore};

/// Encoder + single-document classifier head.
#[derive(Clone, Debug)]
pub struct Classifier {
    cfg: ModelConfig,
    encoder: Encoder,
    head: ClassifierHead,
}

/// Encoder (shared by both documents) + two-document head.
#[derive(Clone, Debug)]
pub struct PairClassifier {
    cfg: ModelConfig,
    encoder: Encoder,
    head: PairHead,
}

/// A model for any LRA task: one document or two.
#[derive(Clone, Debug)]
pub enum TaskModel {
    /// One input.
    Single(Classifier),
    /// Two inputs (retrieval).
    Pair(PairClassifier),
}

/// Inputs of a batch: one document, or two for pair models. Masks are `[B, L]`, non-zero valid.
#[derive(Clone, Copy, Debug)]
pub enum TaskInputs<'a> {
    /// One document.
    Single {
        /// Ids or pixels `[B, L]`.
        input: &'a Tensor,
        /// Mask `[B, L]`.
        mask: Option<&'a Tensor>,
    },
    /// Two documents.
    Pair {
        /// First document `[B, L]`.
        input1: &'a Tensor,
        /// Its mask.
        mask1: Option<&'a Tensor>,
        /// Second document `[B, L]`.
        input2: &'a Tensor,
        /// Its mask.
        mask2: Option<&'a Tensor>,
    },
}

impl Classifier {
    /// Builds encoder (`vb` root) and head (`head.…`).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let encoder = Encoder::new(&cfg.encoder, vb.clone())?;
        let head = ClassifierHead::new(
            &cfg.head,
            cfg.encoder.stack.d_model,
            cfg.encoder.cls,
            vb.pp("head"),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            head,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Logits `[B, classes]` for `input` `[B, L]` with an explicit `mask` `[B, L]` (non-zero
    /// valid; `None`: derived from the input). [`ModuleT::forward_t`] is this with `None`.
    pub fn forward_with_mask(
        &self,
        input: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        self.head.forward(&self.encoder.encode(input, mask, train)?)
    }

    /// The generator of every dropout mask of the model (reseed it per step for
    /// reproducible training; the `lra` feature's `train::Trainer` does).
    pub fn dropout_rng(&self) -> &DropoutRng {
        self.encoder.dropout_rng()
    }

    /// Logits and the encoder output with every layer's trace.
    pub fn forward_traced(
        &self,
        input: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, EncoderOutput)> {
        let out = self.encoder.forward_traced(input, mask, train)?;
        Ok((self.head.forward(&out)?, out))
    }
}

impl ModuleT for Classifier {
    /// Logits; the mask is derived from the input (token id 0 is padding).
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.forward_with_mask(xs, None, train)?)
    }
}

impl PairClassifier {
    /// Builds encoder (`vb` root) and pair head (`head.…`).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let features = cfg
            .head
            .pair
            .ok_or_else(|| Error::config("head.pair", "a pair model needs `pair` features"))?;
        let encoder = Encoder::new(&cfg.encoder, vb.clone())?;
        let head = PairHead::new(
            &cfg.head,
            features,
            cfg.encoder.stack.d_model,
            cfg.encoder.cls,
            cfg.encoder.stack.block.pre_ln(),
            vb.pp("head"),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            head,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Logits `[B, classes]` for document pairs.
    pub fn forward_pair(
        &self,
        in1: &Tensor,
        m1: Option<&Tensor>,
        in2: &Tensor,
        m2: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let a = self.encoder.encode(in1, m1, train)?;
        let b = self.encoder.encode(in2, m2, train)?;
        self.head.forward(&a, &b)
    }
}

impl TaskModel {
    /// Builds the model `cfg` describes (pair when `cfg.head.pair` is set).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(if cfg.head.pair.is_some() {
            TaskModel::Pair(PairClassifier::new(cfg, vb)?)
        } else {
            TaskModel::Single(Classifier::new(cfg, vb)?)
        })
    }

    /// The generator of every dropout mask of the model.
    pub fn dropout_rng(&self) -> &DropoutRng {
        self.encoder().dropout_rng()
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ModelConfig {
        match self {
            TaskModel::Single(m) => m.config(),
            TaskModel::Pair(m) => m.config(),
        }
    }

    /// The (shared) encoder.
    pub fn encoder(&self) -> &Encoder {
        match self {
            TaskModel::Single(m) => m.encoder(),
            TaskModel::Pair(m) => m.encoder(),
        }
    }

    /// Logits `[B, classes]`.
    pub fn forward_t(&self, inputs: TaskInputs<'_>, train: bool) -> Result<Tensor> {
        match (self, inputs) {
            (TaskModel::Single(m), TaskInputs::Single { input, mask }) => {
                m.forward_with_mask(input, mask, train)
            }
            (
                TaskModel::Pair(m),
                TaskInputs::Pair {
                    input1,
                    mask1,
                    input2,
                    mask2,
                },
            ) => m.forward_pair(input1, mask1, input2, mask2, train),
            (TaskModel::Single(_), TaskInputs::Pair { .. }) => Err(Error::shape(
                "inputs",
                "one document for a single-input model",
                "a pair",
            )),
            (TaskModel::Pair(_), TaskInputs::Single { .. }) => Err(Error::shape(
                "inputs",
                "two documents for a pair model",
                "one",
            )),
        }
    }
}

/// File names of a saved model.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Config JSON beside the weights.
pub const CONFIG_FILE: &str = "config.json";

/// Saves `store` as `dir/model.safetensors` (config JSON in the header under `config`) and
/// `dir/config.json`, each written atomically.
pub fn save_model(dir: &Path, cfg: &ModelConfig, store: &ParamStore) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = cfg.to_json()?;
    store.save(
        &dir.join(WEIGHTS_FILE),
        Some(HashMap::from([("config".to_string(), json.clone())])),
    )?;
    write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())
}

/// Reads the config of a saved model: `dir/config.json`, or the weights' header if the JSON is
/// missing.
pub fn load_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => ModelConfig::from_json(&s).map_err(|e| match e {
            Error::Format { reason, .. } => Error::format(&path, reason),
            e => e,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let wpath = dir.join(WEIGHTS_FILE);
            let meta = load_metadata(&wpath)?;
            let json = meta
                .get("config")
                .ok_or_else(|| Error::format(&wpath, "no `config` in the safetensors header"))?;
            ModelConfig::from_json(json)
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Loads a model saved by [`save_model`]: its config, its parameters and the built model.
/// The model is built straight from the file's tensors ([`ParamStore::from_file`]: no random
/// initialisation pass); a parameter missing from the file, one of the wrong shape, or a
/// tensor the model does not have is an error naming the file. The parameters are trainable
/// variables of the returned store (`store.varmap().all_vars()`), so every op on them records
/// the graph for a backward pass. For inference only, build the model from
/// `candle_nn::VarBuilder::from_mmaped_safetensors` over the same `model.safetensors`
/// instead: plain tensors record nothing, which keeps the peak memory of a forward pass to
/// what its live activations need (`bench_encoder --mode fwd` against `--track`:
/// 101 MiB against 615 MiB for 4 ConvLuna layers, d = 128, on 8,192 tokens).
pub fn load_model(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(ModelConfig, ParamStore, TaskModel)> {
    let cfg = load_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let store = ParamStore::from_file(&path, dtype, device)?;
    let model = TaskModel::new(&cfg, store.var_builder(dtype, device))?;
    store.check_all_used()?;
    Ok((cfg, store, model))
}
