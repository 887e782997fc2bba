//! Trainer: resume equivalence, the non-finite guard, corrupted checkpoints, schedules.

mod common;
use std::path::PathBuf;

use candle_core::{DType, Device};
use convluna::data::{ListOpsConfig, ListOpsDataset, Splits};
use convluna::layers::DropoutRng;
use convluna::optim::{AdamWConfig, Schedule};
use convluna::train::{Event, NonFinitePolicy, TrainConfig, TrainModel, Trainer};
use convluna::*;

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("convluna-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn splits() -> Splits {
    let cfg = ListOpsConfig {
        min_len: 4,
        max_len: 40,
        max_depth: 3,
        max_args: 4,
        leaf_prob: 0.5,
    };
    ListOpsDataset::generate_splits(&cfg, 96, 24, 24, 3, 40)
}

fn model(block: BlockConfig) -> ModelConfig {
    ModelConfig {
        encoder: EncoderConfig::tokens(preset::LISTOPS_VOCAB, 40).with_stack(
            StackConfig::default()
                .with_block(block)
                .with_d_model(16)
                .with_heads(2)
                .with_ffn_dim(24)
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

fn train_cfg(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 8,
        accumulate: 2,
        lr: 3e-3,
        schedule: Schedule::Cosine {
            warmup: 2,
            total: steps,
            min_ratio: 0.1,
        },
        optimizer: AdamWConfig {
            weight_decay: 0.01,
            exempt_norms_biases_temperature: true,
            ..Default::default()
        },
        clip_norm: Some(1.0),
        eval_every: 4,
        eval_batches: Some(2),
        checkpoint_every: 3,
        log_every: 2,
        seed: 5,
        pad_to_task_length: false,
        non_finite: NonFinitePolicy::Stop,
        diagnostics: true,
        diagnostic_examples: 4,
        patience: None,
        eval_at_start: false,
    }
}

#[test]
fn killed_and_resumed_run_ends_with_the_same_weights() {
    let data = splits();
    let mc = model(BlockPreset::ConvlunaMasked.block(4));
    let tc = train_cfg(13);
    let dev = Device::Cpu;
    // uninterrupted
    let a_dir = tmp("uninterrupted");
    let mut a = Trainer::new(&mc, &tc, DType::F32, &dev).unwrap();
    let sa = a.fit(&data, &a_dir, false, &mut |_| {}).unwrap();
    // "killed" after step 8: the last checkpoint is the evaluation at step 8... use 7 → checkpoint at 6
    let b_dir = tmp("killed");
    let mut b = Trainer::new(&mc, &tc, DType::F32, &dev).unwrap();
    assert!(b
        .fit_until(&data, &b_dir, false, Some(7), &mut |_| {})
        .unwrap()
        .is_none());
    drop(b);
    let mut resumed_at = 0;
    let mut c = Trainer::new(&mc, &tc, DType::F32, &dev).unwrap();
    let sc = c
        .fit(&data, &b_dir, true, &mut |e| {
            if let Event::Resumed { step } = e {
                resumed_at = *step
            }
        })
        .unwrap();
    assert_eq!(
        resumed_at, 6,
        "resumes from the last checkpoint before the kill"
    );
    let (wa, wc) = (a.weights(), c.weights());
    assert_eq!(wa.len(), wc.len());
    for (name, ta) in &wa {
        let d = common::max_abs_diff(ta, &wc[name]);
        assert_eq!(d, 0.0, "{name} differs by {d}");
    }
    assert_eq!(sa.test.acc, sc.test.acc);
    assert_eq!(sa.best_step, sc.best_step);
    // the metrics file holds each step once
    let text = std::fs::read_to_string(b_dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("\"kind\":\"train\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![2, 4, 6, 8, 10, 12, 13]);
    let plots = report::plot_run(&b_dir, "test").unwrap();
    assert!(plots.iter().any(|p| p.ends_with("memory.svg")));
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
}

/// A killed and resumed run reports the wall time of both processes: the checkpoint records
/// the time trained so far, and the resumed process adds its own to it.
#[test]
fn wall_time_is_summed_over_resumes() {
    let data = splits();
    let mc = model(BlockPreset::ConvlunaMasked.block(4));
    let tc = train_cfg(13);
    let dev = Device::Cpu;
    let dir = tmp("wall-time");
    // 12 steps and 3 evaluations, "killed" right after the checkpoint at step 12
    let mut a = Trainer::new(&mc, &tc, DType::F32, &dev).unwrap();
    assert!(a
        .fit_until(&data, &dir, false, Some(12), &mut |_| {})
        .unwrap()
        .is_none());
    drop(a);
    let ck = dir.join("checkpoints");
    let latest = std::fs::read_to_string(ck.join("LATEST")).unwrap();
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ck.join(latest.trim()).join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"], 12);
    let before = state["elapsed_s"]
        .as_f64()
        .expect("state.json records the wall time so far");
    assert!(before > 0.0, "{before}");
    // the resumed process trains one step; its summary counts the first process's time too
    let mut b = Trainer::new(&mc, &tc, DType::F32, &dev).unwrap();
    let mut last_elapsed = 0.0;
    let s = b
        .fit(&data, &dir, true, &mut |e| {
            if let Event::Step { metrics, .. } = e {
                last_elapsed = metrics.elapsed_s
            }
        })
        .unwrap();
    assert_eq!(s.steps, 13);
    assert!(
        last_elapsed > before && s.wall_s >= last_elapsed,
        "checkpoint {before} s, step 13 at {last_elapsed} s, summary {} s",
        s.wall_s
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn transformer_and_luna_train_too() {
    let data = splits();
    for block in [
        BlockConfig::Transformer,
        BlockPreset::Luna.block(4),
        BlockPreset::LunaMa.block(4),
    ] {
        let dir = tmp("families");
        let mut t = Trainer::new(&model(block), &train_cfg(4), DType::F32, &Device::Cpu).unwrap();
        let s = t.fit(&data, &dir, false, &mut |_| {}).unwrap();
        assert!(s.test.loss.is_finite());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn non_finite_loss_stops_with_the_step_or_is_skipped() {
    let data = splits();
    let mc = model(BlockPreset::ConvlunaMasked.block(4));
    let dir = tmp("nan");
    let mut t = Trainer::new(&mc, &train_cfg(3), DType::F32, &Device::Cpu).unwrap();
    let cls = t.params().get("cls").unwrap();
    cls.set(&(cls.as_tensor() * f64::NAN).unwrap()).unwrap();
    match t.fit(&data, &dir, false, &mut |_| {}) {
        Err(Error::NonFinite { step: 1, what, .. }) => assert_eq!(what, "loss"),
        other => panic!("expected a non-finite error at step 1, got {other:?}"),
    }
    let mut cfg = train_cfg(3);
    cfg.non_finite = NonFinitePolicy::Skip;
    let mut t = Trainer::new(&mc, &cfg, DType::F32, &Device::Cpu).unwrap();
    let cls = t.params().get("cls").unwrap();
    cls.set(&(cls.as_tensor() * f64::NAN).unwrap()).unwrap();
    // every step is skipped; the evaluation then sees NaN logits but the run completes
    let r = t.fit(&data, &dir, false, &mut |_| {});
    let s = r.unwrap();
    assert_eq!(s.skipped_steps, 3);
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(text.matches("\"kind\":\"skipped\"").count(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupted_or_half_written_checkpoints_are_refused() {
    let data = splits();
    let mc = model(BlockPreset::ConvlunaMasked.block(4));
    let tc = train_cfg(6);
    let dir = tmp("corrupt");
    let mut t = Trainer::new(&mc, &tc, DType::F32, &Device::Cpu).unwrap();
    t.fit_until(&data, &dir, false, Some(4), &mut |_| {})
        .unwrap();
    let ckpt = dir.join("checkpoints/step-00000004");
    // flip one byte of the weights
    let w = ckpt.join("model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&w, &bytes).unwrap();
    let mut r = Trainer::new(&mc, &tc, DType::F32, &Device::Cpu).unwrap();
    let e = r.resume(&dir).unwrap_err();
    assert!(
        matches!(&e, Error::Format { path, reason } if path.ends_with("model.safetensors") && reason.contains("corrupted")),
        "{e}"
    );
    // truncated state.json
    std::fs::write(ckpt.join("state.json"), b"{\"step\": 4, \"epo").unwrap();
    let e = r.resume(&dir).unwrap_err();
    assert!(
        matches!(&e, Error::Format { path, .. } if path.ends_with("state.json")),
        "{e}"
    );
    // a pointer to a checkpoint that was never completed (killed before the rename)
    std::fs::write(dir.join("checkpoints/LATEST"), b"step-00000099").unwrap();
    let e = r.resume(&dir).unwrap_err();
    assert!(e.to_string().contains("step-00000099"), "{e}");
    // nothing to resume from
    let e = r.resume(&tmp("empty")).unwrap_err();
    assert!(e.to_string().contains("LATEST"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn schedules() {
    // update t uses λ(t − 1), as LambdaLR stepped by Lightning: the first update has lr 0
    let r = Schedule::Rsqrt { warmup: 100 };
    assert_eq!(r.lr(1.0, 1), 0.0);
    assert!((r.lr(1.0, 2) - 0.01 / 10.0).abs() < 1e-15);
    assert!((r.lr(1.0, 51) - 0.5 / 10.0).abs() < 1e-12);
    assert!((r.lr(1.0, 101) - 0.1).abs() < 1e-12);
    assert!((r.lr(1.0, 401) - 0.05).abs() < 1e-12);
    let c = Schedule::Cosine {
        warmup: 10,
        total: 110,
        min_ratio: 0.0,
    };
    assert!((c.lr(2.0, 5) - 1.0).abs() < 1e-12);
    assert!((c.lr(2.0, 60) - 1.0).abs() < 1e-12);
    assert!(c.lr(2.0, 110).abs() < 1e-12);
    let w = Schedule::WarmupConstant { warmup: 10 };
    assert!((w.lr(2.0, 5) - 1.0).abs() < 1e-12);
    assert_eq!(w.lr(2.0, 10), 2.0);
    assert_eq!(w.lr(2.0, 11), 2.0);
    assert_eq!(w.lr(2.0, 100_000), 2.0);
    assert_eq!(Schedule::WarmupConstant { warmup: 0 }.lr(2.0, 1), 2.0);
    assert!(optim::is_decay_exempt("layers.0.norm_x.weight"));
    assert!(optim::is_decay_exempt("layers.0.pack_log_temperature"));
    assert!(optim::is_decay_exempt("head.fc1.bias"));
    assert!(!optim::is_decay_exempt("layers.0.attn.q_proj.weight"));
}

#[test]
fn bad_train_config_is_a_typed_error() {
    let mc = model(BlockConfig::Transformer);
    let mut tc = train_cfg(3);
    tc.batch_size = 0;
    assert!(
        matches!(Trainer::new(&mc, &tc, DType::F32, &Device::Cpu), Err(Error::Config { field, .. }) if field == "train.batch_size")
    );
    let mut tc = train_cfg(3);
    tc.lr = -1.0;
    assert!(
        matches!(Trainer::new(&mc, &tc, DType::F32, &Device::Cpu), Err(Error::Config { field, .. }) if field == "train.lr")
    );
}

#[test]
fn bf16_training_keeps_f32_master_weights() {
    let data = splits();
    let mc = model(BlockPreset::ConvlunaMasked.block(4));
    let dir = tmp("bf16");
    let mut t = Trainer::new(&mc, &train_cfg(3), DType::BF16, &Device::Cpu).unwrap();
    let s = t.fit(&data, &dir, false, &mut |_| {}).unwrap();
    assert!(s.test.loss.is_finite());
    assert_eq!(t.params().get("cls").unwrap().dtype(), DType::BF16);
    let opt = convluna::params::load_tensors(
        &dir.join("checkpoints/step-00000003/optimizer.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let master = &opt["master.cls"];
    assert_eq!(master.dtype(), DType::F32);
    // the bf16 parameter is the rounded master weight
    let p = t
        .params()
        .get("cls")
        .unwrap()
        .as_tensor()
        .to_dtype(DType::F32)
        .unwrap();
    assert!(common::max_abs_diff(&master.to_dtype(DType::BF16).unwrap(), &p) < 1e-6);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A resume with a training config that differs from the checkpoint's is refused, naming the
/// fields; a checkpoint written before `format` existed (format 1) still loads.
#[test]
fn resume_refuses_a_different_training_config_and_reads_format_1() {
    let data = splits();
    let mc = model(BlockPreset::ConvlunaMasked.block(4));
    let tc = train_cfg(13);
    let dev = Device::Cpu;
    let dir = tmp("resume-config");
    let mut a = Trainer::new(&mc, &tc, DType::F32, &dev).unwrap();
    assert!(a
        .fit_until(&data, &dir, false, Some(7), &mut |_| {})
        .unwrap()
        .is_none());
    let other = TrainConfig {
        lr: 1e-2,
        batch_size: 4,
        ..tc.clone()
    };
    let mut b = Trainer::new(&mc, &other, DType::F32, &dev).unwrap();
    let err = b.resume(&dir).unwrap_err().to_string();
    assert!(
        err.contains("training config") && err.contains("lr") && err.contains("batch_size"),
        "{err}"
    );
    // rewrite the latest state.json as format 1 (no format, crate_version, evals_since_best
    // or window fields); its file hashes do not cover state.json itself
    let ck = dir.join("checkpoints");
    let latest = std::fs::read_to_string(ck.join("LATEST")).unwrap();
    let sp = ck.join(latest.trim()).join("state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sp).unwrap()).unwrap();
    for k in ["format", "crate_version", "evals_since_best", "window"] {
        v.as_object_mut().unwrap().remove(k);
    }
    std::fs::write(&sp, serde_json::to_string(&v).unwrap()).unwrap();
    let mut c = Trainer::new(&mc, &tc, DType::F32, &dev).unwrap();
    assert_eq!(c.resume(&dir).unwrap(), 6);
    // a format from the future is refused, saying why
    v["format"] = 99.into();
    std::fs::write(&sp, serde_json::to_string(&v).unwrap()).unwrap();
    let err = c.resume(&dir).unwrap_err().to_string();
    assert!(err.contains("format 99") && err.contains("newer"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `patience`: training stops after that many evaluations without a new best, and the test
/// evaluation uses the best checkpoint.
#[test]
fn patience_stops_training_early() {
    let data = splits();
    let mc = model(BlockPreset::ConvlunaMasked.block(4));
    // a learning rate of ~0 after the first steps: validation accuracy stops improving
    let tc = TrainConfig {
        steps: 400,
        eval_every: 2,
        checkpoint_every: 2,
        lr: 1e-9,
        patience: Some(3),
        ..train_cfg(400)
    };
    let dir = tmp("patience");
    let mut t = Trainer::new(&mc, &tc, DType::F32, &Device::Cpu).unwrap();
    let mut evals = 0;
    let s = t
        .fit(&data, &dir, false, &mut |e| {
            if let Event::Eval(_) = e {
                evals += 1
            }
        })
        .unwrap();
    assert!(s.stopped_early);
    assert!(s.steps < 400);
    // the first evaluation sets the best; then `patience` evaluations without improvement
    // (or fewer evaluations after a later best)
    assert!(evals <= 1 + 3 + (s.best_step / 2), "{evals} evaluations");
    assert_eq!(
        s.steps,
        s.best_step + 3 * 2,
        "stops 3 evaluations after the best"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `eval_at_start`: an evaluation of the untrained model is logged as step 0, and it changes
/// nothing else: the same weights and the same best checkpoint as a run without it.
#[test]
fn evaluation_at_start_is_logged_and_changes_nothing_else() {
    let data = splits();
    let mc = model(BlockPreset::ConvlunaMasked.block(4));
    let mut out = Vec::new();
    for at_start in [false, true] {
        let tc = TrainConfig {
            eval_at_start: at_start,
            eval_every: 3,
            checkpoint_every: 3,
            ..train_cfg(6)
        };
        let dir = tmp(&format!("eval-at-start-{at_start}"));
        let mut t = Trainer::new(&mc, &tc, DType::F32, &Device::Cpu).unwrap();
        let s = t.fit(&data, &dir, false, &mut |_| {}).unwrap();
        let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let eval_steps: Vec<u64> = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "eval")
            .map(|v| v["step"].as_u64().unwrap())
            .collect();
        if at_start {
            assert_eq!(eval_steps, [0, 3, 6]);
            let first = metrics.lines().next().unwrap();
            assert!(first.contains("\"diagnostics\""), "{first}");
        } else {
            assert_eq!(eval_steps, [3, 6]);
        }
        let mut w: Vec<_> = t.weights().into_iter().collect();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        let bits: Vec<Vec<f32>> = w
            .iter()
            .map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        out.push((bits, s.best_step, s.test.acc));
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert_eq!(out[0], out[1]);
}

/// A model of the user's own ([`TrainModel`]): a token embedding, the crate's `Stack`, a
/// candle-nn head. The crate's trainer trains it, is "killed" and resumes, and ends
/// bit-identical to an uninterrupted run — the guarantee the crate's own models have.
struct UserModel {
    embed: candle_nn::Embedding,
    stack: Stack,
    head: candle_nn::Linear,
}

impl UserModel {
    fn new(store: &ParamStore) -> convluna::Result<Self> {
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let cfg = StackConfig::luna()
            .with_d_model(16)
            .with_heads(2)
            .with_ffn_dim(24)
            .with_layers(1)
            .with_memory(3);
        Ok(Self {
            embed: candle_nn::embedding(preset::LISTOPS_VOCAB, 16, vb.pp("embed"))?,
            stack: Stack::new(&cfg, vb.pp("stack"))?,
            head: candle_nn::linear(16, 10, vb.pp("head"))?,
        })
    }
}

impl TrainModel for UserModel {
    fn logits(&self, inputs: TaskInputs<'_>, train: bool) -> convluna::Result<candle_core::Tensor> {
        use candle_nn::Module as _;
        let TaskInputs::Single { input, mask } = inputs else {
            return Err(Error::shape("inputs", "one document", "a pair"));
        };
        let h = self.embed.forward(input)?;
        let out = self.stack.forward_masked(&h, mask, train)?;
        let pooled = out.memory.expect("luna has a memory").mean(1)?;
        Ok(self.head.forward(&pooled)?)
    }
    fn dropout_rng(&self) -> Option<&DropoutRng> {
        Some(self.stack.dropout_rng())
    }
    fn config(&self) -> convluna::Result<serde_json::Value> {
        Ok(serde_json::to_value(self.stack.config()).unwrap())
    }
}

#[test]
fn a_users_own_model_trains_resumes_and_continues_bit_identically() {
    let data = splits();
    let dev = Device::Cpu;
    let tc = TrainConfig {
        schedule: Schedule::WarmupConstant { warmup: 2 },
        eval_every: 3,
        checkpoint_every: 3,
        ..train_cfg(9)
    };
    let trainer = |tc: &TrainConfig| {
        let store = ParamStore::new(tc.seed);
        let model = UserModel::new(&store).unwrap();
        Trainer::with_model(Box::new(model), store, tc, &dev).unwrap()
    };
    let bits = |t: &Trainer| -> Vec<(String, Vec<f32>)> {
        let mut w: Vec<_> = t
            .weights()
            .into_iter()
            .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        w
    };
    // uninterrupted, 9 steps
    let a_dir = tmp("user-uninterrupted");
    let mut a = trainer(&tc);
    let sa = a.fit(&data, &a_dir, false, &mut |_| {}).unwrap();
    // killed after step 5 (last checkpoint: step 3), resumed
    let b_dir = tmp("user-killed");
    let mut b = trainer(&tc);
    assert!(b
        .fit_until(&data, &b_dir, false, Some(5), &mut |_| {})
        .unwrap()
        .is_none());
    drop(b);
    let mut c = trainer(&tc);
    let sc = c.fit(&data, &b_dir, true, &mut |_| {}).unwrap();
    assert_eq!(bits(&a), bits(&c));
    assert_eq!((sa.test.acc, sa.best_step), (sc.test.acc, sc.best_step));
    // the checkpoint records the user's config, and a resume with another model is refused
    let state = std::fs::read_to_string(b_dir.join("checkpoints/LATEST")).unwrap();
    let cfg_json = std::fs::read_to_string(
        b_dir
            .join("checkpoints")
            .join(state.trim())
            .join("config.json"),
    )
    .unwrap();
    assert!(cfg_json.contains("\"d_model\": 16"), "{cfg_json}");
    // continued: the finished 9-step run goes on to 12 steps and ends where an uninterrupted
    // 12-step run with the same (constant) schedule ends
    let long = TrainConfig {
        steps: 12,
        ..tc.clone()
    };
    let d_dir = tmp("user-12");
    let mut d = trainer(&long);
    d.fit(&data, &d_dir, false, &mut |_| {}).unwrap();
    let mut e = trainer(&long);
    e.fit(&data, &b_dir, true, &mut |_| {}).unwrap();
    let (ld, le) = (bits(&d), bits(&e));
    // (the fits end by loading their best checkpoint; compare the last ones)
    let last = |dir: &std::path::Path| {
        let p = std::fs::read_to_string(dir.join("checkpoints/LATEST")).unwrap();
        std::fs::read(
            dir.join("checkpoints")
                .join(p.trim())
                .join("model.safetensors"),
        )
        .unwrap()
    };
    assert_eq!(
        last(&d_dir),
        last(&b_dir),
        "continued run differs from the uninterrupted one"
    );
    assert_eq!(ld.len(), le.len());
    // fewer steps than done is refused
    let short = TrainConfig {
        steps: 4,
        ..tc.clone()
    };
    let mut f = trainer(&short);
    let err = f
        .fit(&data, &b_dir, true, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("fewer than"), "{err}");
    for d in [a_dir, b_dir, d_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}
