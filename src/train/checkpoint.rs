//! Checkpoints: `checkpoints/step-NNNNNNNN/` with `model.safetensors`, `optimizer.safetensors`,
//! `config.json` and `state.json`, written into a temporary folder and renamed (so a crash
//! never leaves a half checkpoint under a real name), named by the pointer files `LATEST` and
//! `BEST` (replaced atomically); `state.json` records each file's size and FNV-1a hash, so a
//! corrupted file is refused with an error naming it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::TrainConfig;
use crate::error::{Error, Result};
use crate::params::{fnv1a, save_tensors, write_atomic, ParamStore};

/// Where a run stands: what a checkpoint saves and a resume restores.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct Progress {
    pub(super) step: usize,
    pub(super) epoch: u64,
    pub(super) cursor: usize,
    pub(super) best_val_acc: f64,
    pub(super) best_step: usize,
    pub(super) skipped_steps: usize,
    /// Evaluations since the last new best (for `patience`).
    #[serde(default)]
    pub(super) evals_since_best: usize,
    /// The training metrics accumulated since the last logged step, so that a resumed run
    /// logs the same averages as an uninterrupted one.
    #[serde(default)]
    pub(super) window: LogWindow,
    /// Training wall time up to this checkpoint, seconds, summed over every process that
    /// trained the run (what a killed process did after its last checkpoint is not counted:
    /// the resumed process redoes it and counts it once). 0 in checkpoints written before
    /// the field existed.
    #[serde(default)]
    pub(super) elapsed_s: f64,
}

/// Sums of the training metrics since the last logged step.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(super) struct LogWindow {
    pub(super) loss: f64,
    pub(super) right: usize,
    pub(super) seen: usize,
    pub(super) steps: usize,
}

/// The `state.json` layout this version writes. Format 1 (convluna 0.1.0 before the
/// `format` field existed) has no `format`, `crate_version` or `evals_since_best`; it loads
/// with those defaulted (as does a format-2 checkpoint written before `elapsed_s` existed:
/// its run's wall time then starts from the resume). A newer format is refused with a
/// message naming both.
pub const CHECKPOINT_FORMAT: u32 = 2;

fn format_1() -> u32 {
    1
}

/// Resumable trainer state, `state.json` of a checkpoint (the progress fields at top level).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct CheckpointState {
    #[serde(default = "format_1")]
    pub(super) format: u32,
    #[serde(default)]
    pub(super) crate_version: String,
    #[serde(flatten)]
    pub(super) progress: Progress,
    pub(super) train: TrainConfig,
    /// The model's configuration ([`super::TrainModel::config`]).
    pub(super) model: serde_json::Value,
    pub(super) files: HashMap<String, (u64, u64)>,
}

/// The top-level fields (dotted for nested ones) in which two serialisable values differ.
pub fn differing_fields<T: Serialize>(a: &T, b: &T) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value;
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    let null = Value::Null;
                    walk(
                        &p,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let (a, b) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    out
}

/// Fault injection for the crash tests (`tests/reproducibility.rs`): with
/// `CONVLUNA_FAULT=checkpoint-write:<step>` in the environment the process aborts right after
/// writing the model file of step `<step>`'s checkpoint, before its optimizer state and
/// `state.json` — a crash in the middle of a checkpoint write, at a moment a test can name.
fn fault_requested(what: &str, step: usize) -> bool {
    std::env::var("CONVLUNA_FAULT").is_ok_and(|v| v == format!("{what}:{step}"))
}

fn file_sig(path: &Path) -> Result<(u64, u64)> {
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok((b.len() as u64, fnv1a(&b)))
}

/// What a checkpoint holds.
pub(super) struct Contents<'a> {
    pub(super) store: &'a ParamStore,
    pub(super) optimizer: HashMap<String, Tensor>,
    pub(super) model: &'a serde_json::Value,
    pub(super) model_json: &'a str,
    pub(super) train: &'a TrainConfig,
    pub(super) progress: Progress,
}

