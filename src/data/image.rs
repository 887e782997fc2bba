//! Image: CIFAR-10 binary batches (grey as LRA: `tf.image.rgb_to_grayscale`) and the
//! Fashion-MNIST substitute (IDX files, gzip or not, padded 28→32 so every image has the LRA
//! length of 1024 pixels).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::io::read_maybe_gz;
use super::{index_error, Dataset, DatasetInfo, Example, Sequence, Splits, Subset};
use crate::error::{DataError, Location};
use crate::error::{Error, Result};

/// Side of the LRA Image task (32×32 = 1024 pixels).
pub const SIDE: usize = 32;
/// Bytes of one CIFAR-10 binary record: label, then 1024 red, 1024 green, 1024 blue.
pub const CIFAR_RECORD: usize = 1 + 3 * 1024;
/// IDX magic of unsigned-byte 3-d arrays (images).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic of unsigned-byte 1-d arrays (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Grey images (stored at their own side, padded with zeros to `side + 2·pad` on `get`).
pub struct ImageDataset {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    side: usize,
    pad: usize,
    info: DatasetInfo,
}

impl ImageDataset {
    /// Images of `side × side` bytes concatenated in `pixels`, padded by `pad` zero pixels on
    /// every side when read.
    pub fn new(
        pixels: Vec<u8>,
        labels: Vec<u8>,
        side: usize,
        pad: usize,
        num_classes: usize,
        name: &str,
    ) -> Result<Self> {
        if pixels.len() != labels.len() * side * side {
            return Err(Error::shape(
                "pixels",
                format!("{} bytes", labels.len() * side * side),
                pixels.len(),
            ));
        }
        let out_side = side + 2 * pad;
        Ok(ImageDataset {
            pixels,
            labels,
            side,
            pad,
            info: DatasetInfo::new(name, num_classes, out_side * out_side),
        })
    }

    /// Side of the images as read (with padding).
    pub fn side(&self) -> usize {
        self.side + 2 * self.pad
    }
}

impl Dataset for ImageDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        let label = self.label(index)?;
        let s = self.side;
        let img = &self.pixels[index * s * s..(index + 1) * s * s];
        let pixels = if self.pad == 0 {
            img.to_vec()
        } else {
            let out_side = self.side();
            let mut out = vec![0u8; out_side * out_side];
            for r in 0..s {
                let dst = (r + self.pad) * out_side + self.pad;
                out[dst..dst + s].copy_from_slice(&img[r * s..(r + 1) * s]);
            }
            out
        };
        Ok(Example {
            doc: Sequence::Pixels(pixels),
            doc2: None,
            label,
        })
    }
    fn info(&self) -> &DatasetInfo {
        &self.info
    }
    fn label(&self, index: usize) -> Result<u32> {
        self.labels
            .get(index)
            .map(|&l| l as u32)
            .ok_or_else(|| index_error(index, self.labels.len()))
    }
    fn length(&self, _index: usize) -> Result<usize> {
        Ok(self.max_len())
    }
}

/// Images averaged over `factor × factor` blocks: a square image of side s becomes one of side
/// s / `factor` (the mean of each block, rounded), in raster order — a shorter pixel sequence
/// for budgets that cannot afford the full one (the name says so).
pub struct Downsampled {
    inner: Arc<dyn Dataset>,
    factor: usize,
    info: DatasetInfo,
}

impl Downsampled {
    /// `inner`'s images (square, side divisible by `factor`) averaged over blocks.
    pub fn new(inner: Arc<dyn Dataset>, factor: usize) -> Result<Self> {
        let n = inner.max_len();
        let side = (n as f64).sqrt().round() as usize;
        if factor == 0 || side * side != n || !side.is_multiple_of(factor) {
            return Err(Error::config(
                "downsample",
                format!(
                    "needs square images whose side is a multiple of the factor {factor}; {} has {n} pixels",
                    inner.name()
                ),
            ));
        }
        let o = side / factor;
        let info = inner
            .info()
            .clone()
            .with_name(format!("{} (downsampled {factor}×)", inner.name()))
            .with_max_len(o * o);
        Ok(Self {
            inner,
            factor,
            info,
        })
    }

    fn side(&self) -> usize {
        (self.inner.max_len() as f64).sqrt().round() as usize
    }
}

impl Dataset for Downsampled {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        let ex = self.inner.get(index)?;
        let (s, f) = (self.side(), self.factor);
        let px = ex
            .doc
            .pixels()
            .ok_or_else(|| Error::config("downsample", "applies to pixel data only"))?;
        if px.len() != s * s {
            return Err(Error::shape("image", format!("{s}×{s} pixels"), px.len()));
        }
        let o = s / f;
        let mut out = Vec::with_capacity(o * o);
        for r in 0..o {
            for c in 0..o {
                let mut sum = 0u32;
                for i in 0..f {
                    for j in 0..f {
                        sum += px[(r * f + i) * s + c * f + j] as u32;
                    }
                }
                let n = (f * f) as u32;
                out.push(((sum + n / 2) / n) as u8);
            }
        }
        Ok(Example {
            doc: Sequence::Pixels(out),
            doc2: None,
            label: ex.label,
        })
    }
    fn info(&self) -> &DatasetInfo {
        &self.info
    }
    fn label(&self, index: usize) -> Result<u32> {
        self.inner.label(index)
    }
    fn length(&self, _index: usize) -> Result<usize> {
        Ok(self.max_len())
    }
}

