//! ListOps: the LRA generator (seeded, platform independent), the official TSV layout
//! (`basic_{train,val,test}.tsv`, header `Source<TAB>Target`) and its reader.
//!
//! A tree is drawn as in LRA's `listops.py`: a node at depth < `max_depth` (the root has
//! depth 1) is a digit leaf with probability `leaf_prob`, otherwise an operator (uniform over `[MIN`,
//! `[MAX`, `[MED`, `[SM`) with `2..=max_args` children one level deeper; depth `max_depth`
//! forces a leaf. MED is the integer part of the median, SM the sum mod 10. The length is the
//! number of tokens without parentheses; a tree is kept when `min_len < length < max_len`,
//! duplicates are dropped. A draw is abandoned as soon as it reaches `max_len` tokens (the
//! kept trees have exactly the LRA distribution; only rejected draws are cut short).
//!
//! Token ids ([`crate::preset::LISTOPS_VOCAB`] = 16): 0 pad, 1–10 the digits 0–9, 11 `[MIN`,
//! 12 `[MAX`, 13 `[MED`, 14 `[SM`, 15 `]`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::io::{for_each_line, write_file};
use super::{index_error, split_contiguous, Dataset, DatasetInfo, Example, Sequence, Splits};
use crate::error::{clip, DataError, Location};
use crate::error::{Error, Result};
use crate::rng::{Rng, RngExt};

/// Id of `[MIN`.
pub const MIN: u32 = 11;
/// Id of `[MAX`.
pub const MAX: u32 = 12;
/// Id of `[MED`.
pub const MED: u32 = 13;
/// Id of `[SM` (sum mod 10).
pub const SM: u32 = 14;
/// Id of `]`.
pub const END: u32 = 15;
/// Number of ListOps classes (the digits).
pub const NUM_CLASSES: usize = 10;

const OP_NAMES: [&str; 4] = ["[MIN", "[MAX", "[MED", "[SM"];
const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Settings of the ListOps generator.
#[derive(Clone, Debug, PartialEq)]
pub struct ListOpsConfig {
    /// Trees are kept when `min_len < length` (exclusive, as LRA).
    pub min_len: usize,
    /// … and `length < max_len` (exclusive, as LRA).
    pub max_len: usize,
    /// Depth at which a leaf is forced (the root has depth 1).
    pub max_depth: usize,
    /// Largest number of operator arguments (the smallest is 2).
    pub max_args: usize,
    /// Probability that a node above `max_depth` is a digit leaf.
    pub leaf_prob: f64,
}

impl ListOpsConfig {
    /// The LRA settings: 500 < length < 2000, depth 10, 2..=10 arguments, leaf probability 0.75.
    pub fn official() -> Self {
        ListOpsConfig {
            min_len: 500,
            max_len: 2000,
            max_depth: 10,
            max_args: 10,
            leaf_prob: 0.75,
        }
    }

    /// A short variant for quick CPU runs: 20 < length < 200, depth 6, 2..=5 arguments, leaf
    /// probability 0.6 (about 26 % of draws kept, mean length about 70, most common label
    /// about 11 %).
    pub fn small() -> Self {
        ListOpsConfig {
            min_len: 20,
            max_len: 200,
            max_depth: 6,
            max_args: 5,
            leaf_prob: 0.6,
        }
    }

    /// Checks that trees inside the length bounds can be drawn at all.
    pub fn validate(&self) -> Result<()> {
        if self.max_args < 2 {
            return Err(Error::config("listops.max_args", "must be at least 2"));
        }
        if !(2..=1000).contains(&self.max_depth) {
            return Err(Error::config(
                "listops.max_depth",
                "must be in 2..=1000 (depth 1 is a single digit)",
            ));
        }
        if !(0.0..1.0).contains(&self.leaf_prob) {
            return Err(Error::config("listops.leaf_prob", "must be in [0, 1)"));
        }
        if self.min_len + 1 >= self.max_len {
            return Err(Error::config(
                "listops.max_len",
                "must exceed min_len + 1 (both bounds are exclusive)",
            ));
        }
        if self.longest_tree() <= self.min_len {
            return Err(Error::config(
                "listops.min_len",
                format!(
                    "no tree of depth {} with {} arguments is longer than {}",
                    self.max_depth, self.max_args, self.min_len
                ),
            ));
        }
        Ok(())
    }

