//! The crate as a downstream Candle user meets it: only the public API, plain candle-nn for
//! the rest. An encoder with a filter of the user's own (with a learnable parameter), a head
//! from candle-nn, two steps of `candle_nn::AdamW`, saved with candle's `VarMap::save`, loaded
//! with a plain `VarBuilder::from_mmaped_safetensors` — and the same logits. `?` works
//! between the crate's errors and Candle's.

use std::sync::Arc;

use candle_core::{DType, Device, Module, ModuleT, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use convluna::{BlockPreset, Encoder, EncoderConfig, Filter, StackConfig};

/// A user's filter: a learnable per-channel gain on a one-step moving sum along time.
#[derive(Debug)]
struct GainedSum {
    gain: Tensor,
}

impl Filter for GainedSum {
    fn forward(&self, x: &Tensor) -> convluna::Result<Tensor> {
        // x [B, h, L, d_h]: y[t] = gain ⊙ (x[t] + x[t−1])
        let l = x.dim(2)?;
        let prev = x.narrow(2, 0, l - 1)?.pad_with_zeros(2, 1, 0)?;
        Ok((x + prev)?.broadcast_mul(&self.gain)?)
    }
    fn output_len(&self, len: usize) -> convluna::Result<usize> {
        Ok(len)
    }
    fn filter_mask(&self, mask: &Tensor) -> convluna::Result<Tensor> {
        Ok(mask.clone())
    }
}

/// The user's model: the encoder and a linear head on the CLS position.
struct UserModel {
    encoder: Encoder,
    head: candle_nn::Linear,
}

impl UserModel {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let cfg = EncoderConfig::tokens(12, 16).with_stack(
            StackConfig::default()
                .with_block(BlockPreset::ConvlunaMasked.block(4))
                .with_d_model(16)
                .with_heads(2)
                .with_ffn_dim(32)
                .with_layers(2)
                .with_dropout(0.1),
        );
        let encoder = Encoder::with_filter(&cfg, vb.pp("encoder"), &|_, fvb| {
            let gain = fvb.get_with_hints((1, 1, 1, 8), "gain", candle_nn::Init::Const(0.5))?;
            Ok(Arc::new(GainedSum { gain }) as Arc<dyn Filter>)
        })?; // convluna::Error → candle_core::Error through `?`
        let head = candle_nn::linear(16, 3, vb.pp("head"))?;
        Ok(Self { encoder, head })
    }
}

impl ModuleT for UserModel {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.encoder.forward_t(xs, train)?; // candle's ModuleT on the encoder
        self.head.forward(&h.narrow(1, 0, 1)?.squeeze(1)?)
    }
}

