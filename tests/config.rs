//! Config validation (one test per error), presets, JSON and checkpoint round trips.

mod common;
use candle_core::{DType, Device, Tensor};
use convluna::*;

fn base() -> ModelConfig {
    let mut c = LraTask::Listops.paper_model(BlockPreset::Convluna.block(16));
    c.encoder.stack.d_model = 32;
    c.encoder.stack.ffn_dim = 64;
    c.encoder.stack.num_layers = 1;
    c.encoder.max_len = 64;
    c.head.hidden_dim = 64;
    c
}

fn luna(c: &mut ModelConfig) -> &mut LunaConfig {
    match &mut c.encoder.stack.block {
        BlockConfig::Luna(l) => l,
        _ => unreachable!(),
    }
}

fn expect_field(c: &ModelConfig, field: &str) {
    match c.validate() {
        Err(Error::Config { field: f, reason }) => assert_eq!(f, field, "reason: {reason}"),
        other => panic!("expected a config error on `{field}`, got {other:?}"),
    }
    // constructors refuse it too, with the same error
    let r = TaskModel::new(c, ParamStore::new(0).var_builder(DType::F32, &Device::Cpu));
    assert!(matches!(r, Err(Error::Config { .. })));
}

#[test]
fn valid_base() {
    base().validate().unwrap();
}
#[test]
fn d_not_divisible_by_heads() {
    let mut c = base();
    c.encoder.stack.num_heads = 3;
    expect_field(&c, "encoder.d_model");
}
#[test]
fn zero_heads() {
    let mut c = base();
    c.encoder.stack.num_heads = 0;
    expect_field(&c, "encoder.num_heads");
}
#[test]
fn zero_width() {
    let mut c = base();
    c.encoder.stack.d_model = 0;
    expect_field(&c, "encoder.d_model");
}
#[test]
fn zero_ffn() {
    let mut c = base();
    c.encoder.stack.ffn_dim = 0;
    expect_field(&c, "encoder.ffn_dim");
}
#[test]
fn zero_layers() {
    let mut c = base();
    c.encoder.stack.num_layers = 0;
    expect_field(&c, "encoder.num_layers");
}
#[test]
fn zero_max_len() {
    let mut c = base();
    c.encoder.max_len = 0;
    expect_field(&c, "encoder.max_len");
}
#[test]
fn dropout_out_of_range() {
    let mut c = base();
    c.encoder.stack.dropout = 1.0;
    expect_field(&c, "encoder.dropout");
    let mut c = base();
    c.encoder.stack.attention_dropout = -0.1;
    expect_field(&c, "encoder.attention_dropout");
}
#[test]
fn memory_len_zero() {
    let mut c = base();
    luna(&mut c).memory_len = 0;
    expect_field(&c, "encoder.block.memory_len");
}
#[test]
fn kernel_zero() {
    let mut c = base();
    luna(&mut c).filter = FilterConfig::Conv {
        kernel: 0,
        stride: 1,
        per_channel: false,
    };
    expect_field(&c, "encoder.block.filter.kernel");
}
#[test]
fn stride_zero() {
    let mut c = base();
    luna(&mut c).filter = FilterConfig::MaxPool {
        kernel: 2,
        stride: 0,
    };
    expect_field(&c, "encoder.block.filter.stride");
}
#[test]
fn stride_larger_than_input() {
    let mut c = base();
    luna(&mut c).filter = FilterConfig::Conv {
        kernel: 2,
        stride: 100,
        per_channel: false,
    };
    expect_field(&c, "encoder.block.filter.stride");
}
#[test]
fn pool_window_larger_than_input() {
    let mut c = base();
    luna(&mut c).filter = FilterConfig::MaxPool {
        kernel: 100,
        stride: 1,
    };
    expect_field(&c, "encoder.block.filter.kernel");
}
#[test]
fn non_finite_temperature() {
    let mut c = base();
    luna(&mut c).pack_scale = ScaleConfig::LearnedTemperature { init: f64::NAN };
    expect_field(&c, "encoder.block.pack_scale");
}
#[test]
fn bad_memory_init() {
    let mut c = base();
    luna(&mut c).memory_init_std = Some(0.0);
    expect_field(&c, "encoder.block.memory_init_std");
}
#[test]
fn tiny_vocab() {
    let mut c = base();
    c.encoder.input = InputConfig::Tokens { vocab_size: 1 };
    expect_field(&c, "encoder.input.vocab_size");
}
#[test]
fn pixel_std_zero() {
    let mut c = base();
    c.encoder.input = InputConfig::Pixels {
        mean: 0.5,
        std: 0.0,
    };
    expect_field(&c, "encoder.input.std");
}
#[test]
fn odd_width_with_sinusoids() {
    let mut c = base();
    c.encoder.positions = Positions::Sinusoidal;
    c.encoder.stack.d_model = 27;
    c.encoder.stack.num_heads = 3;
    expect_field(&c, "encoder.positions");
}
#[test]
fn cls_pooling_without_cls() {
    let mut c = base();
    c.encoder.cls = false;
    expect_field(&c, "head.pooling");
}
#[test]
fn memory_pooling_on_transformer() {
    let mut c = base();
    c.encoder.stack.block = BlockConfig::Transformer;
    c.head.pooling = Pooling::Memory;
    expect_field(&c, "head.pooling");
}
#[test]
fn one_class() {
    let mut c = base();
    c.head.num_classes = 1;
    expect_field(&c, "head.num_classes");
}
#[test]
fn zero_hidden() {
    let mut c = base();
    c.head.hidden_dim = 0;
    expect_field(&c, "head.hidden_dim");
}
#[test]
fn unknown_preset_and_task() {
    assert!(matches!(
        BlockPreset::from_name("lunar"),
        Err(Error::UnknownPreset { .. })
    ));
    assert!(matches!(
        LraTask::from_name("cifar"),
        Err(Error::UnknownPreset { .. })
    ));
    for (n, p) in BlockPreset::ALL {
        assert_eq!(BlockPreset::from_name(n).unwrap(), p);
        assert_eq!(p.name(), n);
    }
}

