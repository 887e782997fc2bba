//! ConvLuna as a layer of your own Candle model: your embedding, the crate's [`Stack`], your
//! head, plain `candle_nn::AdamW`, saved and reloaded with plain Candle.
//!
//! ```sh
//! cargo run --release --example own_embedding                       # ConvLuna
//! cargo run --release --example own_embedding -- --family luna      # or luna, transformer
//! ```
//!
//! The task is synthetic and made here: sequences of 2-D points (random walks of 64–128
//! steps, padded to 128), labelled by whether the walk ends to the right of where it started.
//! A linear "stem" embeds each point; the stack mixes them; the head reads the mean of the
//! valid positions.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use clap::Parser;
use convluna::{Stack, StackConfig};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(about = "Train ConvLuna (or Luna, the Transformer) over your own embedding")]
struct Args {
    /// convluna, luna or transformer.
    #[arg(long, default_value = "convluna")]
    family: String,
    #[arg(long, default_value_t = 300)]
    steps: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Where the trained weights are saved.
    #[arg(long, default_value = "runs/own-embedding.safetensors")]
    out: std::path::PathBuf,
}

/// The user's model: a linear stem, the crate's stack, a linear head on the masked mean.
struct WalkClassifier {
    stem: candle_nn::Linear,
    stack: Stack,
    head: candle_nn::Linear,
}

impl WalkClassifier {
    fn new(cfg: &StackConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            stem: candle_nn::linear(2, cfg.d_model, vb.pp("stem"))?,
            stack: Stack::new(cfg, vb.pp("stack"))?,
            head: candle_nn::linear(cfg.d_model, 2, vb.pp("head"))?,
        })
    }

    /// `points` [B, L, 2], `mask` [B, L] (1 = valid) → logits [B, 2].
    fn forward(&self, points: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.stem.forward(points)?;
        let out = self.stack.forward_masked(&h, Some(mask), train)?;
        let m = mask.unsqueeze(2)?;
        let pooled = out
            .hidden
            .broadcast_mul(&m)?
            .sum(1)?
            .broadcast_div(&m.sum(1)?)?;
        Ok(self.head.forward(&pooled)?)
    }
}

/// A batch of random walks: points [B, 128, 2], mask [B, 128], labels [B].
fn batch(rng: &mut u64, b: usize, dev: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    // SplitMix64 as a small generator: uniform in [0, 1)
    let mut next = || (convluna::rng::splitmix64(rng) >> 40) as f32 / (1u32 << 24) as f32;
    let l = 128;
    let (mut pts, mut mask, mut labels) = (vec![0f32; b * l * 2], vec![0f32; b * l], vec![]);
    for i in 0..b {
        let len = 64 + (next() * 64.0) as usize;
        let (mut x, mut y) = (0f32, 0f32);
        for t in 0..len {
            x += next() - 0.5;
            y += next() - 0.5;
            pts[(i * l + t) * 2] = x;
            pts[(i * l + t) * 2 + 1] = y;
            mask[i * l + t] = 1.0;
        }
        labels.push(u32::from(x > 0.0));
    }
    Ok((
        Tensor::from_vec(pts, (b, l, 2), dev)?,
        Tensor::from_vec(mask, (b, l), dev)?,
        Tensor::new(labels, dev)?,
    ))
}

fn main() -> Result<()> {
    let a = Args::parse();
    let dev = Device::Cpu;
    let cfg = match a.family.as_str() {
        "convluna" => StackConfig::convluna(),
        "luna" => StackConfig::luna(),
        "transformer" => StackConfig::transformer(),
        other => anyhow::bail!("--family {other}: expected convluna, luna or transformer"),
    }
    .with_d_model(32)
    .with_ffn_dim(64)
    .with_layers(2)
    .with_memory(8)
    .with_dropout(0.0);
    let varmap = VarMap::new();
    let model = WalkClassifier::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 2e-3,
            ..Default::default()
        },
    )?;
    let mut rng = 1u64;
    let pb = ProgressBar::new(a.steps as u64);
    pb.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")?);
    for _ in 0..a.steps {
        let (x, m, y) = batch(&mut rng, a.batch_size, &dev)?;
        let loss = candle_nn::loss::cross_entropy(&model.forward(&x, &m, true)?, &y)?;
        opt.backward_step(&loss)?;
        pb.set_message(format!("loss {:.4}", loss.to_scalar::<f32>()?));
        pb.inc(1);
    }
    pb.finish();
    let mut eval_rng = 12345u64;
    let (x, m, y) = batch(&mut eval_rng, 512, &dev)?;
    let logits = model.forward(&x, &m, false)?;
    let acc = logits
        .argmax(1)?
        .eq(&y)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    println!("{}: held-out accuracy {acc:.3} (chance 0.5)", a.family);
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    varmap.save(&a.out)?;
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&a.out], DType::F32, &dev)? };
    let reloaded = WalkClassifier::new(&cfg, vb)?;
    let again = reloaded.forward(&x, &m, false)?;
    let same = (logits - again)?.abs()?.max_all()?.to_scalar::<f32>()? == 0.0;
    ensure!(same, "the reloaded model's logits differ");
    println!(
        "saved to {} and reloaded: identical logits",
        a.out.display()
    );
    Ok(())
}
