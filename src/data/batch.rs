//! Batching: seeded epoch orders, optional length bucketing, and padded tensors with masks.
//! Examples are fetched (and, for streaming readers, read from disk) only when their batch is
//! built, so a large data set never sits in memory as `f32`.

use candle_core::{Device, Tensor};

use super::{Dataset, Example, Sequence};
use crate::error::{Error, Result};
use crate::rng::{mix_seed, Rng, RngExt};

/// How long the rows of a batch are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadTo {
    /// As long as the longest document of the batch.
    Longest,
    /// Exactly this long (longer documents are truncated).
    Fixed(usize),
}

/// A batch as tensors on one device.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[B, L]`: `u32` token ids (0 = padding) or `f32` raw pixels 0..=255.
    pub input: Tensor,
    /// `[B, L]` `f32`: 1 at real positions, 0 at padding.
    pub mask: Tensor,
    /// Second documents of a pair task, `[B, L2]`.
    pub input2: Option<Tensor>,
    /// Mask of the second documents.
    pub mask2: Option<Tensor>,
    /// `[B]` `u32` labels.
    pub labels: Tensor,
    /// Real (unpadded) positions in the batch, both documents counted.
    pub tokens: usize,
}

/// Pads `docs` into an input and a mask tensor; returns them with the number of real positions.
fn stack(docs: &[&Sequence], pad_to: PadTo, device: &Device) -> Result<(Tensor, Tensor, usize)> {
    let b = docs.len();
    let l = match pad_to {
        PadTo::Longest => docs.iter().map(|d| d.len()).max().unwrap_or(0).max(1),
        PadTo::Fixed(n) => {
            if n == 0 {
                return Err(Error::config("pad_to", "Fixed length must be positive"));
            }
            n
        }
    };
    let mut mask = vec![0f32; b * l];
    let mut real = 0;
    let pixels = matches!(docs.first(), Some(Sequence::Pixels(_)));
    let input = if pixels {
        let mut data = vec![0f32; b * l];
        for (i, d) in docs.iter().enumerate() {
            let Sequence::Pixels(p) = d else {
                return Err(Error::shape(
                    "batch",
                    "all documents of one kind",
                    "pixels mixed with tokens",
                ));
            };
            let n = p.len().min(l);
            for (j, &v) in p[..n].iter().enumerate() {
                data[i * l + j] = v as f32;
            }
            mask[i * l..i * l + n].iter_mut().for_each(|m| *m = 1.0);
            real += n;
        }
        Tensor::from_vec(data, (b, l), device)?
    } else {
        let mut data = vec![0u32; b * l];
        for (i, d) in docs.iter().enumerate() {
            let Sequence::Tokens(t) = d else {
                return Err(Error::shape(
                    "batch",
                    "all documents of one kind",
                    "tokens mixed with pixels",
                ));
            };
            let n = t.len().min(l);
            data[i * l..i * l + n].copy_from_slice(&t[..n]);
            mask[i * l..i * l + n].iter_mut().for_each(|m| *m = 1.0);
            real += n;
        }
        Tensor::from_vec(data, (b, l), device)?
    };
    Ok((input, Tensor::from_vec(mask, (b, l), device)?, real))
}

/// Builds the batch of examples `indices` of `ds`: documents padded with id 0 (or pixel 0) to
/// `pad_to`, masks, labels, and for pair data sets the second documents (padded separately
/// with [`PadTo::Longest`]).
pub fn make_batch(
    ds: &dyn Dataset,
    indices: &[usize],
    pad_to: PadTo,
    device: &Device,
) -> Result<Batch> {
    if indices.is_empty() {
        return Err(Error::shape("indices", "at least one example", 0));
    }
    let examples: Vec<Example> = indices.iter().map(|&i| ds.get(i)).collect::<Result<_>>()?;
    let labels: Vec<u32> = examples.iter().map(|e| e.label).collect();
    let docs: Vec<&Sequence> = examples.iter().map(|e| &e.doc).collect();
    let (input, mask, mut tokens) = stack(&docs, pad_to, device)?;
    let (input2, mask2) = if examples.iter().any(|e| e.doc2.is_some()) {
        let docs2: Vec<&Sequence> = examples
            .iter()
            .map(|e| {
                e.doc2.as_ref().ok_or_else(|| {
                    Error::shape(
                        "batch",
                        "a second document in every example",
                        "a missing one",
                    )
                })
            })
            .collect::<Result<_>>()?;
        let (i2, m2, t2) = stack(&docs2, pad_to, device)?;
        tokens += t2;
        (Some(i2), Some(m2))
    } else {
        (None, None)
    };
    let b = labels.len();
    Ok(Batch {
        input,
        mask,
        input2,
        mask2,
        labels: Tensor::from_vec(labels, b, device)?,
        tokens,
    })
}

/// The order of `0..len` for `epoch`: identity when `shuffle` is false, otherwise a seeded
/// permutation that depends only on `(seed, epoch)` (the crate's own generator, identical on
/// every platform).
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        Rng::new(mix_seed(seed, epoch)).shuffle(&mut order);
    }
    order
}

/// Splits `order` into batches of `batch_size` (the last one may be smaller). With
/// `bucket_size > batch_size`, each run of `bucket_size` consecutive examples of `order` is
/// sorted by length ([`Dataset::length`]) before it is cut into batches, and the batches of a
/// bucket are then put in an order drawn from the bucket's contents, so similar lengths share
/// a batch while the batch sequence stays mixed. Deterministic in `order`.
pub fn bucketed_batches(
    ds: &dyn Dataset,
    order: &[usize],
    batch_size: usize,
    bucket_size: usize,
) -> Result<Vec<Vec<usize>>> {
    if batch_size == 0 {
        return Err(Error::config("batch_size", "must be positive"));
    }
    if bucket_size <= batch_size {
        return Ok(order.chunks(batch_size).map(|c| c.to_vec()).collect());
    }
    let mut out = Vec::with_capacity(order.len().div_ceil(batch_size));
    for bucket in order.chunks(bucket_size) {
        let mut keyed: Vec<(usize, usize)> = bucket
            .iter()
            .map(|&i| Ok((ds.length(i)?, i)))
            .collect::<Result<_>>()?;
        keyed.sort_by_key(|&(len, _)| len);
        let mut batches: Vec<Vec<usize>> = keyed
            .chunks(batch_size)
            .map(|c| c.iter().map(|&(_, i)| i).collect())
            .collect();
        let seed = bucket
            .iter()
            .fold(0x5EED_u64, |h, &i| mix_seed(h, i as u64));
        Rng::new(seed).shuffle(&mut batches);
        out.extend(batches);
    }
    Ok(out)
}