#[test]
fn shape_errors_name_the_input() {
    let dev = Device::Cpu;
    let c = base();
    let store = ParamStore::new(0);
    let m = Classifier::new(&c, store.var_builder(DType::F32, &dev)).unwrap();
    let ids = Tensor::new(&[[1u32, 2, 3]], &dev).unwrap();
    let e = m
        .forward_with_mask(&ids.reshape(3).unwrap(), None, false)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Shape { input, .. } if input == "input"),
        "{e}"
    );
    let e = m
        .forward_with_mask(
            &ids,
            Some(&Tensor::ones((1, 4), DType::F32, &dev).unwrap()),
            false,
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::Shape { input, .. } if input == "mask"),
        "{e}"
    );
    let e = m
        .forward_with_mask(&Tensor::new(&[[1u32, 99]], &dev).unwrap(), None, false)
        .unwrap_err();
    assert!(e.to_string().contains("token ids in [0, 16)"), "{e}");
    let e = m
        .forward_with_mask(
            &Tensor::zeros((1, 65), DType::U32, &dev).unwrap(),
            None,
            false,
        )
        .unwrap_err();
    assert!(e.to_string().contains("max_len"), "{e}");
    let e = m
        .forward_with_mask(
            &Tensor::zeros((1, 5), DType::F32, &dev).unwrap(),
            None,
            false,
        )
        .unwrap_err();
    assert!(e.to_string().contains("integer token ids"), "{e}");
}

