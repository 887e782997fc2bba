//! The official Pathfinder / Path-X layout: `imgs/<batch>/sample_<i>.png` (8-bit grey PNG)
//! and `metadata/<batch>.npy` (despite the name, a text file with one space-separated row per
//! image, the label in field 3), written by [`write_pathfinder_dir`] and read lazily by
//! [`PngDataset`] / [`read_pathfinder_dir`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::super::io::{for_each_line, write_file};
use super::super::{
    ensure_nonempty, index_error, split_order, Dataset, DatasetInfo, Example, Sequence, Splits,
};
use super::{pathfinder_samples, PathfinderConfig};
use crate::error::{DataError, Location};
use crate::error::{Error, Result};

/// Encodes grey pixels as an 8-bit greyscale PNG.
pub fn encode_grey_png(pixels: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| Error::config("png", e.to_string()))?;
        w.write_image_data(pixels)
            .map_err(|e| Error::config("png", e.to_string()))?;
    }
    Ok(out)
}

/// Decodes a PNG of any colour type into grey bytes: (width, height, pixels).
pub fn decode_grey_png(bytes: &[u8]) -> std::result::Result<(usize, usize, Vec<u8>), String> {
    let mut dec = png::Decoder::new_with_limits(bytes, png::Limits { bytes: 256 << 20 });
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().map_err(|e| e.to_string())?;
    let (w0, h0) = (reader.info().width as u64, reader.info().height as u64);
    if w0 * h0 > 1 << 26 {
        return Err(format!("{w0}x{h0} is too large for a data set image"));
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("indexed colours were not expanded".into()),
    };
    let mut out = Vec::with_capacity(w * h);
    for row in 0..h {
        let line = buf
            .get(row * info.line_size..row * info.line_size + w * channels)
            .ok_or("short image data")?;
        for px in line.chunks_exact(channels) {
            out.push(match channels {
                1 | 2 => px[0],
                _ => (0.2989 * px[0] as f64 + 0.5870 * px[1] as f64 + 0.1140 * px[2] as f64)
                    .round()
                    .min(255.0) as u8,
            });
        }
    }
    Ok((w, h, out))
}

/// Writes samples `range` of stream `seed` as batch `batch` of the official layout under `dir`
/// (`dir/imgs/<batch>/sample_<j>.png`, `dir/metadata/<batch>.npy`), `j` counting from 0 in the
/// batch. Returns the number of label-1 images.
pub fn write_pathfinder_batch(
    dir: &Path,
    cfg: &PathfinderConfig,
    seed: u64,
    batch: usize,
    range: std::ops::Range<u64>,
) -> Result<usize> {
    let samples = pathfinder_samples(cfg, seed, range)?;
    let img_dir = dir.join("imgs").join(batch.to_string());
    std::fs::create_dir_all(&img_dir).map_err(|e| Error::io(&img_dir, e))?;
    let mut meta = String::new();
    let mut positives = 0;
    for (j, s) in samples.iter().enumerate() {
        let file = format!("sample_{j}.png");
        write_file(
            &img_dir.join(&file),
            &encode_grey_png(&s.pixels, cfg.size, cfg.size)?,
        )?;
        positives += s.label as usize;
        meta.push_str(&format!(
            "imgs/{batch} {file} {j} {} {} {} {} {} {} {} 1\n",
            s.label,
            cfg.continuity,
            cfg.contour_length,
            cfg.distractor_length,
            cfg.paddle_length,
            cfg.paddle_thickness,
            cfg.paddle_margin
        ));
    }
    write_file(
        &dir.join("metadata").join(format!("{batch}.npy")),
        meta.as_bytes(),
    )?;
    Ok(positives)
}

/// Writes samples `0..n` of stream `seed` in the official layout under `dir` (a difficulty
/// folder such as `pathfinder32/curv_contour_length_14`), `batch_size` images per batch.
pub fn write_pathfinder_dir(
    dir: &Path,
    cfg: &PathfinderConfig,
    n: usize,
    seed: u64,
    batch_size: usize,
) -> Result<()> {
    let bs = batch_size.max(1);
    for (b, start) in (0..n).step_by(bs).enumerate() {
        let end = (start + bs).min(n);
        write_pathfinder_batch(dir, cfg, seed, b, start as u64..end as u64)?;
    }
    Ok(())
}

/// A parsed row of a Pathfinder metadata file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataRow {
    /// Folder of the image relative to the difficulty folder, e.g. `imgs/0`.
    pub subdir: String,
    /// File name, e.g. `sample_0.png`.
    pub file: String,
    /// Label (field 3).
    pub label: u32,
}

/// Parses one metadata row (`imgs/0 sample_0.png 0 1 …`): `None` for a blank line.
pub fn parse_metadata_row(
    line_bytes: &[u8],
    path: &Path,
    line: usize,
) -> Result<Option<MetadataRow>> {
    let at = Location::Line(line);
    let fields: Vec<&[u8]> = line_bytes
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .collect();
    if fields.is_empty() {
        return Ok(None);
    }
    if fields.len() < 4 {
        return Err(DataError::ColumnCount {
            path: path.into(),
            at,
            expected: 4,
            found: fields.len(),
        }
        .into());
    }
    let text = |b: &[u8]| -> Result<String> {
        String::from_utf8(b.to_vec()).map_err(|_| {
            DataError::Malformed {
                path: path.into(),
                at,
                reason: "path field is not UTF-8".into(),
            }
            .into()
        })
    };
    let label = std::str::from_utf8(fields[3])
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&l| l < 2);
    let Some(label) = label else {
        return Err(DataError::LabelOutOfRange {
            path: path.into(),
            at,
            label: crate::error::clip(&String::from_utf8_lossy(fields[3])),
            num_classes: 2,
        }
        .into());
    };
    Ok(Some(MetadataRow {
        subdir: text(fields[0])?,
        file: text(fields[1])?,
        label,
    }))
}

