//! The reproduction study: a manifest of (task, arm, seed) runs, run one after the other, each
//! appended as one JSON line to a results file when it finishes and skipped when the study is
//! run again — so a study can be stopped at any moment and continued another day or on
//! another machine. [`report`] then writes the Markdown report and its plots from the
//! manifest and the results file alone.
//!
//! A run's options are the task's [`RunOptions`], overlaid by the arm's, with the seed set
//! ([`Manifest::options`]); each run trains in `<runs>/<task>/<arm>/s<seed>` and, when killed,
//! resumes there from its latest checkpoint.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::experiment::{read_record, RunOptions, RUN_FILE};
use crate::train::Event;

/// A task of the study: a name, what it is, and its options.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Short name (folder and table label).
    pub name: String,
    /// One line for the report.
    pub description: String,
    /// Options every arm of the task shares.
    pub options: RunOptions,
    /// Seeds of this task's runs, in place of the manifest's `seeds` (e.g. more seeds where a
    /// run is cheap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Vec<u64>>,
    /// Examples the validation accuracy is measured on. With it, the report also asks whether
    /// a run's late gain exceeds the noise of that measurement (two standard errors,
    /// 2·√(a(1 − a)/n) at the run's best accuracy a), beside the fixed one-point threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_examples: Option<usize>,
    /// The arms run on this task, in place of all the manifest's arms (e.g. the arms a
    /// long task can afford).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arms: Option<Vec<String>>,
}

impl TaskSpec {
    /// The task's seeds: its own, else the manifest's `default`.
    pub fn seeds<'a>(&'a self, default: &'a [u64]) -> &'a [u64] {
        self.seeds.as_deref().unwrap_or(default)
    }

    /// Whether the task runs arm `arm` (every arm unless the task lists its own).
    pub fn has_arm(&self, arm: &str) -> bool {
        self.arms
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == arm))
    }
}

/// An arm: a model variant, applied on top of each task's options.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSpec {
    /// Short name.
    pub name: String,
    /// One line for the report.
    pub description: String,
    /// Options that override the task's.
    pub options: RunOptions,
}

/// A comparison the report tests on every task: is `better` more accurate than `than`?
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    /// The claim it bears on (e.g. `2`).
    pub claim: String,
    /// The arm expected to be better.
    pub better: String,
    /// The arm it is compared with.
    pub than: String,
}

/// The study: tasks × arms × seeds, the comparisons of the report, and its fixed text.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Seeds of every (task, arm), unless the task lists its own.
    pub seeds: Vec<u64>,
    /// The tasks.
    pub tasks: Vec<TaskSpec>,
    /// The arms.
    pub arms: Vec<ArmSpec>,
    /// The accuracy comparisons (Welch t-tests, Holm-corrected together).
    pub comparisons: Vec<Comparison>,
    /// Rows `[aspect, the paper, this study]` of the table of differences from the paper.
    #[serde(default)]
    pub deviations: Vec<[String; 3]>,
    /// Markdown paragraphs added to the report (budget, what a larger one would change).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One run of the study.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunKey {
    /// Task name.
    pub task: String,
    /// Arm name.
    pub arm: String,
    /// Seed.
    pub seed: u64,
}

fn overlay(base: &RunOptions, top: &RunOptions) -> Result<RunOptions> {
    let mut b =
        serde_json::to_value(base).map_err(|e| Error::format("<manifest>", e.to_string()))?;
    let t = serde_json::to_value(top).map_err(|e| Error::format("<manifest>", e.to_string()))?;
    if let (Some(b), Some(t)) = (b.as_object_mut(), t.as_object()) {
        for (k, v) in t {
            if !v.is_null() {
                b.insert(k.clone(), v.clone());
            }
        }
    }
    serde_json::from_value(b).map_err(|e| Error::format("<manifest>", e.to_string()))
}

