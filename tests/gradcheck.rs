//! Finite-difference gradient checks in f64, batch 2, for every block family and filter.

mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::*;
use convluna::*;

const B: usize = 2;
const L: usize = 9;
const D: usize = 8;
const H: usize = 2;
const M: usize = 3;
const F: usize = 12;

fn check_luna(cfg: &LunaConfig, masked_lens: &[usize]) -> f64 {
    let dev = Device::Cpu;
    let store = ParamStore::new(7);
    let block = LunaBlock::new(cfg, &dims(D, H, F), store.var_builder(DType::F64, &dev)).unwrap();
    let x = Var::from_tensor(&randn(&[B, L, D], 1, DType::F64, &dev)).unwrap();
    let p = Var::from_tensor(&randn(&[B, M, D], 2, DType::F64, &dev)).unwrap();
    let rx = randn(&[B, L, D], 3, DType::F64, &dev);
    let rp = randn(&[B, M, D], 4, DType::F64, &dev);
    let mask = mask(masked_lens, L, DType::F64, &dev);
    let loss = || {
        let o = block
            .forward_t(x.as_tensor(), p.as_tensor(), Some(&mask), false)
            .unwrap();
        ((o.x * &rx).unwrap().sum_all().unwrap() + (o.memory * &rp).unwrap().sum_all().unwrap())
            .unwrap()
    };
    let mut vars = store.vars();
    vars.push(("input.x".into(), x.clone()));
    vars.push(("input.memory".into(), p.clone()));
    gradcheck(&vars, loss, 5)
}

#[test]
fn convluna_every_filter_masked_and_unmasked() {
    for (name, f) in filters() {
        for masked in [true, false] {
            let err = check_luna(&convluna(M, f.clone(), masked), &[L, 6]);
            eprintln!("{name} masked={masked}: max |fd − analytic| = {err:.2e}");
        }
    }
}

#[test]
fn luna_variants_and_scales() {
    let cfgs = [
        luna_cfg(
            M,
            Projections::Shared,
            ScaleConfig::InvSqrtHeadDim,
            ScaleConfig::InvSqrtHeadDim,
            FilterConfig::Identity,
            true,
        ),
        luna_cfg(
            M,
            Projections::Separate,
            ScaleConfig::InvSqrtHeadDim,
            ScaleConfig::InvSqrtHeadDim,
            FilterConfig::Identity,
            true,
        ),
        luna_cfg(
            M,
            Projections::Separate,
            ScaleConfig::FixedTemperature { tau: 0.5 },
            ScaleConfig::LearnedTemperature { init: -0.2 },
            FilterConfig::authors_conv(),
            true,
        ),
        luna_cfg(
            1,
            Projections::SharedNoValue,
            ScaleConfig::LearnedTemperature { init: 0.0 },
            ScaleConfig::None,
            FilterConfig::authors_conv(),
            true,
        ),
    ];
    for c in &cfgs {
        check_luna(c, &[L, 4]);
    }
}