    /// Length of the largest possible tree (saturating).
    fn longest_tree(&self) -> usize {
        let mut len = 1usize;
        for _ in 1..self.max_depth {
            len = len.saturating_mul(self.max_args).saturating_add(2);
        }
        len
    }
}

/// Draws one tree into `out` (ids as `u8`), returning its value, or `None` when it reached
/// `max_len` tokens and was abandoned.
fn draw_tree(
    rng: &mut Rng,
    cfg: &ListOpsConfig,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Option<u8> {
    out.clear();
    scratch.clear();
    draw_node(rng, cfg, 1, out, scratch)
}

fn draw_node(
    rng: &mut Rng,
    cfg: &ListOpsConfig,
    depth: usize,
    out: &mut Vec<u8>,
    vals: &mut Vec<u8>,
) -> Option<u8> {
    if out.len() >= cfg.max_len {
        return None;
    }
    if depth >= cfg.max_depth || rng.f64() < cfg.leaf_prob {
        let v = rng.below(10) as u8;
        out.push(v + 1);
        return Some(v);
    }
    let args = rng.range_inclusive(2, cfg.max_args as u64) as usize;
    let op = rng.below(4) as u8;
    out.push(MIN as u8 + op);
    let start = vals.len();
    for _ in 0..args {
        let v = draw_node(rng, cfg, depth + 1, out, vals)?;
        vals.push(v);
    }
    out.push(END as u8);
    let v = apply(op, &mut vals[start..]);
    vals.truncate(start);
    Some(v)
}

/// Applies operator `op` (0 MIN, 1 MAX, 2 MED, 3 SM) to `args` (reorders them).
fn apply(op: u8, args: &mut [u8]) -> u8 {
    match op {
        0 => *args.iter().min().unwrap_or(&0),
        1 => *args.iter().max().unwrap_or(&0),
        2 => {
            if args.is_empty() {
                return 0;
            }
            args.sort_unstable();
            let n = args.len();
            if n % 2 == 1 {
                args[n / 2]
            } else {
                ((args[n / 2 - 1] as u32 + args[n / 2] as u32) / 2) as u8
            }
        }
        _ => (args.iter().map(|&a| a as u32).sum::<u32>() % 10) as u8,
    }
}

/// A 128-bit fingerprint of a tree (FNV-1a and a multiplicative hash), used for
/// deduplication without keeping every tree; a collision among 10⁵ trees has probability
/// about 10⁻²⁹.
fn tree_hash(ids: &[u8]) -> u128 {
    let (mut a, mut b) = (0xcbf2_9ce4_8422_2325u64, ids.len() as u64);
    for &t in ids {
        a = (a ^ t as u64).wrapping_mul(0x100_0000_01b3);
        b = (b.rotate_left(5) ^ t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    ((a as u128) << 64) | b as u128
}

/// Draws distinct ListOps trees inside the length bounds, one at a time.
pub struct ListOpsGenerator {
    cfg: ListOpsConfig,
    rng: Rng,
    seen: HashSet<u128>,
    draws: u64,
    in_range: u64,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    /// Consecutive draws without a new tree after which [`ListOpsGenerator::next_example`] gives up.
    pub patience: u64,
}

impl ListOpsGenerator {
    /// A generator for `cfg` (validated) seeded with `seed`.
    pub fn new(cfg: &ListOpsConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        Ok(ListOpsGenerator {
            cfg: cfg.clone(),
            rng: Rng::new(seed),
            seen: HashSet::new(),
            draws: 0,
            in_range: 0,
            buf: Vec::new(),
            scratch: Vec::new(),
            patience: 10_000_000,
        })
    }

    /// The next new tree as ids (`u8`) and its label, or `None` after `patience` consecutive
    /// draws without one (the bounds are (nearly) impossible or every tree has been drawn).
    pub fn next_example(&mut self) -> Option<(Vec<u8>, u32)> {
        let mut misses = 0u64;
        loop {
            self.draws += 1;
            let value = draw_tree(&mut self.rng, &self.cfg, &mut self.buf, &mut self.scratch);
            if let Some(v) = value {
                let len = self.buf.len();
                if len > self.cfg.min_len && len < self.cfg.max_len {
                    self.in_range += 1;
                    if self.seen.insert(tree_hash(&self.buf)) {
                        return Some((self.buf.clone(), v as u32));
                    }
                }
            }
            misses += 1;
            if misses >= self.patience {
                return None;
            }
        }
    }

    /// Trees drawn so far.
    pub fn draws(&self) -> u64 {
        self.draws
    }

    /// Draws inside the length bounds (duplicates included).
    pub fn in_range(&self) -> u64 {
        self.in_range
    }

    /// Distinct trees returned.
    pub fn kept(&self) -> u64 {
        self.seen.len() as u64
    }
}

/// Statistics of the generator over a number of draws.
#[derive(Clone, Debug, PartialEq)]
pub struct ListOpsStats {
    /// Trees drawn.
    pub draws: u64,
    /// Draws inside the length bounds (duplicates included).
    pub kept: u64,
    /// `kept / draws`.
    pub keep_rate: f64,
    /// Mean length of the kept draws.
    pub mean_len: f64,
    /// Share of each label among the kept draws.
    pub label_shares: [f64; 10],
}

/// Keep-rate, mean length and label distribution over `draws` draws (no deduplication).
pub fn listops_stats(cfg: &ListOpsConfig, draws: u64, seed: u64) -> Result<ListOpsStats> {
    cfg.validate()?;
    let mut rng = Rng::new(seed);
    let (mut buf, mut scratch) = (Vec::new(), Vec::new());
    let (mut kept, mut total_len) = (0u64, 0u64);
    let mut labels = [0u64; 10];
    for _ in 0..draws {
        if let Some(v) = draw_tree(&mut rng, cfg, &mut buf, &mut scratch) {
            if buf.len() > cfg.min_len && buf.len() < cfg.max_len {
                kept += 1;
                total_len += buf.len() as u64;
                labels[v as usize] += 1;
            }
        }
    }
    let denom = kept.max(1) as f64;
    Ok(ListOpsStats {
        draws,
        kept,
        keep_rate: kept as f64 / draws.max(1) as f64,
        mean_len: total_len as f64 / denom,
        label_shares: labels.map(|c| c as f64 / denom),
    })
}

fn generate_ids(cfg: &ListOpsConfig, n: usize, seed: u64) -> Result<Vec<(Vec<u8>, u32)>> {
    let mut g = ListOpsGenerator::new(cfg, seed)?;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match g.next_example() {
            Some(ex) => out.push(ex),
            None => {
                return Err(Error::config(
                    "listops",
                    format!(
                        "found only {} distinct trees in the bounds after {} draws",
                        out.len(),
                        g.draws()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// `n` distinct trees printed in the LRA form (left-nested parentheses, e.g. `[MAX 2 9 ]` is
/// `( ( ( [MAX 2 ) 9 ) ] )`) with their labels.
///
/// # Panics
/// When `cfg` is invalid or cannot yield `n` distinct trees (see [`ListOpsConfig::validate`]).
pub fn generate_listops(cfg: &ListOpsConfig, n: usize, seed: u64) -> Vec<(String, u32)> {
    let ids = generate_ids(cfg, n, seed).unwrap_or_else(|e| panic!("generate_listops: {e}"));
    ids.into_iter()
        .map(|(ids, label)| {
            let ids: Vec<u32> = ids.into_iter().map(u32::from).collect();
            (
                listops_source(&ids).expect("generated trees are well formed"),
                label,
            )
        })
        .collect()
}

fn token_name(id: u32) -> Option<&'static str> {
    match id {
        1..=10 => Some(DIGITS[id as usize - 1]),
        11..=14 => Some(OP_NAMES[id as usize - 11]),
        _ => None,
    }
}

/// Prints prefix ids (no parentheses) in the LRA form with left-nested parentheses; `None`
/// when the ids are not one well formed tree.
pub fn listops_source(ids: &[u32]) -> Option<String> {
    // Pass 1: number of children of every operator.
    let mut counts = vec![0usize; ids.len()];
    let mut stack: Vec<usize> = Vec::new();
    let mut done = false;
    for (p, &t) in ids.iter().enumerate() {
        if done {
            return None;
        }
        match t {
            1..=10 => match stack.last() {
                Some(&top) => counts[top] += 1,
                None => done = true,
            },
            11..=14 => {
                if let Some(&top) = stack.last() {
                    counts[top] += 1;
                }
                stack.push(p);
            }
            END => {
                stack.pop()?;
                if stack.is_empty() {
                    done = true;
                }
            }
            _ => return None,
        }
    }
    if !done || !stack.is_empty() {
        return None;
    }
    // Pass 2: print.
    let mut out = String::with_capacity(ids.len() * 4);
    let push = |s: &str, out: &mut String| {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(s);
    };
    let mut depth = 0usize;
    for (p, &t) in ids.iter().enumerate() {
        match t {
            1..=10 => {
                push(token_name(t)?, &mut out);
                if depth > 0 {
                    push(")", &mut out);
                }
            }
            11..=14 => {
                if counts[p] < 1 {
                    return None;
                }
                for _ in 0..=counts[p] {
                    push("(", &mut out);
                }
                push(token_name(t)?, &mut out);
                depth += 1;
            }
            _ => {
                push("]", &mut out);
                push(")", &mut out);
                depth -= 1;
                if depth > 0 {
                    push(")", &mut out);
                }
            }
        }
    }
    Some(out)
}

/// Value of prefix ids (no parentheses); `None` unless they are one well formed tree whose
/// operators all have at least one argument.
pub fn evaluate_listops(ids: &[u32]) -> Option<u32> {
    let mut stack: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut result = None;
    for &t in ids {
        if result.is_some() {
            return None;
        }
        let value = match t {
            1..=10 => (t - 1) as u8,
            11..=14 => {
                stack.push(((t - 11) as u8, Vec::new()));
                continue;
            }
            END => {
                let (op, mut args) = stack.pop()?;
                if args.is_empty() {
                    return None;
                }
                apply(op, &mut args)
            }
            _ => return None,
        };
        match stack.last_mut() {
            Some((_, args)) => args.push(value),
            None => result = Some(value as u32),
        }
    }
    if stack.is_empty() {
        result
    } else {
        None
    }
}

/// Id of one ListOps token (without parentheses).
fn token_id(tok: &[u8]) -> Option<u32> {
    Some(match tok {
        [d @ b'0'..=b'9'] => (d - b'0') as u32 + 1,
        b"[MIN" => MIN,
        b"[MAX" => MAX,
        b"[MED" => MED,
        b"[SM" => SM,
        b"]" => END,
        _ => return None,
    })
}

/// Encodes a source as LRA does: parentheses are deleted, then it is split on whitespace.
fn encode_bytes(source: &[u8]) -> std::result::Result<Vec<u32>, String> {
    let mut out = Vec::with_capacity(source.len() / 3);
    for tok in source.split(|b| b.is_ascii_whitespace()) {
        let tok: Vec<u8> = tok
            .iter()
            .copied()
            .filter(|&b| b != b'(' && b != b')')
            .collect();
        if tok.is_empty() {
            continue;
        }
        match token_id(&tok) {
            Some(id) => out.push(id),
            None => return Err(String::from_utf8_lossy(&tok).into_owned()),
        }
    }
    Ok(out)
}

/// Encodes a ListOps source (with or without parentheses) into ids.
pub fn encode_listops(source: &str) -> Result<Vec<u32>> {
    encode_bytes(source.as_bytes()).map_err(|token| {
        DataError::UnknownToken {
            path: PathBuf::from("<input>"),
            at: Location::File,
            token: clip(&token),
        }
        .into()
    })
}

/// One parsed line of a ListOps TSV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListOpsRow {
    /// The `Source<TAB>Target` header.
    Header,
    /// An empty line.
    Blank,
    /// An example: ids (not truncated) and label.
    Example(Vec<u32>, u32),
}

/// Parses one line (without its newline) of a ListOps TSV; `path` and `line` name it in errors.
pub fn parse_listops_line(line_bytes: &[u8], path: &Path, line: usize) -> Result<ListOpsRow> {
    let at = Location::Line(line);
    if line_bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(ListOpsRow::Blank);
    }
    let fields: Vec<&[u8]> = line_bytes.split(|&b| b == b'\t').collect();
    if fields.len() != 2 {
        return Err(DataError::ColumnCount {
            path: path.into(),
            at,
            expected: 2,
            found: fields.len(),
        }
        .into());
    }
    if fields[0].trim_ascii() == b"Source" && fields[1].trim_ascii() == b"Target" {
        return Ok(ListOpsRow::Header);
    }
    let label_text = fields[1].trim_ascii();
    let label = std::str::from_utf8(label_text)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&l| l < 10);
    let Some(label) = label else {
        return Err(DataError::LabelOutOfRange {
            path: path.into(),
            at,
            label: clip(&String::from_utf8_lossy(label_text)),
            num_classes: NUM_CLASSES,
        }
        .into());
    };
    let ids = encode_bytes(fields[0]).map_err(|token| DataError::UnknownToken {
        path: path.into(),
        at,
        token: clip(&token),
    })?;
    if ids.is_empty() {
        return Err(DataError::Malformed {
            path: path.into(),
            at,
            reason: "empty source".into(),
        }
        .into());
    }
    Ok(ListOpsRow::Example(ids, label))
}

/// ListOps examples in memory, encoded (ids stored as bytes).
pub struct ListOpsDataset {
    ids: Vec<Vec<u8>>,
    labels: Vec<u8>,
    info: DatasetInfo,
}

impl ListOpsDataset {
    fn from_ids(examples: Vec<(Vec<u8>, u32)>, max_len: usize, name: String) -> Self {
        let mut ids = Vec::with_capacity(examples.len());
        let mut labels = Vec::with_capacity(examples.len());
        for (mut e, l) in examples {
            e.truncate(max_len);
            e.shrink_to_fit();
            ids.push(e);
            labels.push(l as u8);
        }
        ListOpsDataset {
            ids,
            labels,
            info: DatasetInfo::new(name, NUM_CLASSES, max_len),
        }
    }

    /// `n` distinct generated trees, truncated to `max_len` tokens.
    pub fn try_generated(cfg: &ListOpsConfig, n: usize, seed: u64, max_len: usize) -> Result<Self> {
        Ok(Self::from_ids(
            generate_ids(cfg, n, seed)?,
            max_len,
            "listops (generated)".into(),
        ))
    }

    /// `n` distinct generated trees, truncated to `max_len` tokens (the same trees, in the same
    /// order, as [`generate_listops`] with the same seed).
    ///
    /// # Panics
    /// When `cfg` is invalid or cannot yield `n` distinct trees ([`Self::try_generated`] returns
    /// the error instead).
    pub fn generated(cfg: &ListOpsConfig, n: usize, seed: u64, max_len: usize) -> Self {
        Self::try_generated(cfg, n, seed, max_len)
            .unwrap_or_else(|e| panic!("ListOpsDataset::generated: {e}"))
    }

    /// `train + val + test` distinct trees split in that order (no tree is in two splits).
    pub fn try_generate_splits(
        cfg: &ListOpsConfig,
        train: usize,
        val: usize,
        test: usize,
        seed: u64,
        max_len: usize,
    ) -> Result<Splits> {
        let all = Arc::new(Self::try_generated(cfg, train + val + test, seed, max_len)?);
        // consecutive parts of exactly train, val and test examples
        Ok(split_contiguous(all, (train, val, test)))
    }

    /// `train + val + test` distinct trees split in that order (no tree is in two splits); the
    /// same trees as [`write_listops_dir`] writes with the same seed.
    ///
    /// # Panics
    /// As [`Self::generated`].
    pub fn generate_splits(
        cfg: &ListOpsConfig,
        train: usize,
        val: usize,
        test: usize,
        seed: u64,
        max_len: usize,
    ) -> Splits {
        Self::try_generate_splits(cfg, train, val, test, seed, max_len)
            .unwrap_or_else(|e| panic!("ListOpsDataset::generate_splits: {e}"))
    }

    /// Reads a ListOps TSV (`Source<TAB>Target`, header optional, `\n` or `\r\n`), truncating
    /// sources to `max_len` tokens. Blank lines are skipped and counted.
    pub fn from_tsv(path: &Path, max_len: usize) -> Result<Self> {
        let mut examples = Vec::new();
        let mut skipped = 0usize;
        for_each_line(path, |line, bytes| {
            match parse_listops_line(bytes, path, line)? {
                ListOpsRow::Header if line == 1 => {}
                ListOpsRow::Header => {
                    return Err(DataError::Malformed {
                        path: path.into(),
                        at: Location::Line(line),
                        reason: "header line inside the data".into(),
                    }
                    .into())
                }
                ListOpsRow::Blank => skipped += 1,
                ListOpsRow::Example(ids, label) => {
                    examples.push((
                        ids.into_iter().take(max_len).map(|t| t as u8).collect(),
                        label,
                    ));
                }
            }
            Ok(())
        })?;
        if examples.is_empty() {
            return Err(DataError::Empty {
                path: path.into(),
                reason: "no ListOps example".into(),
            }
            .into());
        }
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut ds = Self::from_ids(examples, max_len, format!("listops: {file}"));
        ds.info.skipped = skipped;
        Ok(ds)
    }

    /// Ids of example `index` as bytes.
    pub fn ids(&self, index: usize) -> Option<&[u8]> {
        self.ids.get(index).map(|v| v.as_slice())
    }
}

impl Dataset for ListOpsDataset {
    fn len(&self) -> usize {
        self.ids.len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        let ids = self
            .ids
            .get(index)
            .ok_or_else(|| index_error(index, self.ids.len()))?;
        Ok(Example {
            doc: Sequence::Tokens(ids.iter().map(|&t| t as u32).collect()),
            doc2: None,
            label: self.labels[index] as u32,
        })
    }
    fn info(&self) -> &DatasetInfo {
        &self.info
    }
    fn label(&self, index: usize) -> Result<u32> {
        self.labels
            .get(index)
            .map(|&l| l as u32)
            .ok_or_else(|| index_error(index, self.ids.len()))
    }
    fn length(&self, index: usize) -> Result<usize> {
        self.ids
            .get(index)
            .map(|v| v.len())
            .ok_or_else(|| index_error(index, self.ids.len()))
    }
}

/// Reads `basic_train.tsv`, `basic_val.tsv` and `basic_test.tsv` of `dir` (e.g. the LRA
/// release's `listops-1000`).
pub fn read_listops_dir(dir: &Path, max_len: usize) -> Result<Splits> {
    let read = |split: &str| -> Result<Arc<dyn Dataset>> {
        Ok(Arc::new(ListOpsDataset::from_tsv(
            &dir.join(format!("basic_{split}.tsv")),
            max_len,
        )?))
    };
    Ok(Splits {
        train: read("train")?,
        val: read("val")?,
        test: read("test")?,
    })
}

/// Writes rows in the official layout: header `Source<TAB>Target`, one row per line.
pub fn write_listops_tsv(path: &Path, rows: &[(String, u32)]) -> Result<()> {
    let mut s = String::with_capacity(rows.iter().map(|r| r.0.len() + 4).sum::<usize>() + 16);
    s.push_str("Source\tTarget\n");
    for (src, label) in rows {
        let _ = writeln!(s, "{src}\t{label}");
    }
    write_file(path, s.as_bytes())
}

/// Generates `train + val + test` distinct trees with `seed` and writes them to
/// `dir/basic_{train,val,test}.tsv` (the same trees as [`ListOpsDataset::generate_splits`]).
pub fn write_listops_dir(
    dir: &Path,
    cfg: &ListOpsConfig,
    train: usize,
    val: usize,
    test: usize,
    seed: u64,
) -> Result<()> {
    let ids = generate_ids(cfg, train + val + test, seed)?;
    let rows: Vec<(String, u32)> = ids
        .into_iter()
        .map(|(ids, label)| {
            let ids: Vec<u32> = ids.into_iter().map(u32::from).collect();
            (listops_source(&ids).unwrap_or_default(), label)
        })
        .collect();
    write_listops_tsv(&dir.join("basic_train.tsv"), &rows[..train])?;
    write_listops_tsv(&dir.join("basic_val.tsv"), &rows[train..train + val])?;
    write_listops_tsv(&dir.join("basic_test.tsv"), &rows[train + val..])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_lra_form() {
        let ids = encode_listops("[MAX 2 9 ]").unwrap();
        assert_eq!(listops_source(&ids).unwrap(), "( ( ( [MAX 2 ) 9 ) ] )");
        assert_eq!(evaluate_listops(&ids), Some(9));
        let nested = encode_listops("[SM 3 [MIN 4 7 ] 8 ]").unwrap();
        let src = listops_source(&nested).unwrap();
        assert_eq!(src, "( ( ( ( [SM 3 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 8 ) ] )");
        assert_eq!(encode_listops(&src).unwrap(), nested);
        assert_eq!(evaluate_listops(&nested), Some(5));
        assert_eq!(listops_source(&[5]).unwrap(), "4");
        assert_eq!(listops_source(&[12, 3]), None);
        assert_eq!(listops_source(&[12, 15]), None);
        assert_eq!(evaluate_listops(&[13, 2, 5, 7, 10, 15]), Some(5)); // median of 1 4 6 9 = 5
    }
}
