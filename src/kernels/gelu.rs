//! `GELU(h + b)` with the exact (erf) GELU, fused with the preceding bias add, and its
//! backward: `dh = g · (Φ(z) + z·φ(z))`, `db = Σ_rows dh`, `z = h + b`.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use super::wide::{wide, BiasGeluGrad, BiasGeluRows};
use super::{rows_per_task, slice, with_data, Real};

#[derive(Clone, Copy, Debug)]
struct BiasGelu;

fn forward<T: Real>(h: &[T], b: &[T]) -> Vec<T> {
    let f = b.len();
    let mut y = super::zeros(h.len());
    let rpt = rows_per_task(f);
    y.par_chunks_mut(f * rpt)
        .zip(h.par_chunks(f * rpt))
        .for_each(|(y, h)| wide(BiasGeluRows { y, h, b }));
    y
}

fn backward<T: Real>(h: &[T], b: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
    let f = b.len();
    let mut dh = super::zeros(h.len());
    let rpt = rows_per_task(f);
    let parts = dh
        .par_chunks_mut(f * rpt)
        .zip(h.par_chunks(f * rpt))
        .zip(g.par_chunks(f * rpt))
        .map(|((dc, hc), gc)| {
            let mut db = vec![T::zero(); f];
            wide(BiasGeluGrad {
                dh: dc,
                db: &mut db,
                h: hc,
                g: gc,
                b,
            });
            db
        });
    let db = super::ordered_sum(parts, f);
    (dh, db)
}

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "fused-bias-gelu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = real_dtype!(s1.dtype(), "fused-bias-gelu", |T| Ok(
            T::to_cpu_storage_owned(forward(slice(s1, l1)?, slice(s2, l2)?))
        ))?;
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        h: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        fn run<T: Real>(
            h: &Tensor,
            b: &Tensor,
            g: &Tensor,
        ) -> candle_core::Result<(Tensor, Tensor)> {
            let (dh, db) = with_data::<T, _>(h, |hd| {
                with_data::<T, _>(b, |bd| with_data::<T, _>(g, |gd| Ok(backward(hd, bd, gd))))
            })?;
            Ok((
                Tensor::from_vec(dh, h.shape(), h.device())?,
                Tensor::from_vec(db, b.shape(), b.device())?,
            ))
        }
        let (dh, db) = real_dtype!(h.dtype(), "fused-bias-gelu", |T| run::<T>(h, b, g))?;
        Ok((Some(dh), Some(db)))
    }
}

/// `GELU_erf(h + b)` for `h [.., f]` and a bias `[f]`, or `None` when the fused kernel does
/// not apply.
pub fn bias_gelu(h: &Tensor, b: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let f = h.dims().last().copied().unwrap_or(0);
    if !super::fusable(h)
        || b.dtype() != h.dtype()
        || b.dims() != [f]
        || !b.device().same_device(h.device())
    {
        return Ok(None);
    }
    Ok(Some(h.contiguous()?.apply_op2(&b.contiguous()?, BiasGelu)?))
}
