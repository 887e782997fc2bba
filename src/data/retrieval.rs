//! Retrieval: the AAN pairs of the LRA release (`new_aan_pairs.{train,eval,test}.tsv`, no
//! header, 5 tab-separated columns: label (a float), id1, id2, text1, text2), read lazily, and a
//! two-document substitute built from any labelled corpus (label 1 iff both documents come from
//! the same class).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::io::{for_each_line_offset, read_line_at};
use super::text::byte_ids;
use super::{index_error, Dataset, DatasetInfo, Example, Sequence, Splits};
use crate::error::Result;
use crate::error::{clip, DataError, Location};
use crate::rng::{Rng, RngExt};

/// One parsed AAN row (fields borrowed from the line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AanRow<'a> {
    /// 1 when the two papers are linked by a citation.
    pub label: u32,
    /// First paper id.
    pub id1: &'a [u8],
    /// Second paper id.
    pub id2: &'a [u8],
    /// First paper text.
    pub text1: &'a [u8],
    /// Second paper text.
    pub text2: &'a [u8],
}

/// Parses one AAN line (without its newline): `None` for a blank line.
pub fn parse_aan_line<'a>(bytes: &'a [u8], path: &Path, line: usize) -> Result<Option<AanRow<'a>>> {
    let at = Location::Line(line);
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(None);
    }
    let fields: Vec<&[u8]> = bytes.split(|&b| b == b'\t').collect();
    if fields.len() != 5 {
        return Err(DataError::ColumnCount {
            path: path.into(),
            at,
            expected: 5,
            found: fields.len(),
        }
        .into());
    }
    let label_text = fields[0].trim_ascii();
    let label = std::str::from_utf8(label_text)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .and_then(|v| {
            if v == 0.0 {
                Some(0)
            } else if v == 1.0 {
                Some(1)
            } else {
                None
            }
        });
    let Some(label) = label else {
        return Err(DataError::LabelOutOfRange {
            path: path.into(),
            at,
            label: clip(&String::from_utf8_lossy(label_text)),
            num_classes: 2,
        }
        .into());
    };
    Ok(Some(AanRow {
        label,
        id1: fields[1],
        id2: fields[2],
        text1: fields[3],
        text2: fields[4],
    }))
}

/// An AAN file indexed by line offsets: validated when opened, each pair read on `get`.
pub struct AanDataset {
    path: PathBuf,
    rows: Vec<(u64, usize, u8)>,
    info: DatasetInfo,
}

impl AanDataset {
    /// Reads and validates `path`; blank lines are skipped and counted.
    pub fn open(path: &Path, max_len: usize) -> Result<Self> {
        let mut rows = Vec::new();
        let mut skipped = 0;
        for_each_line_offset(path, |line, offset, bytes| {
            match parse_aan_line(bytes, path, line)? {
                Some(row) => rows.push((offset, line, row.label as u8)),
                None => skipped += 1,
            }
            Ok(())
        })?;
        if rows.is_empty() {
            return Err(DataError::Empty {
                path: path.into(),
                reason: "no AAN pair".into(),
            }
            .into());
        }
        let file = path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(AanDataset {
            path: path.into(),
            rows,
            info: DatasetInfo::new(format!("retrieval: {file}"), 2, max_len)
                .with_pair(true)
                .with_skipped(skipped),
        })
    }
}

impl Dataset for AanDataset {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        let &(offset, line, _) = self
            .rows
            .get(index)
            .ok_or_else(|| index_error(index, self.rows.len()))?;
        let bytes = read_line_at(&self.path, offset)?;
        let row =
            parse_aan_line(&bytes, &self.path, line)?.ok_or_else(|| DataError::Malformed {
                path: self.path.clone(),
                at: Location::Line(line),
                reason: "line changed since the file was opened".into(),
            })?;
        Ok(Example {
            doc: Sequence::Tokens(byte_ids(row.text1, self.info.max_len)),
            doc2: Some(Sequence::Tokens(byte_ids(row.text2, self.info.max_len))),
            label: row.label,
        })
    }
    fn info(&self) -> &DatasetInfo {
        &self.info
    }
    fn label(&self, index: usize) -> Result<u32> {
        self.rows
            .get(index)
            .map(|r| r.2 as u32)
            .ok_or_else(|| index_error(index, self.rows.len()))
    }
}

/// Reads `new_aan_pairs.train.tsv` (train), `.eval.tsv` (validation) and `.test.tsv` of `dir`.
pub fn read_aan_dir(dir: &Path, max_len: usize) -> Result<Splits> {
    let open = |s: &str| -> Result<Arc<dyn Dataset>> {
        Ok(Arc::new(AanDataset::open(
            &dir.join(format!("new_aan_pairs.{s}.tsv")),
            max_len,
        )?))
    };
    Ok(Splits {
        train: open("train")?,
        val: open("eval")?,
        test: open("test")?,
    })
}

/// Pairs of documents of one corpus: label 1 iff both come from the same class.
pub struct PairDataset {
    corpus: Arc<dyn Dataset>,
    pairs: Vec<(u32, u32, u8)>,
    info: DatasetInfo,
}

