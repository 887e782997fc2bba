//! AdamW with decoupled weight decay, parameter groups exempt from decay, learning-rate
//! schedules and global-norm gradient clipping.
//!
//! Candle's `AdamW` decays every parameter alike and keeps its moments private; this one lets
//! norms, biases and τ be exempt and exposes its state so a checkpoint can resume a run exactly.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// AdamW hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay λ (θ ← θ − lr·λ·θ).
    pub weight_decay: f64,
    /// Exempt LayerNorm parameters, biases and log-temperatures from weight decay.
    pub exempt_norms_biases_temperature: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            exempt_norms_biases_temperature: false,
        }
    }
}

/// Whether a parameter name is a norm, a bias or a temperature (exempt from decay on request).
pub fn is_decay_exempt(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    last == "bias" || name.contains("norm") || name.ends_with("log_temperature")
}

struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    /// f32 master copy of a half-precision parameter (updates accumulate here, then are cast).
    master: Option<Tensor>,
    decay: bool,
}

/// AdamW over named variables.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("cfg", &self.cfg)
            .field("params", &self.slots.len())
            .field("step", &self.step)
            .finish()
    }
}

impl AdamW {
    /// An optimiser over `vars` (name, variable), moments at zero.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let m = var.zeros_like()?.to_dtype(DType::F32)?;
                let v = m.clone();
                let decay = !(cfg.exempt_norms_biases_temperature && is_decay_exempt(&name));
                let master = match var.dtype() {
                    DType::F16 | DType::BF16 => Some(var.as_tensor().to_dtype(DType::F32)?),
                    _ => None,
                };
                Ok(Slot {
                    name,
                    var,
                    m,
                    v,
                    master,
                    decay,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg,
            slots,
            step: 0,
        })
    }

    /// Number of updates applied.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Names of the parameters that are decayed.
    pub fn decayed(&self) -> Vec<&str> {
        self.slots
            .iter()
            .filter(|s| s.decay)
            .map(|s| s.name.as_str())
            .collect()
    }

    /// One update with learning rate `lr`. Moments are kept in f32 whatever the parameter dtype,
    /// and half-precision (bf16 / f16) parameters get an f32 master copy that accumulates the
    /// updates, so small steps are not rounded away. (No loss scaling: prefer bf16 to f16.)
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let g = g.to_dtype(DType::F32)?;
            s.m = ((&s.m * b1)? + (&g * (1.0 - b1))?)?;
            s.v = ((&s.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let mhat = (&s.m / bc1)?;
            let vhat = (&s.v / bc2)?;
            let upd = (mhat / (vhat.sqrt()? + self.cfg.eps)?)?;
            let theta = match &s.master {
                Some(m) => m.clone(),
                None => s.var.as_tensor().to_dtype(DType::F32)?,
            };
            let theta = if s.decay && self.cfg.weight_decay != 0.0 {
                (&theta * (1.0 - lr * self.cfg.weight_decay))?
            } else {
                theta
            };
            let new = (theta - (upd * lr)?)?;
            s.var.set(&new.to_dtype(s.var.dtype())?)?;
            if s.master.is_some() {
                s.master = Some(new);
            }
        }
        Ok(())
    }

    /// Moments (`m.<param>`, `v.<param>`) and f32 master weights (`master.<param>`) by name,
    /// for checkpoints.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("m.{}", s.name), s.m.clone());
            out.insert(format!("v.{}", s.name), s.v.clone());
            if let Some(m) = &s.master {
                out.insert(format!("master.{}", s.name), m.clone());
            }
        }
        out
    }

    /// Restores moments and step from a checkpoint; every parameter must be present.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: u64,
        source: &std::path::Path,
    ) -> Result<()> {
        for s in &mut self.slots {
            for (key, slot) in [
                (format!("m.{}", s.name), &mut s.m),
                (format!("v.{}", s.name), &mut s.v),
            ] {
                let t = tensors.get(&key).ok_or_else(|| {
                    Error::format(source, format!("missing optimizer state `{key}`"))
                })?;
                if t.dims() != slot.dims() {
                    return Err(Error::format(
                        source,
                        format!(
                            "optimizer state `{key}` has shape {:?}, expected {:?}",
                            t.dims(),
                            slot.dims()
                        ),
                    ));
                }
                *slot = t.to_dtype(DType::F32)?.to_device(slot.device())?;
            }
            if s.master.is_some() {
                let key = format!("master.{}", s.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    Error::format(source, format!("missing optimizer state `{key}`"))
                })?;
                s.master = Some(t.to_dtype(DType::F32)?.to_device(s.var.device())?);
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Learning-rate schedules.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The authors' `lr·λ(s)`, `λ(s) = min(1, s/w)/√max(s, w)`, evaluated as PyTorch's
    /// `LambdaLR` does under Lightning: update `t` (1-based) uses `λ(t − 1)`, so the first
    /// update has learning rate 0 (it only fills AdamW's moments) and the peak lr/√w is
    /// reached at update w + 1.
    Rsqrt {
        /// Warmup steps w.
        warmup: usize,
    },
    /// Linear warmup to lr, then cosine decay to `min_ratio·lr` at `total` steps.
    Cosine {
        /// Warmup steps.
        warmup: usize,
        /// Total steps.
        total: usize,
        /// Final learning rate as a fraction of the peak.
        min_ratio: f64,
    },
    /// Constant lr.
    Constant,
    /// Linear warmup to lr over `warmup` steps, then constant: a schedule that does not
    /// force a plateau (training stops by early stopping on validation, or at its cap).
    WarmupConstant {
        /// Warmup steps.
        warmup: usize,
    },
}

impl Schedule {
    /// Learning rate of update `t` (1-based) for base rate `lr`.
    pub fn lr(&self, lr: f64, t: usize) -> f64 {
        let t = t.max(1) as f64;
        match *self {
            Schedule::Rsqrt { warmup } => {
                let (w, s) = (warmup.max(1) as f64, t - 1.0);
                lr * (s / w).min(1.0) / s.max(w).sqrt()
            }
            Schedule::Cosine {
                warmup,
                total,
                min_ratio,
            } => {
                let w = warmup as f64;
                if t <= w && warmup > 0 {
                    return lr * t / w;
                }
                let span = (total as f64 - w).max(1.0);
                let p = ((t - w) / span).clamp(0.0, 1.0);
                lr * (min_ratio
                    + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
            }
            Schedule::Constant => lr,
            Schedule::WarmupConstant { warmup } => {
                if warmup > 0 && t <= warmup as f64 {
                    lr * t / warmup as f64
                } else {
                    lr
                }
            }
        }
    }
}

/// Global L2 norm of the gradients of `vars` (f64, computed in f32).
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut total = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += g
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()? as f64;
        }
    }
    Ok(total.sqrt())
}

/// Scales every gradient by `factor` in place.
pub fn scale_grads(grads: &mut GradStore, vars: &[Var], factor: f64) -> Result<()> {
    for v in vars {
        if let Some(g) = grads.remove(v.as_tensor()) {
            grads.insert(v.as_tensor(), (g * factor)?);
        }
    }
    Ok(())
}

/// Adds the gradients of `b` into `a` (gradient accumulation).
pub fn accumulate(a: &mut GradStore, b: GradStore, vars: &[Var]) -> Result<()> {
    let mut b = b;
    for v in vars {
        if let Some(gb) = b.remove(v.as_tensor()) {
            let sum = match a.remove(v.as_tensor()) {
                Some(ga) => (ga + gb)?,
                None => gb,
            };
            a.insert(v.as_tensor(), sum);
        }
    }
    Ok(())
}