#[test]
fn train_save_load_with_plain_candle() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model = UserModel::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    assert!(
        names.iter().any(|n| n == "encoder.layers.1.filter.gain"),
        "the user's filter parameter is in the model: {names:?}"
    );
    let ids = Tensor::new(&[[3u32, 4, 5, 6, 0, 0], [7, 8, 9, 10, 11, 2]], &dev)?;
    let labels = Tensor::new(&[1u32, 2], &dev)?;
    let gain = || -> candle_core::Result<Vec<f32>> {
        let map = varmap.data().lock().unwrap();
        map["encoder.layers.0.filter.gain"]
            .as_tensor()
            .flatten_all()?
            .to_vec1::<f32>()
    };
    let before = gain()?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    for step in 0..2 {
        model.encoder.dropout_rng().reseed(step);
        let logits = model.forward_t(&ids, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        opt.backward_step(&loss)?;
    }
    assert_ne!(before, gain()?, "training reached the user's filter");

    let dir = std::env::temp_dir().join(format!("convluna-downstream-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("model.safetensors");
    varmap.save(&path)?;
    let expected = model.forward_t(&ids, false)?;

    // a plain, read-only VarBuilder over the mmapped file: no random initialisation anywhere
    // SAFETY: the file is not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &dev)? };
    let loaded = UserModel::new(vb)?;
    let got = loaded.forward_t(&ids, false)?;
    let diff = (expected - got)?
        .abs()?
        .max_keepdim(D::Minus1)?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    assert_eq!(diff, 0.0, "logits differ after save and load");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The crate's typed error survives the trip through `candle_core::Error`.
#[test]
fn typed_errors_convert_to_candle_errors_and_back() {
    let cfg = EncoderConfig::tokens(12, 16).with_stack(
        StackConfig::default()
            .with_block(BlockPreset::Transformer.block(1))
            .with_d_model(15)
            .with_heads(2)
            .with_ffn_dim(32)
            .with_layers(1)
            .with_dropout(0.0),
    );
    let varmap = VarMap::new();
    let build = || -> candle_core::Result<Encoder> {
        Ok(Encoder::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?)
    };
    let err = build().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("d_model"), "{msg}");
    // the typed error is still there
    let inner = convluna::Error::find_in(&err);
    assert!(
        matches!(inner, Some(convluna::Error::Config { field, .. }) if field == "encoder.d_model"),
        "{err:?}"
    );
    // and a candle error inside ours comes back as itself
    let c = candle_core::Error::Msg("boom".into());
    let back: candle_core::Error = convluna::Error::Candle(c).into();
    assert!(matches!(back, candle_core::Error::Msg(m) if m == "boom"));
}

/// The drop-in layer: a user's own embedding (a linear "patch stem" over float features), the
/// crate's [`convluna::Stack`] on top (it owns and threads its memory), a candle-nn head,
/// `candle_nn::AdamW`, `VarMap::save`, a plain `VarBuilder::from_mmaped_safetensors` — and
/// the same logits bit for bit, for ConvLuna, Luna and the Transformer from one config type.
#[test]
fn stack_over_a_users_own_embedding_trains_saves_and_reloads() -> anyhow::Result<()> {
    use convluna::{Stack, StackConfig};
    struct PatchModel {
        stem: candle_nn::Linear,
        stack: Stack,
        head: candle_nn::Linear,
    }
    impl PatchModel {
        fn new(cfg: &StackConfig, vb: VarBuilder) -> candle_core::Result<Self> {
            Ok(Self {
                stem: candle_nn::linear(3, cfg.d_model, vb.pp("stem"))?,
                stack: Stack::new(cfg, vb.pp("stack"))?,
                head: candle_nn::linear(cfg.d_model, 2, vb.pp("head"))?,
            })
        }
        /// `x` [B, L, 3] float features, `mask` [B, L] → logits [B, 2] (mean over valid).
        fn logits(&self, x: &Tensor, mask: &Tensor, train: bool) -> candle_core::Result<Tensor> {
            let h = self.stem.forward(x)?;
            let out = self.stack.forward_masked(&h, Some(mask), train)?;
            let m = mask.unsqueeze(2)?;
            let pooled = out
                .hidden
                .broadcast_mul(&m)?
                .sum(1)?
                .broadcast_div(&m.sum(1)?)?;
            self.head.forward(&pooled)
        }
    }
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("convluna-stack-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (name, cfg) in [
        ("convluna", StackConfig::convluna()),
        ("luna", StackConfig::luna()),
        ("transformer", StackConfig::transformer()),
    ] {
        let cfg = cfg
            .with_d_model(16)
            .with_heads(2)
            .with_ffn_dim(32)
            .with_layers(2)
            .with_memory(4)
            .with_dropout(0.0);
        let varmap = VarMap::new();
        let model = PatchModel::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
        // parameter names as documented: the memory and the blocks under the user's prefix
        let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        assert_eq!(
            names.iter().any(|n| n == "stack.memory"),
            name != "transformer",
            "{names:?}"
        );
        assert!(names.iter().any(|n| n.starts_with("stack.layers.1.")));
        let x = Tensor::randn(0f32, 1., (3, 12, 3), &dev)?;
        let mask = Tensor::new(
            &[
                [1f32; 12],
                [1.; 12],
                [1., 1., 1., 1., 1., 1., 1., 0., 0., 0., 0., 0.],
            ],
            &dev,
        )?;
        let labels = Tensor::new(&[0u32, 1, 1], &dev)?;
        let mut opt = AdamW::new(
            varmap.all_vars(),
            ParamsAdamW {
                lr: 1e-2,
                ..Default::default()
            },
        )?;
        let first = candle_nn::loss::cross_entropy(&model.logits(&x, &mask, true)?, &labels)?;
        for _ in 0..5 {
            let loss = candle_nn::loss::cross_entropy(&model.logits(&x, &mask, true)?, &labels)?;
            opt.backward_step(&loss)?;
        }
        let last = candle_nn::loss::cross_entropy(&model.logits(&x, &mask, true)?, &labels)?;
        assert!(
            last.to_scalar::<f32>()? < first.to_scalar::<f32>()?,
            "{name}: training does not lower the loss"
        );
        let path = dir.join(format!("{name}.safetensors"));
        varmap.save(&path)?;
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &dev)? };
        let reloaded = PatchModel::new(&cfg, vb)?;
        let a = model
            .logits(&x, &mask, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = reloaded
            .logits(&x, &mask, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(a, b, "{name}: reloaded logits differ");
        // padding is ignored: the padded row's logits do not depend on what the padding holds
        let noise = Tensor::randn(0f32, 1., (3, 12, 3), &dev)?;
        let keep = mask.unsqueeze(2)?.broadcast_as((3, 12, 3))?;
        let x2 = (x.broadcast_mul(&keep)? + noise.broadcast_mul(&(1.0 - &keep)?)?)?;
        let c = model
            .logits(&x2, &mask, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (u, v) in a.iter().zip(&c) {
            assert!(
                (u - v).abs() < 1e-5,
                "{name}: padding leaks into the output"
            );
        }
        // bad shapes are typed errors naming the input
        let err = model
            .stack
            .forward(&Tensor::zeros((2, 5, 7), DType::F32, &dev)?);
        assert!(err.unwrap_err().to_string().contains("hidden states"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