impl PairDataset {
    /// The corpus indices and label of pair `index`.
    pub fn pair(&self, index: usize) -> Option<(usize, usize, u32)> {
        self.pairs
            .get(index)
            .map(|&(a, b, l)| (a as usize, b as usize, l as u32))
    }
}

impl Dataset for PairDataset {
    fn len(&self) -> usize {
        self.pairs.len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        let (a, b, label) = self
            .pair(index)
            .ok_or_else(|| index_error(index, self.pairs.len()))?;
        Ok(Example {
            doc: self.corpus.get(a)?.doc,
            doc2: Some(self.corpus.get(b)?.doc),
            label,
        })
    }
    fn info(&self) -> &DatasetInfo {
        &self.info
    }
    fn label(&self, index: usize) -> Result<u32> {
        self.pair(index)
            .map(|p| p.2)
            .ok_or_else(|| index_error(index, self.pairs.len()))
    }
    fn length(&self, index: usize) -> Result<usize> {
        let (a, b, _) = self
            .pair(index)
            .ok_or_else(|| index_error(index, self.pairs.len()))?;
        Ok(self.corpus.length(a)?.max(self.corpus.length(b)?))
    }
}

/// `n` pairs of documents of `corpus`, exactly ⌊n/2⌋ of them (label 1) from the same class and
/// the others from two different classes, in a seeded random order; or an error when the
/// corpus has fewer than two non-empty classes or no class with two documents.
pub fn try_pair_substitute(
    corpus: Arc<dyn Dataset>,
    n: usize,
    seed: u64,
) -> Result<Arc<dyn Dataset>> {
    let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); corpus.num_classes().max(1)];
    for i in 0..corpus.len() {
        let l = corpus.label(i)? as usize;
        if l >= by_class.len() {
            by_class.resize(l + 1, Vec::new());
        }
        by_class[l].push(i as u32);
    }
    let nonempty = by_class.iter().filter(|c| !c.is_empty()).count();
    let pos_pool: Vec<u32> = by_class
        .iter()
        .filter(|c| c.len() >= 2)
        .flatten()
        .copied()
        .collect();
    if nonempty < 2 || pos_pool.is_empty() {
        return Err(DataError::Empty {
            path: PathBuf::from(corpus.name()),
            reason: "pairs need two non-empty classes and a class with two documents".into(),
        }
        .into());
    }
    let mut class_of = vec![0u32; corpus.len()];
    for (c, members) in by_class.iter().enumerate() {
        for &m in members {
            class_of[m as usize] = c as u32;
        }
    }
    let mut rng = Rng::new(seed);
    let mut labels: Vec<u8> = (0..n).map(|i| u8::from(i < n / 2)).collect();
    rng.shuffle(&mut labels);
    let total = corpus.len();
    let mut pairs = Vec::with_capacity(n);
    for label in labels {
        if label == 1 {
            let a = pos_pool[rng.index(pos_pool.len())];
            let same = &by_class[class_of[a as usize] as usize];
            let mut b = same[rng.index(same.len() - 1)];
            if b == a {
                b = same[same.len() - 1];
            }
            pairs.push((a, b, 1));
        } else {
            let a = rng.index(total) as u32;
            let ca = class_of[a as usize] as usize;
            let others = total - by_class[ca].len();
            // The k-th document (in index order) outside class `ca`.
            let mut k = rng.index(others);
            let mut b = 0u32;
            for (c, members) in by_class.iter().enumerate() {
                if c == ca {
                    continue;
                }
                if k < members.len() {
                    b = members[k];
                    break;
                }
                k -= members.len();
            }
            pairs.push((a, b, 0));
        }
    }
    let base = corpus.name();
    let name = if base.contains("substitute") {
        format!("retrieval: same-class pairs of {base}")
    } else {
        format!("retrieval: same-class pairs of {base} (substitute)")
    };
    let info = DatasetInfo::new(name, 2, corpus.max_len()).with_pair(true);
    Ok(Arc::new(PairDataset {
        corpus,
        pairs,
        info,
    }))
}

/// [`try_pair_substitute`] for a corpus known to have two classes.
///
/// # Panics
/// When the corpus cannot give both kinds of pair (see [`try_pair_substitute`]).
pub fn pair_substitute(corpus: Arc<dyn Dataset>, n: usize, seed: u64) -> Arc<dyn Dataset> {
    try_pair_substitute(corpus, n, seed).unwrap_or_else(|e| panic!("pair_substitute: {e}"))
}

/// Pairs within each split of `corpus` (no document is shared between pair splits).
pub fn pair_substitute_splits(
    corpus: &Splits,
    train: usize,
    val: usize,
    test: usize,
    seed: u64,
) -> Result<Splits> {
    Ok(Splits {
        train: try_pair_substitute(corpus.train.clone(), train, seed)?,
        val: try_pair_substitute(corpus.val.clone(), val, crate::rng::mix_seed(seed, 1))?,
        test: try_pair_substitute(corpus.test.clone(), test, crate::rng::mix_seed(seed, 2))?,
    })
}
