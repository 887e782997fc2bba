//! Same inputs ⇒ bit-identical outputs and gradients, whatever the number of threads.
//!
//! Each model family (ConvLuna with the conv and the max-pool filter, masked and unmasked;
//! Luna; the Transformer) runs a forward and backward pass inside rayon pools of 1, 2, 3 and 5
//! threads, and every gradient must have the same bits. The shapes are large enough that every
//! cross-row reduction of the fused kernels (bias, LayerNorm, filter and scale gradients) is
//! split into several tasks, so a reduction whose combination order follows the work split
//! fails here. `tests/reproducibility.rs` checks the same end to end, on the `lra` example's
//! files, across `RAYON_NUM_THREADS`.

mod common;

use candle_core::{DType, Device, Tensor};
use convluna::*;

fn model(block: BlockConfig) -> ModelConfig {
    ModelConfig {
        encoder: EncoderConfig::tokens(preset::LISTOPS_VOCAB, 1100).with_stack(
            StackConfig::default()
                .with_block(block)
                .with_d_model(32)
                .with_heads(4)
                .with_ffn_dim(48)
                .with_layers(2)
                .with_dropout(0.1),
        ),
        head: HeadConfig {
            num_classes: 10,
            hidden_dim: 24,
            pooling: Pooling::Cls,
            extra_layer: false,
            pair: None,
        },
    }
}

/// Bits of every parameter gradient (by name) and of the loss, for one training step
/// computed in a rayon pool of `threads` threads.
fn gradient_bits(cfg: &ModelConfig, threads: usize) -> Vec<(String, Vec<u64>)> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    pool.install(|| {
        let dev = Device::Cpu;
        let store = ParamStore::new(7);
        let model = Classifier::new(cfg, store.var_builder(DType::F32, &dev)).expect("model");
        // 4 sequences of 1,024 tokens, the last two padded
        let (b, l) = (4usize, 1024usize);
        let mut ids = vec![0u32; b * l];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for (i, x) in ids.iter_mut().enumerate() {
            let len = [l, l, 700, 333][i / l];
            if i % l < len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *x = 1 + (state % 15) as u32;
            }
        }
        let ids = Tensor::from_vec(ids, (b, l), &dev).unwrap();
        let labels = Tensor::new(&[1u32, 7, 3, 0], &dev).unwrap();
        let logits = model.forward_with_mask(&ids, None, true).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        let mut out = vec![(
            "loss".to_string(),
            vec![loss.to_scalar::<f32>().unwrap().to_bits() as u64],
        )];
        for (name, var) in store.vars() {
            // parameters the loss does not reach (the last layer's memory norm under CLS
            // pooling) have no gradient
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let bits = g
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(|v| v.to_bits() as u64)
                .collect();
            out.push((name, bits));
        }
        out
    })
}

fn check(name: &str, block: BlockConfig) {
    let cfg = model(block);
    let reference = gradient_bits(&cfg, 1);
    for threads in [2, 3, 5] {
        let other = gradient_bits(&cfg, threads);
        for ((n1, a), (n2, b)) in reference.iter().zip(&other) {
            assert_eq!(n1, n2);
            let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
            assert_eq!(
                differ,
                0,
                "{name}: {differ} of {} elements of `{n1}` differ between 1 and {threads} threads",
                a.len()
            );
        }
    }
}

#[test]
fn convluna_gradients_do_not_depend_on_the_thread_count() {
    for masked in [true, false] {
        let mut l = common::convluna(16, FilterConfig::authors_conv(), masked);
        l.pack_scale = ScaleConfig::LearnedTemperature { init: 0.0 };
        check(&format!("convluna masked={masked}"), BlockConfig::Luna(l));
    }
}

#[test]
fn pooled_and_depthwise_convluna_gradients_do_not_depend_on_the_thread_count() {
    for filter in [
        FilterConfig::MaxPool {
            kernel: 4,
            stride: 2,
        },
        FilterConfig::Conv {
            kernel: 3,
            stride: 1,
            per_channel: true,
        },
    ] {
        check(
            &format!("convluna {filter:?}"),
            BlockConfig::Luna(common::convluna(16, filter, true)),
        );
    }
}

#[test]
fn luna_gradients_do_not_depend_on_the_thread_count() {
    check("luna", BlockPreset::Luna.block(16));
}

#[test]
fn transformer_gradients_do_not_depend_on_the_thread_count() {
    check("transformer", BlockPreset::Transformer.block(16));
}