impl Manifest {
    /// Reads and checks a manifest (every run's options must resolve).
    pub fn read(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let m: Manifest = serde_json::from_str(&s).map_err(|e| {
            Error::format(
                path,
                format!("line {} column {}: {e}", e.line(), e.column()),
            )
        })?;
        for k in m.runs() {
            m.options(&k)?.plan().map_err(|e| {
                Error::format(path, format!("{}/{}/s{}: {e}", k.task, k.arm, k.seed))
            })?;
        }
        for t in &m.tasks {
            for a in t.arms.iter().flatten() {
                if !m.arms.iter().any(|x| &x.name == a) {
                    return Err(Error::format(
                        path,
                        format!("task `{}` names unknown arm `{a}`", t.name),
                    ));
                }
            }
        }
        for c in &m.comparisons {
            for a in [&c.better, &c.than] {
                if !m.arms.iter().any(|x| &x.name == a) {
                    return Err(Error::format(
                        path,
                        format!("comparison names unknown arm `{a}`"),
                    ));
                }
            }
        }
        Ok(m)
    }

    /// Every run: task by task, and within a task all arms at the first seed, then the next,
    /// so that a study cut short has whole tasks (every arm, every seed) finished first.
    pub fn runs(&self) -> Vec<RunKey> {
        let mut out = Vec::new();
        for t in &self.tasks {
            for &seed in t.seeds(&self.seeds) {
                for a in self.arms.iter().filter(|a| t.has_arm(&a.name)) {
                    out.push(RunKey {
                        task: t.name.clone(),
                        arm: a.name.clone(),
                        seed,
                    });
                }
            }
        }
        out
    }

    /// The runs of [`Manifest::runs`] not in `done`, restricted to `task` and `arm` when given,
    /// and of those every `shard.1`-th starting at `shard.0` (so that `n` processes given
    /// `(0, n)` … `(n − 1, n)` share the missing runs without overlap).
    ///
    /// A `task` or `arm` that the manifest does not have is an error naming it.
    pub fn pending(
        &self,
        done: &[RunKey],
        task: Option<&str>,
        arm: Option<&str>,
        shard: (usize, usize),
    ) -> Result<Vec<RunKey>> {
        let (i, n) = shard;
        if n == 0 || i >= n {
            return Err(Error::config(
                "shard",
                format!("{i}/{n}: expected i/n with i < n, e.g. 0/2"),
            ));
        }
        if let Some(t) = task.filter(|t| !self.tasks.iter().any(|x| x.name == *t)) {
            return Err(Error::config(
                "task",
                format!("the study has no task `{t}`"),
            ));
        }
        if let Some(a) = arm.filter(|a| !self.arms.iter().any(|x| x.name == *a)) {
            return Err(Error::config("arm", format!("the study has no arm `{a}`")));
        }
        Ok(self
            .runs()
            .into_iter()
            .filter(|k| !done.contains(k))
            .filter(|k| task.is_none_or(|t| k.task == t))
            .filter(|k| arm.is_none_or(|a| k.arm == a))
            .enumerate()
            .filter(|(j, _)| j % n == i)
            .map(|(_, k)| k)
            .collect())
    }

    /// The options of a run: the task's, overlaid by the arm's, with the seed.
    pub fn options(&self, k: &RunKey) -> Result<RunOptions> {
        let t = self.tasks.iter().find(|t| t.name == k.task);
        let a = self.arms.iter().find(|a| a.name == k.arm);
        let (Some(t), Some(a)) = (t, a) else {
            return Err(Error::config(
                "study",
                format!("no task {} or arm {}", k.task, k.arm),
            ));
        };
        let mut o = overlay(&t.options, &a.options)?;
        o.seed = Some(k.seed);
        Ok(o)
    }
}

/// Validation metrics of one evaluation, per layer where they are per layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Step.
    pub step: usize,
    /// Validation accuracy.
    pub acc: f64,
    /// Validation loss.
    pub loss: f64,
    /// Effective rank of Y_p per layer.
    #[serde(default)]
    pub packed_rank: Vec<f64>,
    /// Mean pairwise cosine of Y_p per layer.
    #[serde(default)]
    pub packed_cosine: Vec<Option<f64>>,
    /// Mean pairwise Jensen–Shannon divergence of the pack rows per layer (bits).
    #[serde(default)]
    pub pack_row_divergence: Vec<Option<f64>>,
    /// Normalised pack-attention entropy per layer.
    #[serde(default)]
    pub pack_entropy: Vec<f64>,
    /// Learned τ per layer.
    #[serde(default)]
    pub tau: Vec<f64>,
}

