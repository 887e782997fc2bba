//! Step-0 evaluations of finished runs that did not record one: the untrained model of each
//! run, rebuilt from the run's recorded options, evaluated on the run's validation split with
//! the memory diagnostics, as the trainer does at step 0 with `eval_at_start`.
//!
//! Parameters are seeded per name from the run's seed, so the model [`step0_point`] builds
//! is the run's own model at step 0 (`tests/study.rs` checks this against a run that
//! recorded its step 0).

use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::{eval_point, EvalPoint, Manifest, RunKey, RunResult};
use crate::error::Result;
use crate::train::Trainer;

/// One line of the step-0 file: the step-0 evaluation of one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step0 {
    /// Task name.
    pub task: String,
    /// Arm name.
    pub arm: String,
    /// Seed.
    pub seed: u64,
    /// The evaluation (step 0).
    pub point: EvalPoint,
}

impl Step0 {
    /// The run's key.
    pub fn key(&self) -> RunKey {
        RunKey {
            task: self.task.clone(),
            arm: self.arm.clone(),
            seed: self.seed,
        }
    }
}

/// Reads a step-0 file (missing: empty); a malformed line is an error naming it.
pub fn read_step0(path: &Path) -> Result<Vec<Step0>> {
    super::read_lines(path)
}

/// The step-0 evaluation of run `r`: its plan rebuilt from its recorded options, its data
/// loaded, the untrained model evaluated on the validation split (with diagnostics).
pub fn step0_point(r: &RunResult, device: &Device) -> Result<EvalPoint> {
    let mut plan = r.options.plan()?;
    let data = plan.load_data()?;
    let trainer = Trainer::new(&plan.model_config, &plan.train_config, plan.dtype, device)?;
    let e = trainer.evaluate(
        data.splits.val.as_ref(),
        "val",
        plan.train_config.eval_batches,
        true,
    )?;
    Ok(eval_point(&e))
}

/// Whether run `r` recorded a step-0 evaluation.
pub fn has_step0(r: &RunResult) -> bool {
    r.curve.first().is_some_and(|p| p.step == 0)
}

/// Appends to `path` the step-0 evaluation of every result of a task in `manifest` that has
/// none, neither in its curve nor already in `path` (so that an interrupted backfill
/// resumes); `observer` hears each run before it is evaluated. Returns the lines appended.
pub fn backfill_step0(
    manifest: &Manifest,
    results: &[RunResult],
    path: &Path,
    device: &Device,
    observer: &mut dyn FnMut(&RunKey),
) -> Result<usize> {
    let done: Vec<RunKey> = read_step0(path)?.iter().map(Step0::key).collect();
    let todo: Vec<&RunResult> = results
        .iter()
        .filter(|r| manifest.tasks.iter().any(|t| t.name == r.task))
        .filter(|r| manifest.arms.iter().any(|a| a.name == r.arm))
        .filter(|r| !has_step0(r) && !done.contains(&r.key()))
        .collect();
    let mut n = 0;
    for r in todo {
        observer(&r.key());
        let line = Step0 {
            task: r.task.clone(),
            arm: r.arm.clone(),
            seed: r.seed,
            point: step0_point(r, device)?,
        };
        super::append_line(path, &line)?;
        n += 1;
    }
    Ok(n)
}

/// `results` with each run's step-0 evaluation from `step0` put first in its curve, where
/// the run did not record one.
pub fn with_step0(results: &[RunResult], step0: &[Step0]) -> Vec<RunResult> {
    results
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if !has_step0(&r) {
                if let Some(s) = step0.iter().find(|s| s.key() == r.key()) {
                    r.curve.insert(0, s.point.clone());
                }
            }
            r
        })
        .collect()
}
