//! Long Range Arena data: readers for the official on-disk formats, seeded generators for
//! ListOps and Pathfinder, readers for the real substitutes that can be had offline, and
//! batching (guide §5).
//!
//! | task | reader | generator / substitute |
//! |---|---|---|
//! | ListOps | [`read_listops_dir`], [`ListOpsDataset::from_tsv`] | [`ListOpsDataset::generate_splits`], [`generate_listops`] |
//! | Text | [`read_imdb_dir`], [`read_class_folders`] | [`read_spam_assassin`], [`read_bbc`] |
//! | Retrieval | [`read_aan_dir`] | [`pair_substitute`] |
//! | Image | [`read_cifar10_dir`] | [`read_fashion_mnist_dir`] |
//! | Pathfinder / Path-X | [`read_pathfinder_dir`] | [`PathfinderDataset::generate_splits`], [`generate_pathfinder`] |
//!
//! Conventions: token ids use the task vocabulary with 0 as padding (ListOps: see
//! [`crate::preset::LISTOPS_VOCAB`]; bytes: id = byte + 1), documents are truncated to the
//! task length, pixels are raw grey values 0..=255 in raster order. Readers never drop a
//! record silently: malformed input is a typed [`DataError`] naming the file and the line or
//! record; records that are skipped on purpose (a known empty image, an e-mail without a body)
//! are counted in [`Dataset::skipped`].
//!
//! Everything random (generation, shuffles, split assignment) uses the crate's own
//! [`Rng`] (xoshiro256** seeded by SplitMix64), so the same seed gives the same bytes on every
//! platform.
//!
//! ```
//! use convluna::data::{make_batch, Dataset, ListOpsConfig, ListOpsDataset, PadTo};
//! # fn main() -> convluna::Result<()> {
//! let cfg = ListOpsConfig::small();
//! let splits = ListOpsDataset::generate_splits(&cfg, 64, 8, 8, 42, 200);
//! let batch = make_batch(&*splits.train, &[0, 1, 2, 3], PadTo::Longest, &candle_core::Device::Cpu)?;
//! assert_eq!(batch.labels.dims(), &[4]);
//! assert_eq!(splits.train.num_classes(), 10);
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::Arc;

mod io;

pub mod batch;
#[cfg(feature = "hub")]
pub mod hub;
pub mod image;
pub mod length;
pub mod listops;
pub mod pathfinder;
pub mod retrieval;
pub mod text;

pub use crate::error::{DataError, Location};

pub use crate::rng::{mix_seed, permutation, sin_cos_deg, splitmix64, Rng};
pub use batch::{bucketed_batches, epoch_order, make_batch, Batch, PadTo};
pub use image::{
    downsample_splits, grey, read_cifar10_batch, read_cifar10_dir, read_fashion_mnist_dir,
    read_idx, read_idx_pair, Downsampled, IdxArray, ImageDataset,
};
pub use length::{fit_lengths, LengthFit, SplitLengths};
pub use listops::{
    encode_listops, evaluate_listops, generate_listops, listops_source, listops_stats,
    parse_listops_line, read_listops_dir, write_listops_dir, write_listops_tsv, ListOpsConfig,
    ListOpsDataset, ListOpsGenerator, ListOpsRow, ListOpsStats,
};
pub use pathfinder::{
    decode_grey_png, encode_grey_png, generate_pathfinder, parse_metadata_row, pathfinder_sample,
    pathfinder_samples, read_pathfinder_dir, write_pathfinder_batch, write_pathfinder_dir,
    MetadataRow, PathfinderConfig, PathfinderDataset, PathfinderSample, PngDataset,
};
pub use retrieval::{
    pair_substitute, pair_substitute_splits, parse_aan_line, read_aan_dir, try_pair_substitute,
    AanDataset, AanRow, PairDataset,
};
pub use text::{
    byte_ids, read_bbc, read_class_folders, read_imdb_dir, read_spam_assassin, split_corpus,
    strip_email_headers, MemoryTextDataset, TextFolderDataset,
};

/// Default truncation length of the byte-level tasks (Text, Retrieval per document).
pub const DEFAULT_TEXT_LEN: usize = 4000;

/// One document.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Sequence {
    /// Token ids in the task vocabulary (padding id 0 never appears inside).
    Tokens(Vec<u32>),
    /// Raw grey pixels 0..=255 in raster order.
    Pixels(Vec<u8>),
}

impl Sequence {
    /// Number of positions.
    pub fn len(&self) -> usize {
        match self {
            Sequence::Tokens(t) => t.len(),
            Sequence::Pixels(p) => p.len(),
        }
    }

    /// Whether the document has no position.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids of a token document (`None` for pixels).
    pub fn tokens(&self) -> Option<&[u32]> {
        match self {
            Sequence::Tokens(t) => Some(t),
            Sequence::Pixels(_) => None,
        }
    }