/// One finished run: one line of the results file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// Task name.
    pub task: String,
    /// Arm name.
    pub arm: String,
    /// Seed.
    pub seed: u64,
    /// The resolved options.
    pub options: RunOptions,
    /// The command that reproduces the run.
    pub command: String,
    /// The data set.
    pub data: String,
    /// Test accuracy of the best validation checkpoint.
    pub test_acc: f64,
    /// Best validation accuracy.
    pub best_val_acc: f64,
    /// Step of the best validation accuracy.
    pub best_step: usize,
    /// Steps trained.
    pub steps: usize,
    /// Whether the run stopped on its patience.
    pub stopped_early: bool,
    /// Training wall time in seconds, summed over resumes ([`crate::train::Summary::wall_s`];
    /// results written by code up to commit 7892e08 hold only the last process's time).
    pub wall_s: f64,
    /// Share of the most common test label.
    pub majority: f64,
    /// Parameters.
    pub parameters: usize,
    /// Every validation evaluation.
    pub curve: Vec<EvalPoint>,
    /// Logged training loss (step, loss).
    pub train_loss: Vec<(usize, f64)>,
    /// Pack-row divergence matrices per layer at the first evaluation.
    #[serde(default)]
    pub first_pack_rows: Option<Vec<Vec<Vec<f64>>>>,
    /// Pack-row divergence matrices per layer of the best checkpoint on the test set.
    #[serde(default)]
    pub final_pack_rows: Option<Vec<Vec<Vec<f64>>>>,
    /// Threads the run used (results do not depend on it).
    pub threads: usize,
    /// The crate version.
    pub crate_version: String,
    /// The code that produced the run (e.g. the commit the study binary was built from), as
    /// the study's caller states it.
    #[serde(default)]
    pub code: String,
}

impl RunResult {
    /// The run's key.
    pub fn key(&self) -> RunKey {
        RunKey {
            task: self.task.clone(),
            arm: self.arm.clone(),
            seed: self.seed,
        }
    }
}

/// Reads a results file (missing: empty); a malformed line is an error naming it.
pub fn read_results(path: &Path) -> Result<Vec<RunResult>> {
    read_lines(path)
}

/// Reads a file of JSON lines (missing: empty); a malformed line is an error naming it.
fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let s = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    s.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// Appends one result as one line (a single write, flushed).
pub fn append_result(path: &Path, r: &RunResult) -> Result<()> {
    append_line(path, r)
}

/// Appends `v` as one JSON line (a single write, flushed), creating the folder.
fn append_line(path: &Path, v: &impl Serialize) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut line = serde_json::to_string(v).map_err(|e| Error::format(path, e.to_string()))?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// The `lra` command line that runs `o` (resolved options), with `--features hub` when the
/// data come from the Hugging Face Hub.
pub fn command_line(o: &RunOptions) -> String {
    let value = serde_json::to_value(o);
    let hub = matches!(&value, Ok(Value::Object(m)) if m.get("data") == Some(&Value::from("hub")));
    let mut cmd = String::from(if hub {
        "cargo run --release --features hub --example lra --"
    } else {
        "cargo run --release --example lra --"
    });
    if let Ok(Value::Object(m)) = value {
        for (k, v) in m {
            let flag = format!("--{}", k.replace('_', "-"));
            match v {
                Value::Null => {}
                Value::Bool(true) => cmd += &format!(" {flag}"),
                Value::Bool(false) => cmd += &format!(" {flag} false"),
                Value::String(s) => cmd += &format!(" {flag} {s}"),
                v => cmd += &format!(" {flag} {v}"),
            }
        }
    }
    cmd
}

