//! Document lengths against a run's length limit, checked before training.
//!
//! A model has a fixed number of positions, so a document longer than that must be cut — and
//! ListOps' answer, for one, depends on every token. [`fit_lengths`] therefore measures every
//! split first and either sizes the run to the data (the longest document, up to the limit)
//! or, when some document is longer than the limit, stops with [`Error::TooLong`] saying how
//! many would be cut and by how much — unless the caller asked for truncation, in which case
//! the documents are cut to the limit and the report says how many were.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Dataset, DatasetInfo, Example, Sequence, Splits};
use crate::error::{Error, Result};

/// The lengths of one split against the limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitLengths {
    /// `train`, `val` or `test`.
    pub split: String,
    /// Examples in the split.
    pub examples: usize,
    /// Length of the longest example (the longer document of a pair).
    pub longest: usize,
    /// Examples longer than the limit (cut when truncation was asked for).
    pub over: usize,
}

/// What [`fit_lengths`] found and did.
#[derive(Clone, Debug)]
pub struct LengthFit {
    /// The splits, each reporting `max_len` and (with truncation) cut to it.
    pub splits: Splits,
    /// The run's length: the longest document (at most the limit), or the limit itself when
    /// the caller pads to it.
    pub max_len: usize,
    /// The limit the documents were checked against.
    pub limit: usize,
    /// Per split, in the order train, val, test.
    pub lengths: Vec<SplitLengths>,
}

impl LengthFit {
    /// Examples cut to the limit, over all splits (0 unless truncation was asked for).
    pub fn cut(&self) -> usize {
        self.lengths.iter().map(|l| l.over).sum()
    }

    /// One line: the run's length and what was cut, e.g. `length 1999 (longest 1999, limit 2000)`.
    pub fn describe(&self) -> String {
        let longest = self.lengths.iter().map(|l| l.longest).max().unwrap_or(0);
        let mut s = format!(
            "length {} (longest document {longest}, limit {})",
            self.max_len, self.limit
        );
        if self.cut() > 0 {
            let parts: Vec<String> = self
                .lengths
                .iter()
                .filter(|l| l.over > 0)
                .map(|l| format!("{} of {} {}", l.over, l.examples, l.split))
                .collect();
            s += &format!(
                "; truncated to {} as asked: {}",
                self.limit,
                parts.join(", ")
            );
        }
        s
    }
}

/// Measures every example of `splits` against `limit` positions.
///
/// - No example is longer than the limit: the run's length is the longest example (or the
///   limit itself with `pad_to_limit`, for runs that pad every batch to the task length).
/// - Some are longer and `truncate` is false: [`Error::TooLong`] naming the split, how many
///   examples and the longest — before anything is trained.
/// - Some are longer and `truncate` is true: they are cut to the limit, and
///   [`LengthFit::lengths`] says how many were.
///
/// The returned splits report the run's length as [`Dataset::max_len`], so padding to the
/// task length ([`crate::data::PadTo::Fixed`]) pads to it.
pub fn fit_lengths(
    splits: &Splits,
    limit: usize,
    truncate: bool,
    pad_to_limit: bool,
) -> Result<LengthFit> {
    if limit == 0 {
        return Err(Error::config("max_len", "must be at least 1"));
    }
    let mut lengths = Vec::new();
    for (split, ds) in [
        ("train", &splits.train),
        ("val", &splits.val),
        ("test", &splits.test),
    ] {
        let (mut longest, mut over) = (0, 0);
        for i in 0..ds.len() {
            let n = ds.length(i)?;
            longest = longest.max(n);
            over += usize::from(n > limit);
        }
        if over > 0 && !truncate {
            return Err(Error::TooLong {
                data: ds.name(),
                split: split.to_string(),
                over,
                total: ds.len(),
                longest,
                limit,
            });
        }
        lengths.push(SplitLengths {
            split: split.to_string(),
            examples: ds.len(),
            longest,
            over,
        });
    }
    let longest = lengths.iter().map(|l| l.longest).max().unwrap_or(0);
    let max_len = if pad_to_limit {
        limit
    } else {
        longest.clamp(1, limit)
    };
    let wrap = |ds: &Arc<dyn Dataset>| -> Arc<dyn Dataset> {
        Arc::new(Limited {
            inner: ds.clone(),
            max_len,
            info: ds.info().clone().with_max_len(max_len),
        })
    };
    Ok(LengthFit {
        splits: Splits {
            train: wrap(&splits.train),
            val: wrap(&splits.val),
            test: wrap(&splits.test),
        },
        max_len,
        limit,
        lengths,
    })
}

/// A data set whose documents are cut to `max_len` positions (a no-op for those that fit).
struct Limited {
    inner: Arc<dyn Dataset>,
    max_len: usize,
    info: DatasetInfo,
}

fn cut(doc: Sequence, n: usize) -> Sequence {
    match doc {
        Sequence::Tokens(mut t) => {
            t.truncate(n);
            Sequence::Tokens(t)
        }
        Sequence::Pixels(mut p) => {
            p.truncate(n);
            Sequence::Pixels(p)
        }
    }
}

impl Dataset for Limited {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        let ex = self.inner.get(index)?;
        Ok(Example {
            doc: cut(ex.doc, self.max_len),
            doc2: ex.doc2.map(|d| cut(d, self.max_len)),
            label: ex.label,
        })
    }
    fn info(&self) -> &DatasetInfo {
        &self.info
    }
    fn label(&self, index: usize) -> Result<u32> {
        self.inner.label(index)
    }
    fn length(&self, index: usize) -> Result<usize> {
        Ok(self.inner.length(index)?.min(self.max_len))
    }
}