#[test]
fn every_preset_and_task_is_valid_and_round_trips_json() {
    for (_, t) in LraTask::ALL {
        for (_, p) in BlockPreset::ALL {
            let c = t.paper_model(p.block(256));
            c.validate().unwrap();
            let back = ModelConfig::from_json(&c.to_json().unwrap()).unwrap();
            assert_eq!(back, c);
        }
    }
    let e = ModelConfig::from_json("{\"encoder\": 3}").unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn checkpoint_round_trip_and_names() {
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("convluna-ckpt-{}", std::process::id()));
    let c = base();
    let store = ParamStore::new(3);
    let m = Classifier::new(&c, store.var_builder(DType::F32, &dev)).unwrap();
    let names: Vec<String> = store.names().into_iter().map(|(n, _)| n).collect();
    for expected in [
        "embed.weight",
        "pos.weight",
        "cls",
        "memory",
        "layers.0.attn.q_proj.weight",
        "layers.0.attn.k_proj.bias",
        "layers.0.attn.o_proj.weight",
        "layers.0.filter.weight",
        "layers.0.pack_log_temperature",
        "layers.0.norm_x.weight",
        "layers.0.norm_p.bias",
        "layers.0.norm_ffn.weight",
        "layers.0.ffn.fc1.weight",
        "head.norm.weight",
        "head.fc1.weight",
        "head.out.bias",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing {expected} in {names:?}"
        );
    }
    assert_eq!(
        store.get("layers.0.ffn.fc1.weight").unwrap().dims(),
        &[64, 32],
        "Linear weight is [out, in]"
    );
    assert_eq!(store.get("layers.0.filter.weight").unwrap().dims(), &[4, 4]);
    save_model(&dir, &c, &store).unwrap();
    let (c2, _, m2) = load_model(&dir, DType::F32, &dev).unwrap();
    assert_eq!(c2, c);
    let ids = Tensor::new(&[[1u32, 2, 3, 15, 0]], &dev).unwrap();
    let a = m.forward_with_mask(&ids, None, false).unwrap();
    let b = m2
        .forward_t(
            TaskInputs::Single {
                input: &ids,
                mask: None,
            },
            false,
        )
        .unwrap();
    assert_eq!(common::max_abs_diff(&a, &b), 0.0);
    // the loaded model is built from the file's tensors: a missing parameter is an error
    // naming it (never a silent random initialisation), and so is a tensor the model lacks
    let w = dir.join("model.safetensors");
    let mut tensors = convluna::params::load_tensors(&w, &dev).unwrap();
    let head_w = tensors.remove("head.out.weight").unwrap();
    convluna::params::save_tensors(&tensors, &w, None).unwrap();
    let e = load_model(&dir, DType::F32, &dev).unwrap_err().to_string();
    assert!(e.contains("missing parameter `head.out.weight`"), "{e}");
    tensors.insert("head.out.weight".into(), head_w);
    tensors.insert(
        "head.extra".into(),
        Tensor::zeros(3, DType::F32, &dev).unwrap(),
    );
    convluna::params::save_tensors(&tensors, &w, None).unwrap();
    let e = load_model(&dir, DType::F32, &dev).unwrap_err().to_string();
    assert!(e.contains("unexpected parameter `head.extra`"), "{e}");
    tensors.remove("head.extra");
    convluna::params::save_tensors(&tensors, &w, None).unwrap();
    // the loaded parameters are trainable variables of the returned store
    let (_, store2, _) = load_model(&dir, DType::F32, &dev).unwrap();
    assert_eq!(store2.len(), store.len());
    // a truncated checkpoint is a clear error naming the file
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_model(&dir, DType::F32, &dev).unwrap_err();
    assert!(
        matches!(&e, Error::Format { path, .. } if path.ends_with("model.safetensors")),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn same_seed_same_weights_different_seed_different() {
    let dev = Device::Cpu;
    let c = base();
    let s1 = ParamStore::new(1);
    let s2 = ParamStore::new(1);
    let s3 = ParamStore::new(2);
    for s in [&s1, &s2, &s3] {
        Classifier::new(&c, s.var_builder(DType::F32, &dev)).unwrap();
    }
    let w =
        |s: &ParamStore| common::to_vec(s.get("layers.0.attn.q_proj.weight").unwrap().as_tensor());
    assert_eq!(w(&s1), w(&s2));
    assert_ne!(w(&s1), w(&s3));
}
