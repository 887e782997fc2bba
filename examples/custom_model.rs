//! A model of your own, trained by the crate's trainer on an LRA task: checkpoints, `kill -9`
//! and resume, early stopping and bit-reproducibility come with it.
//!
//! ```sh
//! cargo run --release --example custom_model                       # 600 steps on generated ListOps
//! cargo run --release --example custom_model -- --steps 900 --resume   # continue it for more steps
//! ```
//!
//! The model: a token embedding with learned positions (yours), the crate's ConvLuna
//! [`Stack`], and a head that reads the mean of the final memory (yours). It implements
//! [`TrainModel`]: logits, the dropout generator to reseed each step, and the config that
//! checkpoints record.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor};
use clap::Parser;
use convluna::data::listops::NUM_CLASSES;
use convluna::data::{ListOpsConfig, ListOpsDataset};
use convluna::optim::Schedule;
use convluna::train::{Event, TrainConfig, TrainModel, Trainer};
use convluna::{DropoutRng, ParamStore, Stack, StackConfig, TaskInputs};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(about = "Train a user-defined model with convluna's trainer on generated ListOps")]
struct Args {
    #[arg(long, default_value_t = 600)]
    steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue the run in --out (after a kill, or for more --steps).
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value = "runs/custom-model")]
    out: PathBuf,
}

/// Embedding + positions, the crate's stack, a head on the mean of the final memory.
struct MemoryReader {
    embed: candle_nn::Embedding,
    pos: Tensor,
    stack: Stack,
    head: candle_nn::Linear,
}

impl MemoryReader {
    fn new(store: &ParamStore, max_len: usize) -> Result<Self> {
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let cfg = StackConfig::convluna()
            .with_d_model(64)
            .with_ffn_dim(128)
            .with_layers(2)
            .with_memory(16);
        Ok(Self {
            embed: candle_nn::embedding(convluna::preset::LISTOPS_VOCAB, 64, vb.pp("embed"))?,
            pos: vb.get_with_hints((max_len, 64), "pos", candle_nn::Init::Const(0.0))?,
            stack: Stack::new(&cfg, vb.pp("stack"))?,
            head: candle_nn::linear(64, NUM_CLASSES, vb.pp("head"))?,
        })
    }
}

impl TrainModel for MemoryReader {
    fn logits(&self, inputs: TaskInputs<'_>, train: bool) -> convluna::Result<Tensor> {
        let TaskInputs::Single { input, mask } = inputs else {
            return Err(convluna::Error::shape("inputs", "one document", "a pair"));
        };
        let l = input.dim(1)?;
        let h = self
            .embed
            .forward(input)?
            .broadcast_add(&self.pos.narrow(0, 0, l)?)?;
        let out = self.stack.forward_masked(&h, mask, train)?;
        let memory = out.memory.expect("ConvLuna has a memory");
        Ok(self.head.forward(&memory.mean(1)?)?)
    }

    fn dropout_rng(&self) -> Option<&DropoutRng> {
        Some(self.stack.dropout_rng())
    }

    fn config(&self) -> convluna::Result<serde_json::Value> {
        serde_json::to_value(self.stack.config())
            .map_err(|e| convluna::Error::config("model", e.to_string()))
    }
}

fn main() -> Result<()> {
    convluna::kernels::tune_glibc_malloc();
    let a = Args::parse();
    let max_len = 200;
    let data = ListOpsDataset::try_generate_splits(
        &ListOpsConfig::small(),
        10_000,
        1_000,
        1_000,
        a.seed,
        max_len,
    )?;
    let cfg = TrainConfig {
        steps: a.steps,
        lr: 2e-3,
        schedule: Schedule::WarmupConstant { warmup: 100 },
        eval_every: 100,
        checkpoint_every: 100,
        seed: a.seed,
        patience: Some(5),
        ..Default::default()
    };
    let store = ParamStore::new(cfg.seed);
    let model = MemoryReader::new(&store, max_len)?;
    let mut trainer = Trainer::with_model(Box::new(model), store, &cfg, &Device::Cpu)?;
    let pb = ProgressBar::new(a.steps as u64);
    pb.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")?);
    let summary = trainer.fit(&data, &a.out, a.resume, &mut |e| match e {
        Event::Resumed { step } => pb.set_position(*step as u64),
        Event::Step { metrics, .. } => {
            pb.set_position(metrics.step as u64);
            pb.set_message(format!("loss {:.3}", metrics.loss));
        }
        Event::Eval(e) => pb.println(format!("step {:5}: val acc {:.3}", e.step, e.acc)),
        _ => {}
    })?;
    pb.finish_and_clear();
    println!(
        "best validation accuracy {:.4} (step {}), test accuracy {:.4}, majority {:.4}; files in {}",
        summary.best_val_acc,
        summary.best_step,
        summary.test.acc,
        summary.test_majority,
        a.out.display()
    );
    Ok(())
}