/// [`Downsampled`] applied to every split.
pub fn downsample_splits(splits: &Splits, factor: usize) -> Result<Splits> {
    let d = |ds: &Arc<dyn Dataset>| -> Result<Arc<dyn Dataset>> {
        Ok(Arc::new(Downsampled::new(ds.clone(), factor)?))
    };
    Ok(Splits {
        train: d(&splits.train)?,
        val: d(&splits.val)?,
        test: d(&splits.test)?,
    })
}

/// Grey value of an RGB pixel as `tf.image.rgb_to_grayscale` computes it on `uint8` images:
/// 0.2989 R + 0.5870 G + 0.1140 B in `f32` on values scaled to [0, 1], back to bytes by
/// multiplying by 255.5 and truncating.
pub fn grey(r: u8, g: u8, b: u8) -> u8 {
    let (r, g, b) = (r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0);
    let y = r * 0.2989 + g * 0.5870 + b * 0.1140;
    (y * 255.5) as u8
}

/// Reads one CIFAR-10 binary batch: grey pixels (1024 per record) and labels.
pub fn read_cifar10_batch(path: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.is_empty() {
        return Err(DataError::Empty {
            path: path.into(),
            reason: "no CIFAR-10 record".into(),
        }
        .into());
    }
    if raw.len() % CIFAR_RECORD != 0 {
        return Err(DataError::Truncated {
            path: path.into(),
            at: Location::Record(raw.len() / CIFAR_RECORD),
            reason: format!(
                "{} bytes is not a whole number of {CIFAR_RECORD}-byte records",
                raw.len()
            ),
        }
        .into());
    }
    let n = raw.len() / CIFAR_RECORD;
    let mut pixels = Vec::with_capacity(n * 1024);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in raw.chunks_exact(CIFAR_RECORD).enumerate() {
        if rec[0] > 9 {
            return Err(DataError::LabelOutOfRange {
                path: path.into(),
                at: Location::Record(i),
                label: rec[0].to_string(),
                num_classes: 10,
            }
            .into());
        }
        labels.push(rec[0]);
        let (r, rest) = rec[1..].split_at(1024);
        let (g, b) = rest.split_at(1024);
        pixels.extend((0..1024).map(|p| grey(r[p], g[p], b[p])));
    }
    Ok((pixels, labels))
}

/// CIFAR-10 binary version (`dir` holds `data_batch_1.bin` … `data_batch_5.bin` and
/// `test_batch.bin`, or is the parent of `cifar-10-batches-bin`): grey 32×32 images; the
/// training batches are split 90/10 in file order into train and validation (as LRA's
/// `train[:90%]` / `train[90%:]`).
pub fn read_cifar10_dir(dir: &Path) -> Result<Splits> {
    let root = if dir.join("cifar-10-batches-bin").is_dir() {
        dir.join("cifar-10-batches-bin")
    } else {
        dir.to_path_buf()
    };
    let (mut px, mut lb) = (Vec::new(), Vec::new());
    for i in 1..=5 {
        let (p, l) = read_cifar10_batch(&root.join(format!("data_batch_{i}.bin")))?;
        px.extend(p);
        lb.extend(l);
    }
    let (tp, tl) = read_cifar10_batch(&root.join("test_batch.bin"))?;
    cifar10_splits(px, lb, tp, tl, "image: cifar-10")
}

/// CIFAR-10's splits from grey 32×32 training and test images (pixels concatenated): the
/// training images divided 90/10 in order into train and validation (LRA's `train[:90%]` /
/// `train[90%:]`); `name` gets ` [train]`, ` [val]`, ` [test]`.
pub(crate) fn cifar10_splits(
    train_px: Vec<u8>,
    train_labels: Vec<u8>,
    test_px: Vec<u8>,
    test_labels: Vec<u8>,
    name: &str,
) -> Result<Splits> {
    let n = train_labels.len();
    let train: Arc<dyn Dataset> = Arc::new(ImageDataset::new(
        train_px,
        train_labels,
        SIDE,
        0,
        10,
        name,
    )?);
    let n_train = n * 9 / 10;
    Ok(Splits {
        train: Arc::new(Subset::new(
            train.clone(),
            (0..n_train).collect(),
            format!("{name} [train]"),
        )),
        val: Arc::new(Subset::new(
            train,
            (n_train..n).collect(),
            format!("{name} [val]"),
        )),
        test: Arc::new(ImageDataset::new(
            test_px,
            test_labels,
            SIDE,
            0,
            10,
            &format!("{name} [test]"),
        )?),
    })
}