/// Writes a resumable checkpoint of the current state into `dir/checkpoints/` and points
/// `LATEST` (and `BEST` when `best`) at it.
pub(super) fn write(out_dir: &Path, c: &Contents<'_>, best: bool) -> Result<PathBuf> {
    let root = out_dir.join("checkpoints");
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = format!("step-{:08}", c.progress.step);
    let final_dir = root.join(&name);
    if !final_dir.exists() {
        let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let json = c.model_json.to_string();
        c.store.save(
            &tmp.join("model.safetensors"),
            Some(HashMap::from([("config".to_string(), json.clone())])),
        )?;
        if fault_requested("checkpoint-write", c.progress.step) {
            // a crash half-way through writing a checkpoint (see `fault_requested`)
            std::process::abort();
        }
        save_tensors(&c.optimizer, &tmp.join("optimizer.safetensors"), None)?;
        write_atomic(&tmp.join("config.json"), json.as_bytes())?;
        let mut files = HashMap::new();
        for f in ["model.safetensors", "optimizer.safetensors", "config.json"] {
            files.insert(f.to_string(), file_sig(&tmp.join(f))?);
        }
        let state = CheckpointState {
            format: CHECKPOINT_FORMAT,
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
            progress: c.progress,
            train: c.train.clone(),
            model: c.model.clone(),
            files,
        };
        let s =
            serde_json::to_string_pretty(&state).map_err(|e| Error::format(&tmp, e.to_string()))?;
        write_atomic(&tmp.join("state.json"), s.as_bytes())?;
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    write_atomic(&root.join("LATEST"), name.as_bytes())?;
    if best {
        write_atomic(&root.join("BEST"), name.as_bytes())?;
    }
    prune(&root)?;
    Ok(final_dir)
}

/// Removes checkpoint folders named by neither pointer (and stale temporary folders).
fn prune(root: &Path) -> Result<()> {
    let keep: Vec<String> = ["LATEST", "BEST"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(root.join(p)).ok())
        .map(|s| s.trim().to_string())
        .collect();
    let entries = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale_tmp = name.starts_with('.')
            && name.contains(".tmp-")
            && !name.ends_with(&format!("-{}", std::process::id()));
        if (name.starts_with("step-") && !keep.contains(&name)) || stale_tmp {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// Reads and verifies the checkpoint a pointer (`LATEST` or `BEST`) names.
pub(super) fn read(out_dir: &Path, pointer: &str) -> Result<(PathBuf, CheckpointState)> {
    let root = out_dir.join("checkpoints");
    let p = root.join(pointer);
    let name = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let dir = root.join(name.trim());
    let sp = dir.join("state.json");
    let s = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let format = serde_json::from_str::<serde_json::Value>(&s)
        .ok()
        .and_then(|v| v.get("format").and_then(|f| f.as_u64()))
        .unwrap_or(1);
    if format > CHECKPOINT_FORMAT as u64 {
        return Err(Error::format(
            &sp,
            format!(
                "checkpoint format {format} was written by a newer convluna; this version ({}) reads formats 1 to {CHECKPOINT_FORMAT}",
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    let state: CheckpointState = serde_json::from_str(&s).map_err(|e| {
        Error::format(
            &sp,
            format!(
                "line {} column {}: {e} (checkpoint format {format}; this version reads formats 1 to {CHECKPOINT_FORMAT})",
                e.line(),
                e.column()
            ),
        )
    })?;
    for (f, (len, hash)) in &state.files {
        let fp = dir.join(f);
        let (l2, h2) = file_sig(&fp)?;
        if (l2, h2) != (*len, *hash) {
            return Err(Error::format(&fp, format!("corrupted checkpoint file: {l2} bytes (hash {h2:016x}), state.json recorded {len} bytes (hash {hash:016x})")));
        }
    }
    Ok((dir, state))
}