/// Trains one run of the study in `runs/<task>/<arm>/s<seed>` (resuming it if a checkpoint
/// is there) and returns its result.
pub fn run_one(
    manifest: &Manifest,
    key: &RunKey,
    runs: &Path,
    device: &Device,
    observer: &mut dyn FnMut(&Event),
) -> Result<RunResult> {
    let out = runs
        .join(&key.task)
        .join(&key.arm)
        .join(format!("s{}", key.seed));
    let mut options = manifest.options(key)?;
    let resume = out.join(RUN_FILE).exists() && out.join("checkpoints").join("LATEST").exists();
    if resume {
        let rec = read_record(&out)?;
        options = options.merge_recorded(&rec.options, &out.join(RUN_FILE))?;
    } else if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    }
    let mut plan = options.plan()?;
    let data = plan.load_data()?;
    let summary = plan.run(&data, device, &out, resume, observer)?;
    let rows = crate::report::read_metrics(&out.join("metrics.jsonl"))?;
    let mut curve = Vec::new();
    let mut train_loss = Vec::new();
    let mut first_pack_rows = None;
    for r in &rows {
        match r["kind"].as_str() {
            Some("train") => {
                if let (Some(s), Some(l)) = (r["step"].as_u64(), r["loss"].as_f64()) {
                    train_loss.push((s as usize, l));
                }
            }
            Some("eval") => {
                let e: crate::train::EvalMetrics = serde_json::from_value(r.clone())
                    .map_err(|e| Error::format(out.join("metrics.jsonl"), e.to_string()))?;
                if first_pack_rows.is_none() {
                    first_pack_rows = e.pack_row_divergence.clone();
                }
                curve.push(eval_point(&e));
            }
            _ => {}
        }
    }
    Ok(RunResult {
        task: key.task.clone(),
        arm: key.arm.clone(),
        seed: key.seed,
        command: command_line(&plan.options),
        options: plan.options.clone(),
        data: data.splits.train.name(),
        test_acc: summary.test.acc,
        best_val_acc: summary.best_val_acc,
        best_step: summary.best_step,
        steps: summary.steps,
        stopped_early: summary.stopped_early,
        wall_s: summary.wall_s,
        majority: summary.test_majority,
        parameters: summary.parameters,
        curve,
        train_loss,
        first_pack_rows,
        final_pack_rows: summary.test.pack_row_divergence.clone(),
        threads: candle_core::utils::get_num_threads(),
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
        code: String::new(),
    })
}

fn eval_point(e: &crate::train::EvalMetrics) -> EvalPoint {
    EvalPoint {
        step: e.step,
        acc: e.acc,
        loss: e.loss,
        packed_rank: e
            .diagnostics
            .iter()
            .map(|d| d.packed.as_ref().map_or(f64::NAN, |p| p.effective_rank))
            .collect(),
        packed_cosine: e
            .diagnostics
            .iter()
            .map(|d| d.packed.as_ref().and_then(|p| p.mean_cosine))
            .collect(),
        pack_row_divergence: e
            .diagnostics
            .iter()
            .map(|d| d.pack_row_divergence)
            .collect(),
        pack_entropy: e.diagnostics.iter().map(|d| d.pack_entropy).collect(),
        tau: e.tau.clone(),
    }
}

/// The results of `results` grouped by (task, arm), in manifest order, seeds sorted.
pub fn grouped<'a>(
    manifest: &Manifest,
    results: &'a [RunResult],
) -> BTreeMap<(usize, usize), Vec<&'a RunResult>> {
    let mut g: BTreeMap<(usize, usize), Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        let t = manifest.tasks.iter().position(|t| t.name == r.task);
        let a = manifest.arms.iter().position(|a| a.name == r.arm);
        if let (Some(t), Some(a)) = (t, a) {
            g.entry((t, a)).or_default().push(r);
        }
    }
    for v in g.values_mut() {
        v.sort_by_key(|r| r.seed);
        v.dedup_by_key(|r| r.seed);
    }
    g
}

/// Where [`report`] writes (the Markdown file and the folder of its plots) and the step-0
/// file it reads.
#[derive(Clone, Debug)]
pub struct ReportPaths {
    /// The report (e.g. `docs/reproduction.md`).
    pub markdown: PathBuf,
    /// Its plots (e.g. `docs/reproduction/`), linked relative to the report.
    pub plots: PathBuf,
    /// Step-0 evaluations of runs that did not record one ([`backfill_step0`]; e.g.
    /// `docs/reproduction/step0.jsonl`): optional, a missing file means none.
    pub step0: Option<PathBuf>,
}

mod analysis;
mod report;
mod step0;
pub use report::{late_gain, report};
pub use step0::{backfill_step0, has_step0, read_step0, step0_point, with_step0, Step0};
