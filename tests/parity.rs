//! Parity with the independent PyTorch reference (`scripts/reference.py`): forward outputs,
//! input gradients and every parameter gradient agree to 1e-5 in f32.
//!
//! `CONVLUNA_TEST_DEVICE=cuda` runs the same checks on a GPU (build with `--features cuda`);
//! `CONVLUNA_TEST_DTYPE=bf16` computes in bf16 with the looser tolerance of
//! `common::test_dtype` (5e-2 of the scale).

mod common;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor, Var};
use common::*;
use convluna::params::load_tensors;
use convluna::*;

fn fixture(name: &str) -> (PathBuf, HashMap<String, Tensor>) {
    // the source tree of the build, or (a binary carried to another machine) `tests/fixtures`
    // below the working directory, or CONVLUNA_FIXTURES
    let dir = std::env::var_os("CONVLUNA_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
            if built.exists() {
                built
            } else {
                PathBuf::from("tests/fixtures")
            }
        });
    let path = dir.join(format!("{name}.safetensors"));
    let (dtype, _) = test_dtype();
    let t = load_tensors(&path, &test_device()).unwrap_or_else(|e| panic!("{e}"));
    let t = t
        .into_iter()
        .map(|(k, v)| {
            let v = if v.dtype() == DType::F32 && !k.starts_with("input.ids") {
                v.to_dtype(dtype).unwrap()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    (path, t)
}

fn with_prefix(t: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    t.iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
        .collect()
}

/// Largest |a − b| relative to max(1, max |b|); panics above TOL.
fn agree(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    let tol = test_dtype().1;
    let err = max_abs_diff(got, want);
    let scale = to_vec(want).iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let rel = err / scale;
    assert!(
        rel <= tol,
        "{what}: max |Δ| = {err:.3e} (scale {scale:.2}), above {tol:e}"
    );
    rel
}

fn block_cfg(case: &str, masked: bool) -> Option<LunaConfig> {
    let conv = |k, s, pc| FilterConfig::Conv {
        kernel: k,
        stride: s,
        per_channel: pc,
    };
    let tau = ScaleConfig::LearnedTemperature { init: 0.0 };
    Some(match case {
        "convluna_conv4s1" => luna_cfg(
            3,
            Projections::SharedNoValue,
            tau,
            ScaleConfig::None,
            conv(4, 1, false),
            masked,
        ),
        "convluna_conv4s2" => luna_cfg(
            3,
            Projections::SharedNoValue,
            tau,
            ScaleConfig::None,
            conv(4, 2, false),
            masked,
        ),
        "convluna_pool4s2" => luna_cfg(
            3,
            Projections::SharedNoValue,
            tau,
            ScaleConfig::None,
            FilterConfig::MaxPool {
                kernel: 4,
                stride: 2,
            },
            masked,
        ),
        "convluna_identity" => luna_cfg(
            3,
            Projections::SharedNoValue,
            tau,
            ScaleConfig::None,
            FilterConfig::Identity,
            masked,
        ),
        "convluna_depthwise3s1" => luna_cfg(
            3,
            Projections::SharedNoValue,
            tau,
            tau,
            conv(3, 1, true),
            masked,
        ),
        "luna_authors" => luna_cfg(
            3,
            Projections::Shared,
            ScaleConfig::InvSqrtHeadDim,
            ScaleConfig::InvSqrtHeadDim,
            FilterConfig::Identity,
            masked,
        ),
        "luna_ma" => luna_cfg(
            3,
            Projections::Separate,
            ScaleConfig::InvSqrtHeadDim,
            ScaleConfig::InvSqrtHeadDim,
            FilterConfig::Identity,
            masked,
        ),
        "transformer" | "transformer_conv4s1" | "convmixer_conv4s1" => return None,
        other => panic!("unknown case {other}"),
    })
}

fn check_grads(
    case: &str,
    store: &ParamStore,
    grads: &candle_core::backprop::GradStore,
    f: &HashMap<String, Tensor>,
) -> f64 {
    let want = with_prefix(f, "grad.param.");
    assert_eq!(
        want.len(),
        store.len(),
        "{case}: fixture has {} parameter gradients, model {} parameters",
        want.len(),
        store.len()
    );
    let mut worst: f64 = 0.0;
    for (name, var) in store.vars() {
        let w = want
            .get(&name)
            .unwrap_or_else(|| panic!("{case}: no gradient for `{name}` in the fixture"));
        let g = grads
            .get(&var)
            .cloned()
            .unwrap_or_else(|| var.zeros_like().unwrap());
        worst = worst.max(agree(&format!("{case}: grad of {name}"), &g, w));
    }
    worst
}

fn run_block(case: &str, masked: bool) -> f64 {
    let name = format!("{case}_{}", if masked { "mask" } else { "nomask" });
    let (path, f) = fixture(&name);
    let dev = test_device();
    let store = ParamStore::new(0);
    let vb = store.var_builder(test_dtype().0, &dev);
    let cfg = block_cfg(case, masked);
    let d = dims(16, 4, 32);
    let conv4 =
        || convluna::filter::build(&FilterConfig::authors_conv(), 4, 4, vb.pp("filter")).unwrap();
    let blk = match (&cfg, case) {
        (Some(c), _) => EncoderBlock::Luna(LunaBlock::new(c, &d, vb.clone()).unwrap()),
        (None, "transformer_conv4s1") => EncoderBlock::Transformer(
            TransformerBlock::with_filter(&d, conv4(), vb.clone()).unwrap(),
        ),
        (None, "convmixer_conv4s1") => {
            EncoderBlock::ConvMixer(ConvMixerBlock::new(&d, conv4(), vb.clone()).unwrap())
        }
        (None, _) => EncoderBlock::Transformer(TransformerBlock::new(&d, vb.clone()).unwrap()),
    };
    store
        .assign(&with_prefix(&f, "param."), &path)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let x = Var::from_tensor(&f["input.x"]).unwrap();
    let mask = &f["input.mask"];
    let mut worst: f64 = 0.0;
    let (loss, mem) = match &blk {
        EncoderBlock::Luna(b) => {
            let p = Var::from_tensor(&f["input.memory"]).unwrap();
            let o = b
                .forward_traced(x.as_tensor(), p.as_tensor(), Some(mask), false)
                .unwrap();
            worst = worst.max(agree(&format!("{name}: output.x"), &o.x, &f["output.x"]));
            worst = worst.max(agree(
                &format!("{name}: output.memory"),
                &o.memory,
                &f["output.memory"],
            ));
            worst = worst.max(agree(
                &format!("{name}: pack attention"),
                o.pack_attention.as_ref().unwrap(),
                &f["output.pack_attention"],
            ));
            let loss = ((&o.x * &f["input.rx"]).unwrap().sum_all().unwrap()
                + (&o.memory * &f["input.rp"]).unwrap().sum_all().unwrap())
            .unwrap();
            (loss, Some(p))
        }
        EncoderBlock::Transformer(b) => {
            // the Transformer block takes its key mask as an argument: `_nomask` = no mask
            let y = b
                .forward_t(x.as_tensor(), masked.then_some(mask), false)
                .unwrap();
            worst = worst.max(agree(&format!("{name}: output.x"), &y, &f["output.x"]));
            ((&y * &f["input.rx"]).unwrap().sum_all().unwrap(), None)
        }
        EncoderBlock::ConvMixer(b) => {
            let y = b
                .forward_t(x.as_tensor(), masked.then_some(mask), false)
                .unwrap();
            worst = worst.max(agree(&format!("{name}: output.x"), &y, &f["output.x"]));
            ((&y * &f["input.rx"]).unwrap().sum_all().unwrap(), None)
        }
    };
    let grads = loss.backward().unwrap();
    worst = worst.max(agree(
        &format!("{name}: grad.x"),
        grads.get(&x).unwrap(),
        &f["grad.x"],
    ));
    if let Some(p) = mem {
        worst = worst.max(agree(
            &format!("{name}: grad.memory"),
            grads.get(&p).unwrap(),
            &f["grad.memory"],
        ));
    }
    worst = worst.max(check_grads(&name, &store, &grads, &f));
    eprintln!("parity {name}: largest relative error {worst:.2e}");
    worst
}

macro_rules! block_case {
    ($fn:ident, $case:expr) => {
        #[test]
        fn $fn() {
            run_block($case, true);
            run_block($case, false);
        }
    };
}
block_case!(convluna_conv_k4_s1, "convluna_conv4s1");
block_case!(convluna_conv_k4_s2, "convluna_conv4s2");
block_case!(convluna_pool_k4_s2, "convluna_pool4s2");
block_case!(convluna_identity, "convluna_identity");
block_case!(
    convluna_depthwise_k3_s1_unpack_temperature,
    "convluna_depthwise3s1"
);
block_case!(luna_authors, "luna_authors");
block_case!(luna_ma, "luna_ma");
block_case!(transformer, "transformer");
block_case!(transformer_with_conv_on_keys_values, "transformer_conv4s1");
block_case!(conv_mixer_without_attention, "convmixer_conv4s1");

fn encoder_cfg(case: &str, masked: bool) -> ModelConfig {
    let (input, positions, cls, block, pooling, extra, pair, classes) = match case {
        "encoder_convluna" => (
            InputConfig::Tokens { vocab_size: 20 },
            Positions::Learned,
            true,
            BlockConfig::Luna(block_cfg("convluna_conv4s1", masked).unwrap()),
            Pooling::Cls,
            false,
            None,
            3,
        ),
        "encoder_transformer_image" => (
            InputConfig::Pixels {
                mean: 0.5,
                std: 0.5,
            },
            Positions::Sinusoidal,
            false,
            BlockConfig::Transformer,
            Pooling::Mean,
            true,
            None,
            4,
        ),
        "encoder_pair_luna_ma" => (
            InputConfig::Tokens { vocab_size: 20 },
            Positions::Learned,
            true,
            BlockConfig::Luna(block_cfg("luna_ma", masked).unwrap()),
            Pooling::Memory,
            false,
            Some(PairFeatures::Interaction),
            2,
        ),
        "encoder_pair_convluna" => (
            InputConfig::Tokens { vocab_size: 20 },
            Positions::Learned,
            true,
            BlockConfig::Luna(block_cfg("convluna_conv4s1", masked).unwrap()),
            Pooling::Cls,
            false,
            Some(PairFeatures::Concat),
            2,
        ),
        other => panic!("unknown case {other}"),
    };
    ModelConfig {
        encoder: EncoderConfig {
            input,
            max_len: 10,
            positions,
            cls,
            stack: StackConfig::default()
                .with_block(block)
                .with_d_model(16)
                .with_heads(4)
                .with_ffn_dim(32)
                .with_layers(2)
                .with_dropout(0.0),
        },
        head: HeadConfig {
            num_classes: classes,
            hidden_dim: 32,
            pooling,
            extra_layer: extra,
            pair,
        },
    }
}

fn run_encoder(case: &str, masked: bool) -> f64 {
    let name = if masked {
        case.to_string()
    } else {
        format!("{case}_nomask")
    };
    let (path, f) = fixture(&name);
    let dev = test_device();
    let cfg = encoder_cfg(case, masked);
    let store = ParamStore::new(0);
    let model = TaskModel::new(&cfg, store.var_builder(test_dtype().0, &dev)).unwrap();
    store
        .assign(&with_prefix(&f, "param."), &path)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let logits = match &model {
        TaskModel::Pair(_) => model
            .forward_t(
                TaskInputs::Pair {
                    input1: &f["input.ids1"],
                    mask1: Some(&f["input.mask1"]),
                    input2: &f["input.ids2"],
                    mask2: Some(&f["input.mask2"]),
                },
                false,
            )
            .unwrap(),
        TaskModel::Single(_) => {
            let input = f
                .get("input.ids")
                .or_else(|| f.get("input.pixels"))
                .unwrap();
            model
                .forward_t(
                    TaskInputs::Single {
                        input,
                        mask: Some(&f["input.mask"]),
                    },
                    false,
                )
                .unwrap()
        }
    };
    let mut worst = agree(&format!("{name}: logits"), &logits, &f["output.logits"]);
    let grads = (&logits * &f["input.r"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    worst = worst.max(check_grads(&name, &store, &grads, &f));
    eprintln!("parity {name}: largest relative error {worst:.2e}");
    worst
}

#[test]
fn encoder_convluna_classifier() {
    run_encoder("encoder_convluna", true);
    run_encoder("encoder_convluna", false);
}

#[test]
fn encoder_transformer_pixels_mean_pooling_image_head() {
    run_encoder("encoder_transformer_image", true);
}

#[test]
fn encoder_pair_luna_ma_memory_pooling() {
    run_encoder("encoder_pair_luna_ma", true);
}

/// The paper preset's retrieval model: ConvLuna (unmasked) with the authors' `DualClassifier`
/// (`[u; v]` of the CLS vectors, no LayerNorm, f → f/2).
#[test]
fn encoder_pair_convluna_authors_dual_classifier() {
    run_encoder("encoder_pair_convluna", false);
}
