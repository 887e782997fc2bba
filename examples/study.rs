//! The reproduction study: every (task, arm, seed) run of a manifest, resumable, and the
//! report built from the results file alone.
//!
//! ```sh
//! cargo run --release --example study                      # run what is missing, then write the report
//! cargo run --release --example study -- --report          # only rewrite docs/reproduction.md and its plots
//! cargo run --release --example study -- --step0           # add the step-0 evaluations runs did not record
//! cargo run --release --example study -- --shard 0/2 &     # two workers on one machine
//! cargo run --release --example study -- --shard 1/2 &
//! ```
//! Each finished run is appended to `--results` (one JSON line) and skipped on the next call;
//! a run killed half-way resumes from its last checkpoint in `--runs`.

mod common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use common::{device, observer, progress_bar, say, DeviceKind};
use convluna::study::{
    append_result, backfill_step0, command_line, read_results, report, run_one, Manifest,
    ReportPaths,
};

#[derive(Parser, Debug)]
#[command(about = "Run the reproduction study (resumable) and write its report")]
struct Args {
    /// The study: tasks, arms, seeds, comparisons.
    #[arg(long, default_value = "docs/reproduction/study.json")]
    manifest: PathBuf,
    /// One JSON line per finished run (committed).
    #[arg(long, default_value = "docs/reproduction/results.jsonl")]
    results: PathBuf,
    /// Where runs train (checkpoints; not committed).
    #[arg(long, default_value = "runs/study")]
    runs: PathBuf,
    /// The report.
    #[arg(long, default_value = "docs/reproduction.md")]
    markdown: PathBuf,
    /// The report's plots.
    #[arg(long, default_value = "docs/reproduction")]
    plots: PathBuf,
    /// Only write the report.
    #[arg(long)]
    report: bool,
    /// Step-0 evaluations of the runs that did not record one (read by the report); by
    /// default beside `--results`, named after it with `step0` for `results`
    /// (`results.jsonl` → `step0.jsonl`, `results-gpu.jsonl` → `step0-gpu.jsonl`).
    #[arg(long)]
    step0_file: Option<PathBuf>,
    /// Only evaluate, for every result without a step-0 point, the run's untrained model on
    /// its validation split and append it to `--step0-file` (resumable), then write the
    /// report.
    #[arg(long)]
    step0: bool,
    /// Run only every n-th missing run, starting at i (`i/n`), to split the study between
    /// processes or machines.
    #[arg(long)]
    shard: Option<String>,
    /// Only runs of this task.
    #[arg(long)]
    task: Option<String>,
    /// Only runs of this arm.
    #[arg(long)]
    arm: Option<String>,
    /// Stop after this many runs.
    #[arg(long)]
    max_runs: Option<usize>,
    /// Only print the runs that would run (after the filters), each with the `lra` command
    /// that reproduces it, and train nothing.
    #[arg(long)]
    list: bool,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// The code this binary was built from (e.g. `git rev-parse --short HEAD` at build time),
    /// recorded with every result.
    #[arg(long, default_value = "")]
    code: String,
}

fn main() -> Result<()> {
    convluna::kernels::tune_glibc_malloc();
    let a = Args::parse();
    let manifest = Manifest::read(&a.manifest)?;
    let step0_file = a.step0_file.clone().unwrap_or_else(|| {
        let name = a.results.file_name().map_or("step0.jsonl".into(), |n| {
            n.to_string_lossy().replace("results", "step0")
        });
        a.results.with_file_name(name)
    });
    let paths = ReportPaths {
        markdown: a.markdown.clone(),
        plots: a.plots.clone(),
        step0: Some(step0_file.clone()),
    };
    let shard = match &a.shard {
        None => (0, 1),
        Some(s) => s
            .split_once('/')
            .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
            .with_context(|| format!("--shard {s}: expected i/n with i < n, e.g. 0/2"))?,
    };
    if a.step0 {
        let dev = device(a.device)?;
        let n = backfill_step0(
            &manifest,
            &read_results(&a.results)?,
            &step0_file,
            &dev,
            &mut |k| eprintln!("step 0: {} / {} / seed {}", k.task, k.arm, k.seed),
        )?;
        eprintln!(
            "{n} step-0 evaluations appended to {}",
            step0_file.display()
        );
    } else if !a.report {
        let done: Vec<_> = read_results(&a.results)?.iter().map(|r| r.key()).collect();
        let todo: Vec<_> = manifest
            .pending(&done, a.task.as_deref(), a.arm.as_deref(), shard)?
            .into_iter()
            .take(a.max_runs.unwrap_or(usize::MAX))
            .collect();
        if a.list {
            for k in &todo {
                let o = manifest.options(k)?.resolved()?;
                println!(
                    "{} / {} / seed {}: {}",
                    k.task,
                    k.arm,
                    k.seed,
                    command_line(&o)
                );
            }
            eprintln!("{} runs finished, {} to run", done.len(), todo.len());
            return Ok(());
        }
        let dev = device(a.device)?;
        eprintln!(
            "{} runs finished, {} to run in this process",
            done.len(),
            todo.len()
        );
        for (i, k) in todo.iter().enumerate() {
            let steps = manifest.options(k)?.resolved()?.steps.unwrap_or(0);
            let pb = progress_bar(steps);
            say(
                &pb,
                format!(
                    "[{}/{}] {} / {} / seed {}",
                    i + 1,
                    todo.len(),
                    k.task,
                    k.arm,
                    k.seed
                ),
            );
            let mut r = run_one(&manifest, k, &a.runs, &dev, &mut observer(&pb))
                .with_context(|| format!("run {} / {} / seed {}", k.task, k.arm, k.seed))?;
            r.code = a.code.clone();
            pb.finish_and_clear();
            eprintln!(
                "{} / {} / seed {}: test {:.4} (best val {:.4} at step {} of {}, {:.0} s)",
                k.task, k.arm, k.seed, r.test_acc, r.best_val_acc, r.best_step, r.steps, r.wall_s
            );
            append_result(&a.results, &r)?;
            report(&manifest, &read_results(&a.results)?, &paths)?;
        }
    }
    let results = read_results(&a.results)?;
    let files = report(&manifest, &results, &paths)?;
    eprintln!(
        "report: {} ({} runs, {} files)",
        a.markdown.display(),
        results.len(),
        files.len()
    );
    Ok(())
}
