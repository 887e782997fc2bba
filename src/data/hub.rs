//! The real LRA Text and Image data from the Hugging Face Hub (feature `hub`).
//!
//! - **Text**: IMDb (`stanfordnlp/imdb`), the Hub's parquet conversion
//!   (`refs/convert/parquet`, files `plain_text/{train,test}/0000.parquet`, columns `text` and
//!   `label`), downloaded through `hf-hub` — the client `candle_datasets::hub` uses — into the
//!   usual Hugging Face cache (`HF_HOME`, by default `~/.cache/huggingface`), then read with
//!   [`read_imdb_parquet`]. The training split is divided 90/10 into train and validation as
//!   [`super::read_imdb_dir`] does.
//! - **Image**: CIFAR-10 through `candle_datasets::vision::cifar::load` (the same cache), turned
//!   into 1,024 grey pixels per image with LRA's weights ([`super::grey`]); the training split
//!   is divided 90/10 (LRA's `train[:90%]` / `train[90%:]`).
//!
//! Offline, or when the Hub refuses, the error says what to do: fetch the files on a machine
//! with network access into the cache, or use `--data-dir` with the files.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use super::text::{MemoryTextDataset, SPLIT_SEED};
use super::{grey, Dataset, Splits, Subset};
use crate::error::{Error, Result};

/// The Hub's dataset of IMDb reviews.
pub const IMDB_DATASET: &str = "stanfordnlp/imdb";
/// The revision holding the Hub's parquet conversion.
pub const PARQUET_REVISION: &str = "refs/convert/parquet";

/// What to do when a download fails.
fn offline_hint(what: &str, e: impl std::fmt::Display) -> Error {
    Error::config(
        "data",
        format!(
            "could not get {what} from the Hugging Face Hub ({e}). Without network access: \
             download it where there is one (e.g. `huggingface-cli download {IMDB_DATASET} \
             --repo-type dataset --revision {PARQUET_REVISION}` for IMDb) and copy the \
             Hugging Face cache (HF_HOME, by default ~/.cache/huggingface) here, or pass \
             --data-dir with the files (aclImdb, or CIFAR-10's binary batches)"
        ),
    )
}

/// `filename` of `dataset` at the parquet revision, from the cache or downloaded into it.
fn cached(dataset: &str, filename: &str) -> Result<std::path::PathBuf> {
    let api = hf_hub::HFClientSync::new().map_err(|e| offline_hint(dataset, e))?;
    let (owner, name) = dataset.split_once('/').unwrap_or(("", dataset));
    let repo = api.dataset(owner, name);
    let download = repo
        .download_file()
        .filename(filename)
        .revision(PARQUET_REVISION);
    match download.clone().local_files_only(true).send() {
        Ok(p) => Ok(p),
        Err(_) => download
            .send()
            .map_err(|e| offline_hint(&format!("{dataset}/{filename}"), e)),
    }
}