/// An unsigned-byte IDX array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file (gzip or not) whose magic must be `expected_magic` (e.g.
/// [`IDX_IMAGES_MAGIC`]).
pub fn read_idx(path: &Path, expected_magic: u32) -> Result<IdxArray> {
    let raw = read_maybe_gz(path)?;
    let header_err = |reason: &str| -> Error {
        DataError::Truncated {
            path: path.into(),
            at: Location::File,
            reason: reason.into(),
        }
        .into()
    };
    if raw.len() < 4 {
        return Err(header_err("shorter than the 4-byte magic number"));
    }
    let magic = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    if magic != expected_magic {
        return Err(DataError::BadMagic {
            path: path.into(),
            expected: expected_magic,
            found: magic,
        }
        .into());
    }
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    if raw.len() < header {
        return Err(header_err(&format!(
            "shorter than its {header}-byte header"
        )));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|d| {
            u32::from_be_bytes([
                raw[4 + 4 * d],
                raw[5 + 4 * d],
                raw[6 + 4 * d],
                raw[7 + 4 * d],
            ]) as usize
        })
        .collect();
    let record: usize = dims
        .get(1..)
        .unwrap_or(&[])
        .iter()
        .fold(1usize, |a, &d| a.saturating_mul(d))
        .max(1);
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| DataError::Malformed {
            path: path.into(),
            at: Location::File,
            reason: format!("dimensions {dims:?} overflow"),
        })?;
    let body = raw.len() - header;
    if body < expected {
        return Err(DataError::Truncated {
            path: path.into(),
            at: Location::Record(body / record),
            reason: format!("header {dims:?} promises {expected} bytes of data, found {body}"),
        }
        .into());
    }
    if body > expected {
        return Err(DataError::Malformed {
            path: path.into(),
            at: Location::Record(dims.first().copied().unwrap_or(0)),
            reason: format!(
                "{} bytes after the {expected} promised by the header {dims:?}",
                body - expected
            ),
        }
        .into());
    }
    Ok(IdxArray {
        dims,
        data: raw[header..].to_vec(),
    })
}

/// Finds `stem` or `stem.gz` in `dir`.
fn find_idx(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [
        stem.to_string(),
        format!("{stem}.gz"),
        stem.replacen("-idx", ".idx", 1),
    ] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::io(
        dir.join(format!("{stem}[.gz]")),
        std::io::Error::new(std::io::ErrorKind::NotFound, "IDX file not found"),
    ))
}

/// Reads an image IDX file and its label IDX file into a data set padded to 32×32.
pub fn read_idx_pair(
    images: &Path,
    labels: &Path,
    num_classes: usize,
    name: &str,
) -> Result<ImageDataset> {
    let img = read_idx(images, IDX_IMAGES_MAGIC)?;
    let lab = read_idx(labels, IDX_LABELS_MAGIC)?;
    let (n, rows, cols) = (img.dims[0], img.dims[1], img.dims[2]);
    if rows != cols || rows > SIDE || !(SIDE - rows).is_multiple_of(2) {
        return Err(DataError::Malformed {
            path: images.into(),
            at: Location::File,
            reason: format!("images are {rows}x{cols}; expected square images of at most {SIDE} with an even margin"),
        }
        .into());
    }
    if lab.dims[0] != n {
        return Err(DataError::Malformed {
            path: labels.into(),
            at: Location::File,
            reason: format!(
                "{} labels for {n} images in {}",
                lab.dims[0],
                images.display()
            ),
        }
        .into());
    }
    if n == 0 {
        return Err(DataError::Empty {
            path: images.into(),
            reason: "no image".into(),
        }
        .into());
    }
    if let Some(i) = lab.data.iter().position(|&l| l as usize >= num_classes) {
        return Err(DataError::LabelOutOfRange {
            path: labels.into(),
            at: Location::Record(i),
            label: lab.data[i].to_string(),
            num_classes,
        }
        .into());
    }
    ImageDataset::new(
        img.data,
        lab.data,
        rows,
        (SIDE - rows) / 2,
        num_classes,
        name,
    )
}

/// Fashion-MNIST (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
/// `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`, e.g. the Debian package
/// `dataset-fashion-mnist` in `/usr/share/datasets/fashion-mnist`): 28×28 images padded by 2
/// zero pixels on every side to 32×32 = 1024 pixels; validation is the last 10 % of the
/// training file.
pub fn read_fashion_mnist_dir(dir: &Path) -> Result<Splits> {
    let name = "image: fashion-mnist (substitute)";
    let train: Arc<dyn Dataset> = Arc::new(read_idx_pair(
        &find_idx(dir, "train-images-idx3-ubyte")?,
        &find_idx(dir, "train-labels-idx1-ubyte")?,
        10,
        name,
    )?);
    let test = read_idx_pair(
        &find_idx(dir, "t10k-images-idx3-ubyte")?,
        &find_idx(dir, "t10k-labels-idx1-ubyte")?,
        10,
        &format!("{name} [test]"),
    )?;
    let n = train.len();
    let n_train = n - n / 10;
    Ok(Splits {
        train: Arc::new(Subset::new(
            train.clone(),
            (0..n_train).collect(),
            format!("{name} [train]"),
        )),
        val: Arc::new(Subset::new(
            train,
            (n_train..n).collect(),
            format!("{name} [val]"),
        )),
        test: Arc::new(test),
    })
}
