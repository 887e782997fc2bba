//! Small file helpers shared by the readers.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Opens `path` for buffered reading.
pub(crate) fn open(path: &Path) -> Result<BufReader<File>> {
    File::open(path)
        .map(|f| BufReader::with_capacity(1 << 16, f))
        .map_err(|e| Error::io(path, e))
}

/// Reads a whole file, transparently un-gzipping it when it starts with the gzip magic.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::io(path, e))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Calls `f(line_number, line)` for every line (1-based, without `\n` or `\r\n`).
pub(crate) fn for_each_line(
    path: &Path,
    mut f: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut reader = open(path)?;
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        f(line, trim_newline(&buf))?;
    }
}

/// Like [`for_each_line`], also passing each line's byte offset in the file.
pub(crate) fn for_each_line_offset(
    path: &Path,
    mut f: impl FnMut(usize, u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut reader = open(path)?;
    let mut buf = Vec::new();
    let mut line = 0usize;
    let mut offset = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        f(line, offset, trim_newline(&buf))?;
        offset += n as u64;
    }
}

/// Reads the line that starts at byte `offset`.
pub(crate) fn read_line_at(path: &Path, offset: u64) -> Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 14, f);
    let mut buf = Vec::new();
    reader
        .read_until(b'\n', &mut buf)
        .map_err(|e| Error::io(path, e))?;
    let n = trim_newline(&buf).len();
    buf.truncate(n);
    Ok(buf)
}

/// Strips one trailing `\n` and then one `\r`.
pub(crate) fn trim_newline(mut b: &[u8]) -> &[u8] {
    if let [rest @ .., b'\n'] = b {
        b = rest;
    }
    if let [rest @ .., b'\r'] = b {
        b = rest;
    }
    b
}

/// Regular files of a folder (no dot files), sorted by name.
pub(crate) fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    sorted_entries(dir, Path::is_file)
}

/// Sub-folders of a folder (no dot folders), sorted by name.
pub(crate) fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    sorted_entries(dir, Path::is_dir)
}

/// Entries of a folder that pass `keep` (no dot entries), sorted by name.
fn sorted_entries(dir: &Path, keep: fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if keep(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Reads at most `limit` bytes of a file.
pub(crate) fn read_prefix(path: &Path, limit: usize) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    f.take(limit as u64)
        .read_to_end(&mut out)
        .map_err(|e| Error::io(path, e))?;
    Ok(out)
}

/// Writes a file, creating its parent folders.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}