/// Reviews and labels of one IMDb parquet file (columns `text`: string, `label`: integer,
/// 0 = negative, 1 = positive). A row without both, or with another label, is an error
/// naming the file and the row.
pub fn read_imdb_parquet(path: &Path) -> Result<Vec<(Vec<u8>, u32)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Error::format(path, format!("not a readable parquet file: {e}")))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| Error::format(path, e.to_string()))?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| Error::format(path, format!("row {i}: {e}")))?;
        let (mut text, mut label) = (None, None);
        for (name, field) in row.get_column_iter() {
            match (name.as_str(), field) {
                ("text", Field::Str(s)) => text = Some(s.as_bytes().to_vec()),
                ("label", Field::Long(l)) => label = Some(*l),
                ("label", Field::Int(l)) => label = Some(*l as i64),
                _ => {}
            }
        }
        match (text, label) {
            (Some(t), Some(l @ (0 | 1))) => out.push((t, l as u32)),
            (t, l) => {
                return Err(Error::format(
                    path,
                    format!(
                    "row {i}: expected a `text` string and a `label` of 0 or 1, found {} and {:?}",
                    if t.is_some() { "a text" } else { "no text" },
                    l
                ),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(Error::format(path, "no rows"));
    }
    Ok(out)
}

/// IMDb splits from its train and test parquet files: train divided 90/10 (seeded) into
/// train and validation, test as is. Documents are kept whole (lengths are checked by
/// [`super::fit_lengths`]).
pub fn imdb_splits_from(train: &Path, test: &Path) -> Result<Splits> {
    let classes = vec!["neg".to_string(), "pos".to_string()];
    let all: Arc<dyn Dataset> = Arc::new(MemoryTextDataset::new(
        read_imdb_parquet(train)?,
        classes.clone(),
        usize::MAX,
        "text: imdb (hub)",
        0,
    ));
    let test = MemoryTextDataset::new(
        read_imdb_parquet(test)?,
        classes,
        usize::MAX,
        "text: imdb (hub) [test]",
        0,
    );
    let order = crate::rng::permutation(all.len(), SPLIT_SEED);
    let n_val = all.len().div_ceil(10);
    let (tr, va) = order.split_at(all.len() - n_val);
    Ok(Splits {
        train: Arc::new(Subset::new(
            all.clone(),
            tr.to_vec(),
            "text: imdb (hub) [train]",
        )),
        val: Arc::new(Subset::new(all, va.to_vec(), "text: imdb (hub) [val]")),
        test: Arc::new(test),
    })
}

/// IMDb from the Hugging Face Hub (cached).
pub fn imdb_splits() -> Result<Splits> {
    let train = cached(IMDB_DATASET, "plain_text/train/0000.parquet")?;
    let test = cached(IMDB_DATASET, "plain_text/test/0000.parquet")?;
    imdb_splits_from(&train, &test)
}

/// Grey 32×32 pixels in raster order from images as `candle_datasets` returns them:
/// `[n, 3, 32, 32]` f32 in [0, 1], indexed `[image][channel][x][y]` (it reads image-rs's
/// row-major buffer as (width, height)); the transpose back to rows of pixels happens here.
pub fn grey_pixels(images: &Tensor) -> Result<Vec<u8>> {
    let (n, c, w, h) = images.dims4()?;
    if (c, w, h) != (3, 32, 32) {
        return Err(Error::shape("images", "[n, 3, 32, 32]", images.dims()));
    }
    let px = (images.to_dtype(DType::F32)? * 255.0)?
        .round()?
        .clamp(0.0, 255.0)?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let mut out = Vec::with_capacity(n * 1024);
    for i in 0..n {
        let img = &px[i * 3072..(i + 1) * 3072];
        for y in 0..32 {
            for x in 0..32 {
                let at = |ch: usize| img[ch * 1024 + x * 32 + y];
                out.push(grey(at(0), at(1), at(2)));
            }
        }
    }
    Ok(out)
}

/// CIFAR-10 splits from a `candle_datasets` vision data set: grey pixels, train divided 90/10.
pub fn cifar10_splits_from(ds: &candle_datasets::vision::Dataset) -> Result<Splits> {
    let labels = |t: &Tensor| -> Result<Vec<u8>> { Ok(t.to_dtype(DType::U8)?.to_vec1::<u8>()?) };
    let (train_px, train_lb) = (grey_pixels(&ds.train_images)?, labels(&ds.train_labels)?);
    let (test_px, test_lb) = (grey_pixels(&ds.test_images)?, labels(&ds.test_labels)?);
    super::image::cifar10_splits(
        train_px,
        train_lb,
        test_px,
        test_lb,
        "image: cifar-10 (hub)",
    )
}

/// CIFAR-10 from the Hugging Face Hub (cached) through `candle_datasets`.
pub fn cifar10_splits() -> Result<Splits> {
    let ds = candle_datasets::vision::cifar::load()
        .map_err(|e| offline_hint("CIFAR-10 (uoft-cs/cifar10)", e))?;
    cifar10_splits_from(&ds)
}
