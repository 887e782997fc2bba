//! Dropout drawn from a seeded generator shared by the whole model (guide §2).

use std::sync::{Arc, Mutex};

use candle_core::{ModuleT, Tensor};

use crate::rng::{Rng, RngExt};

/// A dropout whose masks come from a seeded generator shared by the whole model, so that a
/// training run is reproducible on every device and can be resumed: the trainer calls
/// [`DropoutRng::reseed`] with the step number before each step.
#[derive(Clone, Debug)]
pub struct DropoutRng {
    inner: Arc<Mutex<Rng>>,
}

impl Default for DropoutRng {
    fn default() -> Self {
        Self::new(0)
    }
}

impl DropoutRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Rng::new(seed))),
        }
    }

    /// Restarts the generator from `seed` (e.g. `run_seed ^ step`).
    pub fn reseed(&self, seed: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *g = Rng::new(seed);
    }

    fn keep_mask(&self, n: usize, p: f64) -> Vec<f32> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let scale = (1.0 / (1.0 - p)) as f32;
        (0..n)
            .map(|_| if g.f64() < p { 0.0 } else { scale })
            .collect()
    }
}

/// Inverted dropout with probability `p`, active only when `train` is true.
#[derive(Clone, Debug)]
pub struct Dropout {
    p: f64,
    rng: DropoutRng,
}

impl Dropout {
    /// Dropout with drop probability `p` drawing from `rng`.
    pub fn new(p: f64, rng: DropoutRng) -> Self {
        Self { p, rng }
    }
}

impl Dropout {
    /// The keep-mask (`0` or `1/(1−p)`) over `n` elements that `forward_t` would multiply by,
    /// drawn from the same stream; `None` where dropout is inactive (`!train` or `p = 0`).
    pub(crate) fn keep_mask(&self, n: usize, train: bool) -> Option<Vec<f32>> {
        (train && self.p != 0.0).then(|| self.rng.keep_mask(n, self.p))
    }
}

impl ModuleT for Dropout {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        let mask = self.rng.keep_mask(x.elem_count(), self.p);
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}