/// Images that are known to be empty in the LRA release.
const KNOWN_EMPTY: &[&str] = &["pathfinder32/curv_baseline/imgs/0/sample_172.png"];

/// Pathfinder images listed by metadata files, decoded on [`Dataset::get`] (streaming).
pub struct PngDataset {
    entries: Vec<(PathBuf, u8)>,
    side: usize,
    info: DatasetInfo,
}

impl PngDataset {
    /// Reads the metadata of a difficulty folder (`metadata/*.npy`, in numeric order of the
    /// batch name). Listed images that are missing are an error; empty files and the known
    /// empty image of the release are skipped and counted. The side is taken from the first
    /// image; images of another size give [`DataError::ImageSize`] on `get`.
    pub fn open(dir: &Path) -> Result<Self> {
        let meta_dir = dir.join("metadata");
        let mut files: Vec<PathBuf> = super::super::io::sorted_files(&meta_dir)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "npy"))
            .collect();
        files.sort_by_key(|p| {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            (stem.parse::<u64>().unwrap_or(u64::MAX), stem)
        });
        let name_of = |p: Option<&Path>| {
            p.and_then(|p| p.file_name())
                .map(|s| s.to_string_lossy().into_owned())
        };
        let dir_name = format!(
            "{}/{}",
            name_of(dir.parent()).unwrap_or_default(),
            name_of(Some(dir)).unwrap_or_default()
        );
        let mut entries = Vec::new();
        let mut skipped = 0usize;
        for meta in &files {
            for_each_line(meta, |line, bytes| {
                let Some(row) = parse_metadata_row(bytes, meta, line)? else {
                    skipped += 1;
                    return Ok(());
                };
                let rel = format!("{}/{}", row.subdir, row.file);
                let path = dir.join(&row.subdir).join(&row.file);
                if KNOWN_EMPTY
                    .iter()
                    .any(|k| *k == format!("{dir_name}/{rel}"))
                {
                    skipped += 1;
                    return Ok(());
                }
                match std::fs::metadata(&path) {
                    Ok(m) if m.len() == 0 => skipped += 1,
                    Ok(_) => entries.push((path, row.label as u8)),
                    Err(_) => {
                        return Err(DataError::MissingFile {
                            path,
                            listed_in: meta.clone(),
                            line,
                        }
                        .into());
                    }
                }
                Ok(())
            })?;
        }
        let name = format!("pathfinder: {}", dir.display());
        let mut ds = PngDataset {
            entries,
            side: 0,
            info: DatasetInfo::new(name, 2, 0).with_skipped(skipped),
        };
        ensure_nonempty(&ds, dir, "no image listed in metadata/*.npy")?;
        let first = &ds.entries[0].0;
        let bytes = std::fs::read(first).map_err(|e| Error::io(first, e))?;
        let (w, h, _) = decode_grey_png(&bytes).map_err(|reason| DataError::BadImage {
            path: first.clone(),
            at: Location::File,
            reason,
        })?;
        if w != h {
            return Err(DataError::ImageSize {
                path: first.clone(),
                expected: (w.max(h), w.max(h)),
                found: (w, h),
            }
            .into());
        }
        ds.side = w;
        ds.info.max_len = w * w;
        Ok(ds)
    }

    /// Image side length.
    pub fn side(&self) -> usize {
        self.side
    }
}

impl Dataset for PngDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        let (path, label) = self
            .entries
            .get(index)
            .ok_or_else(|| index_error(index, self.entries.len()))?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (w, h, pixels) = decode_grey_png(&bytes).map_err(|reason| DataError::BadImage {
            path: path.clone(),
            at: Location::Record(index),
            reason,
        })?;
        if (w, h) != (self.side, self.side) {
            return Err(DataError::ImageSize {
                path: path.clone(),
                expected: (self.side, self.side),
                found: (w, h),
            }
            .into());
        }
        Ok(Example {
            doc: Sequence::Pixels(pixels),
            doc2: None,
            label: *label as u32,
        })
    }
    fn info(&self) -> &DatasetInfo {
        &self.info
    }
    fn label(&self, index: usize) -> Result<u32> {
        self.entries
            .get(index)
            .map(|e| e.1 as u32)
            .ok_or_else(|| index_error(index, self.entries.len()))
    }
    fn length(&self, _index: usize) -> Result<usize> {
        Ok(self.side * self.side)
    }
}

/// Reads a Pathfinder difficulty folder (e.g. `…/pathfinder32/curv_contour_length_14`) and
/// splits it by a seeded shuffle (seed 42) into parts proportional to `split`, e.g.
/// `(80, 10, 10)`. Images are decoded on `get` (streaming).
pub fn read_pathfinder_dir(dir: &Path, split: (usize, usize, usize)) -> Result<Splits> {
    let ds: Arc<dyn Dataset> = Arc::new(PngDataset::open(dir)?);
    let order = crate::rng::permutation(ds.len(), 42);
    Ok(split_order(ds, order, split))
}