    /// Pixels of an image document (`None` for tokens).
    pub fn pixels(&self) -> Option<&[u8]> {
        match self {
            Sequence::Pixels(p) => Some(p),
            Sequence::Tokens(_) => None,
        }
    }
}

/// One labelled example: a document, or two for the retrieval (pair) task.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Example {
    /// The (first) document.
    pub doc: Sequence,
    /// The second document of a pair task.
    pub doc2: Option<Sequence>,
    /// Class in `0..num_classes`.
    pub label: u32,
}

/// What a data set is, apart from its examples: the metadata every [`Dataset`] reports,
/// kept in one value so that readers and views (subsets, truncations, downsampling) carry it
/// instead of repeating five getters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetInfo {
    /// What the data is, e.g. `listops (generated)` or `text: spam-assassin (substitute)`.
    pub name: String,
    /// Number of classes; labels are in `0..num_classes`.
    pub num_classes: usize,
    /// Task length per document (the truncation length).
    pub max_len: usize,
    /// Whether examples are document pairs (the retrieval task).
    pub is_pair: bool,
    /// Records skipped on purpose while reading (reported, never silent).
    pub skipped: usize,
}

impl DatasetInfo {
    /// Single-document data called `name` with `num_classes` classes, documents of at most
    /// `max_len` positions, nothing skipped.
    pub fn new(name: impl Into<String>, num_classes: usize, max_len: usize) -> Self {
        Self {
            name: name.into(),
            num_classes,
            max_len,
            is_pair: false,
            skipped: 0,
        }
    }

    /// The same, called `name`.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The same, with documents of at most `max_len` positions.
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// The same, with examples that are document pairs (`true`) or single documents.
    pub fn with_pair(mut self, is_pair: bool) -> Self {
        self.is_pair = is_pair;
        self
    }

    /// The same, reporting `skipped` records skipped on purpose while reading.
    pub fn with_skipped(mut self, skipped: usize) -> Self {
        self.skipped = skipped;
        self
    }
}

/// A labelled data set, possibly read lazily from disk.
///
/// An implementation gives its examples ([`Dataset::len`], [`Dataset::get`]) and its
/// [`DatasetInfo`]; the metadata getters read the info. Readers that know labels or lengths
/// more cheaply than by building an example override [`Dataset::label`] and
/// [`Dataset::length`].
pub trait Dataset: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Example `index` (documents already truncated to [`Dataset::max_len`]).
    fn get(&self, index: usize) -> crate::Result<Example>;
    /// Name, classes, task length, pair flag and skipped records.
    fn info(&self) -> &DatasetInfo;
    /// Number of classes.
    fn num_classes(&self) -> usize {
        self.info().num_classes
    }
    /// Task length per document (the truncation length).
    fn max_len(&self) -> usize {
        self.info().max_len
    }
    /// What the data is, e.g. `listops (generated)` or `text: spam-assassin (substitute)`.
    fn name(&self) -> String {
        self.info().name.clone()
    }
    /// Whether examples are document pairs.
    fn is_pair(&self) -> bool {
        self.info().is_pair
    }
    /// Records skipped on purpose while reading (reported, never silent).
    fn skipped(&self) -> usize {
        self.info().skipped
    }
    /// Whether the data set has no example.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The label of example `index` (cheaper than [`Dataset::get`] where the reader knows it).
    fn label(&self, index: usize) -> crate::Result<u32> {
        Ok(self.get(index)?.label)
    }
    /// Length of example `index` (the longer document of a pair), used for bucketing; readers
    /// that stream from disk may answer from file sizes without reading.
    fn length(&self, index: usize) -> crate::Result<usize> {
        let ex = self.get(index)?;
        Ok(ex.doc.len().max(ex.doc2.as_ref().map_or(0, |d| d.len())))
    }
}

/// Train, validation and test sets.
///
/// Where one corpus is split into parts by the reader, records skipped while reading it are
/// counted on the train part only.
#[derive(Clone)]
pub struct Splits {
    /// Training set.
    pub train: Arc<dyn Dataset>,
    /// Validation set.
    pub val: Arc<dyn Dataset>,
    /// Test set.
    pub test: Arc<dyn Dataset>,
}

