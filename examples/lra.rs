//! Train ConvLuna, Luna, a Transformer or a locality control on a Long Range Arena task.
//!
//! ```sh
//! cargo run --release --example lra                      # ConvLuna on generated ListOps, quick preset
//! cargo run --release --example lra -- --model luna      # the Luna baseline
//! cargo run --release --example lra -- --task image --data-dir data/fashion-mnist
//! cargo run --release --features cuda --example lra -- --preset paper --device cuda --task listops
//! cargo run --release --example lra -- --resume runs/listops-convluna-s0   # continue a killed run
//! ```
//! Writes `run.json`, `metrics.jsonl`, checkpoints, `summary.json` and plots (`curves.svg`,
//! `memory.svg`, `memory-cosine.svg`) into `--out` (default `runs/<task>-<model>-s<seed>`).
//! Everything else is `convluna::experiment`.

mod common;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::{device, observer, progress_bar, DeviceKind, RunArgs};
use convluna::experiment::{read_record, RUN_FILE};
use convluna::report;

#[derive(Parser, Debug)]
#[command(about = "Train ConvLuna / Luna / Transformer on a Long Range Arena task")]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Output folder [default: runs/<task>-<model>-s<seed>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its latest checkpoint. Options not given are
    /// taken from its run.json; an option given with another value is refused.
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
}

fn main() -> Result<()> {
    // keep freed memory in the process: fresh large buffers otherwise page-fault on every
    // step (see BENCHMARKS.md; about 2× on CPU training)
    convluna::kernels::tune_glibc_malloc();
    let a = Args::parse();
    let mut options = a.run.options();
    if let Some(dir) = &a.resume {
        let record = read_record(dir).with_context(|| {
            format!(
                "--resume {}: not a run folder (no readable {RUN_FILE})",
                dir.display()
            )
        })?;
        options = options.merge_recorded(&record.options, &dir.join(RUN_FILE))?;
    }
    // every option and config is checked here, before any data is generated or read
    let mut plan = options.plan()?;
    let out = match (&a.resume, &a.out) {
        (Some(r), _) => r.clone(),
        (None, Some(o)) => o.clone(),
        (None, None) => PathBuf::from("runs").join(plan.options.run_name()),
    };
    if a.resume.is_none() && out.join("checkpoints").join("LATEST").exists() {
        bail!(
            "{} already holds a run: continue it with --resume {0}, or choose another --out",
            out.display()
        );
    }
    let device = device(a.device)?;

    eprintln!("loading data for {} …", plan.options.run_name());
    let data = plan.load_data()?;
    eprintln!("{}", data.splits.summary());
    eprintln!("{}", data.lengths.describe());
    let mc = &plan.model_config;
    let tc = &plan.train_config;
    eprintln!(
        "model: {} ({} layers, d = {}, heads = {}, memory = {}{}), device {:?}\nout: {}",
        plan.model.name(),
        mc.encoder.stack.num_layers,
        mc.encoder.stack.d_model,
        mc.encoder.stack.num_heads,
        mc.encoder
            .stack
            .block
            .luna()
            .map_or("-".to_string(), |l| l.memory_len.to_string()),
        mc.encoder
            .stack
            .block
            .luna()
            .map_or(String::new(), |l| format!(
                ", padding {}",
                if l.mask_padding {
                    "masked"
                } else {
                    "not masked"
                }
            )),
        a.device,
        out.display()
    );
    match tc.eval_batches {
        Some(n) => eprintln!(
            "validation: the first {n} batches ({} examples) of {} — a subset, as asked",
            (n * tc.batch_size).min(data.splits.val.len()),
            data.splits.val.len()
        ),
        None => eprintln!("validation: all {} examples", data.splits.val.len()),
    }

    let pb = progress_bar(tc.steps);
    let summary = plan.run(&data, &device, &out, a.resume.is_some(), &mut observer(&pb))?;
    pb.finish_and_clear();
    let name = plan.model.name();
    let plots = report::plot_run(&out, &format!("{name} on {}", data.splits.train.name()))?;

    let row = |k: &str, v: String| println!("{k:<28} {v}");
    println!();
    row("task / data", data.splits.train.name());
    row("model", name.to_string());
    row("length", data.lengths.describe());
    row(
        "steps",
        if summary.stopped_early {
            format!(
                "{} (stopped early: no better validation accuracy)",
                summary.steps
            )
        } else {
            summary.steps.to_string()
        },
    );
    row("training wall time (s)", format!("{:.1}", summary.wall_s));
    row(
        "best validation accuracy",
        format!("{:.4} (step {})", summary.best_val_acc, summary.best_step),
    );
    row("test accuracy", format!("{:.4}", summary.test.acc));
    row(
        "majority class (test)",
        format!("{:.4}", summary.test_majority),
    );
    if let Some(d) = summary.test.diagnostics.last() {
        if let Some(p) = &d.packed {
            row(
                "packed memory Y_p (last)",
                format!(
                    "effective rank {:.2} of {}, mean cosine {}",
                    p.effective_rank,
                    mc.encoder.stack.block.luna().map_or(0, |l| l.memory_len),
                    p.mean_cosine.map_or("-".into(), |c| format!("{c:.3}"))
                ),
            );
        }
        if let Some(js) = d.pack_row_divergence {
            row("pack-row divergence (last)", format!("{js:.3} bits"));
        }
    }
    if !summary.test.tau.is_empty() {
        let taus: Vec<f64> = summary
            .test
            .tau
            .iter()
            .map(|t| (t * 1000.0).round() / 1000.0)
            .collect();
        row("learned τ per layer", format!("{taus:?}"));
    }
    row("metrics", out.join("metrics.jsonl").display().to_string());
    for p in plots {
        row("plot", p.display().to_string());
    }
    if data.splits.train.name().contains("substitute") {
        println!("note: trained on a substitute data set; these are not LRA numbers.");
    }
    Ok(())
}