#[test]
fn transformer_block() {
    let dev = Device::Cpu;
    let store = ParamStore::new(3);
    let block = TransformerBlock::new(&dims(D, H, F), store.var_builder(DType::F64, &dev)).unwrap();
    let x = Var::from_tensor(&randn(&[B, L, D], 1, DType::F64, &dev)).unwrap();
    let rx = randn(&[B, L, D], 3, DType::F64, &dev);
    let mask = mask(&[L, 5], L, DType::F64, &dev);
    let loss = || {
        (block.forward_t(x.as_tensor(), Some(&mask), false).unwrap() * &rx)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let mut vars = store.vars();
    vars.push(("input.x".into(), x.clone()));
    gradcheck(&vars, loss, 5);
}

/// The two locality controls: the Transformer with the ConvLuna filter on its keys and
/// values, and the attention-free conv mixer, each with and without a mask.
#[test]
fn locality_control_blocks() {
    let dev = Device::Cpu;
    for masked in [true, false] {
        for mixer in [false, true] {
            let store = ParamStore::new(5);
            let vb = store.var_builder(DType::F64, &dev);
            let f =
                convluna::filter::build(&FilterConfig::authors_conv(), H, D / H, vb.pp("filter"))
                    .unwrap();
            let block = if mixer {
                EncoderBlock::ConvMixer(ConvMixerBlock::new(&dims(D, H, F), f, vb).unwrap())
            } else {
                EncoderBlock::Transformer(
                    TransformerBlock::with_filter(&dims(D, H, F), f, vb).unwrap(),
                )
            };
            let x = Var::from_tensor(&randn(&[B, L, D], 1, DType::F64, &dev)).unwrap();
            let rx = randn(&[B, L, D], 3, DType::F64, &dev);
            let m = mask(&[L, 5], L, DType::F64, &dev);
            let m = masked.then_some(&m);
            let loss = || {
                let y = match &block {
                    EncoderBlock::ConvMixer(b) => b.forward_t(x.as_tensor(), m, false),
                    EncoderBlock::Transformer(b) => b.forward_t(x.as_tensor(), m, false),
                    EncoderBlock::Luna(_) => unreachable!(),
                };
                (y.unwrap() * &rx).unwrap().sum_all().unwrap()
            };
            let mut vars = store.vars();
            vars.push(("input.x".into(), x.clone()));
            let err = gradcheck(&vars, loss, 5);
            eprintln!("mixer={mixer} masked={masked}: max |fd − analytic| = {err:.2e}");
        }
    }
}

fn small_model(
    block: BlockConfig,
    input: InputConfig,
    pooling: Pooling,
    pair: Option<PairFeatures>,
    extra: bool,
) -> ModelConfig {
    ModelConfig {
        encoder: EncoderConfig {
            input,
            max_len: 8,
            positions: Positions::Learned,
            cls: true,
            stack: StackConfig::default()
                .with_block(block)
                .with_d_model(D)
                .with_heads(H)
                .with_ffn_dim(F)
                .with_layers(2)
                .with_dropout(0.0),
        },
        head: HeadConfig {
            num_classes: 3,
            hidden_dim: F,
            pooling,
            extra_layer: extra,
            pair,
        },
    }
}

#[test]
fn encoders_and_heads() {
    let dev = Device::Cpu;
    let ids = Tensor::new(
        &[[3u32, 5, 7, 1, 2, 9, 4, 6], [4, 9, 2, 8, 0, 0, 0, 0]],
        &dev,
    )
    .unwrap();
    let ids2 = Tensor::new(
        &[[1u32, 2, 3, 0, 0, 0, 0, 0], [4, 9, 2, 8, 6, 5, 1, 1]],
        &dev,
    )
    .unwrap();
    let pixels = randn(&[2, 8], 9, DType::F64, &dev)
        .affine(127.0, 128.0)
        .unwrap();
    let r = randn(&[2, 3], 5, DType::F64, &dev);
    let cases = [
        small_model(
            BlockPreset::ConvlunaMasked.block(M),
            InputConfig::Tokens { vocab_size: 10 },
            Pooling::Cls,
            None,
            false,
        ),
        small_model(
            BlockPreset::Luna.block(M),
            InputConfig::Tokens { vocab_size: 10 },
            Pooling::Mean,
            None,
            false,
        ),
        small_model(
            BlockPreset::LunaMa.block(M),
            InputConfig::Tokens { vocab_size: 10 },
            Pooling::Memory,
            Some(PairFeatures::Interaction),
            false,
        ),
        small_model(
            BlockPreset::Transformer.block(M),
            InputConfig::Pixels {
                mean: 0.5,
                std: 0.5,
            },
            Pooling::Cls,
            None,
            true,
        ),
        small_model(
            BlockPreset::Convluna.block(M),
            InputConfig::Tokens { vocab_size: 10 },
            Pooling::Cls,
            Some(PairFeatures::Concat),
            false,
        ),
    ];
    for cfg in &cases {
        let store = ParamStore::new(11);
        let model = TaskModel::new(cfg, store.var_builder(DType::F64, &dev)).unwrap();
        // learned positions start at zero; move them so their gradient is exercised off zero
        let pos = store.get("pos.weight").unwrap();
        pos.set(
            &randn(pos.dims(), 21, DType::F64, &dev)
                .affine(0.1, 0.0)
                .unwrap(),
        )
        .unwrap();
        let loss = || {
            let inputs = match (&model, cfg.encoder.input) {
                (TaskModel::Pair(_), _) => TaskInputs::Pair {
                    input1: &ids,
                    mask1: None,
                    input2: &ids2,
                    mask2: None,
                },
                (_, InputConfig::Pixels { .. }) => TaskInputs::Single {
                    input: &pixels,
                    mask: None,
                },
                _ => TaskInputs::Single {
                    input: &ids,
                    mask: None,
                },
            };
            (model.forward_t(inputs, false).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        // token embeddings of unused ids legitimately get no gradient; check the rest
        let vars: Vec<_> = store.vars().into_iter().collect();
        gradcheck(&vars, loss, 4);
    }
}