impl Splits {
    /// One line per split: name, size, classes, skipped records.
    pub fn summary(&self) -> String {
        [
            ("train", &self.train),
            ("val", &self.val),
            ("test", &self.test),
        ]
        .iter()
        .map(|(s, d)| {
            format!(
                "{s}: {} examples of {} ({} classes, length {}{})",
                d.len(),
                d.name(),
                d.num_classes(),
                d.max_len(),
                if d.skipped() > 0 {
                    format!(", {} records skipped", d.skipped())
                } else {
                    String::new()
                }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// The same splits with the training set cut to its first `n` examples (validation and
    /// test unchanged): a smaller training set read from the same corpus, e.g. so that a run
    /// reaches its plateau on a small budget.
    ///
    /// An error naming `train_examples` when `n` is 0 or more than the training set holds.
    pub fn with_train_prefix(self, n: usize) -> crate::Result<Splits> {
        let have = self.train.len();
        if n == 0 || n > have {
            return Err(crate::Error::config(
                "train_examples",
                format!(
                    "{n}: expected 1 to {have}, the size of the training split of {}",
                    self.train.name()
                ),
            ));
        }
        if n == have {
            return Ok(self);
        }
        let name = format!("{} (first {n})", self.train.name());
        let skipped = self.train.skipped();
        Ok(Splits {
            train: Arc::new(Subset::new(self.train, (0..n).collect(), name).with_skipped(skipped)),
            val: self.val,
            test: self.test,
        })
    }
}

impl std::fmt::Debug for Splits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Number of examples of each class.
pub fn label_counts(ds: &dyn Dataset) -> crate::Result<Vec<usize>> {
    let mut counts = vec![0usize; ds.num_classes()];
    for i in 0..ds.len() {
        let l = ds.label(i)? as usize;
        if l >= counts.len() {
            counts.resize(l + 1, 0);
        }
        counts[l] += 1;
    }
    Ok(counts)
}

/// Share of the most common label (the accuracy of always guessing it); 0 for an empty set.
pub fn majority_fraction(ds: &dyn Dataset) -> crate::Result<f64> {
    if ds.is_empty() {
        return Ok(0.0);
    }
    let counts = label_counts(ds)?;
    Ok(*counts.iter().max().unwrap_or(&0) as f64 / ds.len() as f64)
}

/// A view of some examples of another data set.
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
    info: DatasetInfo,
}

impl Subset {
    /// The examples `indices` of `inner` (in that order), called `name`. Indices must be below
    /// `inner.len()`; out-of-range ones give an error on `get`.
    pub fn new(inner: Arc<dyn Dataset>, indices: Vec<usize>, name: impl Into<String>) -> Self {
        let info = inner.info().clone().with_name(name).with_skipped(0);
        Subset {
            inner,
            indices,
            info,
        }
    }

    /// Reports `skipped` records (those skipped while reading the underlying corpus).
    pub fn with_skipped(mut self, skipped: usize) -> Self {
        self.info.skipped = skipped;
        self
    }

    fn map(&self, index: usize) -> crate::Result<usize> {
        self.indices
            .get(index)
            .copied()
            .ok_or_else(|| index_error(index, self.indices.len()))
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, index: usize) -> crate::Result<Example> {
        self.inner.get(self.map(index)?)
    }
    fn info(&self) -> &DatasetInfo {
        &self.info
    }
    fn label(&self, index: usize) -> crate::Result<u32> {
        self.inner.label(self.map(index)?)
    }
    fn length(&self, index: usize) -> crate::Result<usize> {
        self.inner.length(self.map(index)?)
    }
}

/// Splits `ds` by a seeded shuffle into parts proportional to `parts` (e.g. `(80, 10, 10)`);
/// names get ` [train]`, ` [val]`, ` [test]` appended.
pub fn split_shuffled(ds: Arc<dyn Dataset>, parts: (usize, usize, usize), seed: u64) -> Splits {
    let order = permutation(ds.len(), seed);
    split_order(ds, order, parts)
}

/// Splits `ds` in its own order into consecutive parts proportional to `parts`.
pub fn split_contiguous(ds: Arc<dyn Dataset>, parts: (usize, usize, usize)) -> Splits {
    let order: Vec<usize> = (0..ds.len()).collect();
    split_order(ds, order, parts)
}

pub(crate) fn split_order(
    ds: Arc<dyn Dataset>,
    order: Vec<usize>,
    parts: (usize, usize, usize),
) -> Splits {
    let n = order.len();
    let total = (parts.0 + parts.1 + parts.2).max(1);
    let n_train = n * parts.0 / total;
    let n_val = n * parts.1 / total;
    let name = ds.name();
    let skipped = ds.skipped();
    let train = order[..n_train].to_vec();
    let val = order[n_train..n_train + n_val].to_vec();
    let test = order[n_train + n_val..].to_vec();
    Splits {
        train: Arc::new(
            Subset::new(ds.clone(), train, format!("{name} [train]")).with_skipped(skipped),
        ),
        val: Arc::new(Subset::new(ds.clone(), val, format!("{name} [val]"))),
        test: Arc::new(Subset::new(ds, test, format!("{name} [test]"))),
    }
}

/// Fails with [`DataError::Empty`] when `ds` has no example.
pub(crate) fn ensure_nonempty(
    ds: &dyn Dataset,
    path: impl Into<PathBuf>,
    reason: &str,
) -> crate::Result<()> {
    if ds.is_empty() {
        return Err(DataError::Empty {
            path: path.into(),
            reason: reason.to_string(),
        }
        .into());
    }
    Ok(())
}

/// The error of an index at or past the end of a data set of `len` examples.
pub(crate) fn index_error(index: usize, len: usize) -> crate::Error {
    crate::Error::shape("index", format!("an index below {len}"), index)
}
