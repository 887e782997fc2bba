//! `y = x ⊙ m` for `x [B, L, d]` and a constant row mask `m [B, L]` (each row of `d` values
//! times its mask value), and its backward `dx = g ⊙ m`.
//!
//! The composite `x.broadcast_mul(m.unsqueeze(2))` gives the same bits, but Candle's
//! backward of a product also forms the mask's gradient (`g ⊙ x`, a `[B, L, d]` product, a
//! zero fill and an add for a constant nobody reads); this op returns none.

use super::{rows_per_task, slice, with_data, Real};
use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType,
};

#[derive(Clone, Copy, Debug)]
struct MaskRows;

/// `x` (rows of `d`) times `m` (one value per row), written straight into fresh storage.
fn forward<T: Real>(x: &[T], m: &[T], d: usize) -> Vec<T> {
    let (d, rpt) = (d.max(1), rows_per_task(d));
    // SAFETY: each chunk is rows `ci·rpt ..` of the output, and every element of its rows is
    // written (x and the output have the same length).
    unsafe {
        super::par_filled(x.len(), rpt * d, |ci, yc| {
            let rows = yc.chunks_mut(d).zip(x[ci * rpt * d..].chunks(d));
            for (ri, (yr, xr)) in rows.enumerate() {
                let mi = m[ci * rpt + ri];
                for (o, &v) in yr.iter_mut().zip(xr) {
                    o.write(v * mi);
                }
            }
        })
    }
}

impl CustomOp2 for MaskRows {
    fn name(&self) -> &'static str {
        "fused-mask-rows"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = l1.dims().last().copied().unwrap_or(1);
        let out = real_dtype!(s1.dtype(), "fused-mask-rows", |T| Ok(
            T::to_cpu_storage_owned(forward(slice(s1, l1)?, slice(s2, l2)?, d))
        ))?;
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        m: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = x.dims().last().copied().unwrap_or(1);
        let dx = real_dtype!(x.dtype(), "fused-mask-rows", |T| {
            let dx = with_data::<T, _>(g, |gd| with_data::<T, _>(m, |md| Ok(forward(gd, md, d))))?;
            Tensor::from_vec(dx, x.shape(), x.device())
        })?;
        Ok((Some(dx), None))
    }
}

/// `x ⊙ m` for `x [B, L, d]` and a `[B, L]` mask of x's dtype, device and batch, whose
/// gradient flows to `x` only (the mask is treated as a constant); `None` when the kernel
/// does not apply (not a CPU f32/f64 tensor, or shapes that do not match).
pub fn mask_rows(x: &Tensor, mask: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let ok = super::fusable(x)
        && x.rank() == 3
        && mask.dims() == &x.dims()[..2]
        && mask.dtype() == x.dtype()
        && mask.device().same_device(x.device());
    if !ok {
        return Ok(None);
    }
    let m = mask.detach().contiguous()?;
    Ok(Some(x.contiguous()?.apply_op2(&m, MaskRows)?))
}
