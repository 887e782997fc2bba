//! Typed errors of the data readers: every one names the file and, where it has one, the line
//! (text formats, 1-based) or the record (binary formats and image lists, 0-based).

use std::fmt;
use std::path::PathBuf;

/// Where in a file a problem was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Line of a text file, counted from 1.
    Line(usize),
    /// Record of a binary file (or entry of a list), counted from 0.
    Record(usize),
    /// The file as a whole.
    File,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(l) => write!(f, ", line {l}"),
            Location::Record(r) => write!(f, ", record {r}"),
            Location::File => Ok(()),
        }
    }
}

/// A malformed data file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A delimited row with the wrong number of fields.
    #[error("{path}{at}: expected {expected} tab-separated columns, found {found}")]
    ColumnCount {
        /// File at fault.
        path: PathBuf,
        /// Line.
        at: Location,
        /// Columns the format has.
        expected: usize,
        /// Columns found.
        found: usize,
    },
    /// A label that is not a number in `0..num_classes`.
    #[error("{path}{at}: label `{label}` is not one of 0..{num_classes}")]
    LabelOutOfRange {
        /// File at fault.
        path: PathBuf,
        /// Line or record.
        at: Location,
        /// The label as written (truncated to 40 characters).
        label: String,
        /// Number of classes of the task.
        num_classes: usize,
    },
    /// A token outside the task vocabulary.
    #[error("{path}{at}: unknown token `{token}`")]
    UnknownToken {
        /// File at fault (`<input>` for a string).
        path: PathBuf,
        /// Line.
        at: Location,
        /// The token (truncated to 40 characters).
        token: String,
    },
    /// An image file that cannot be decoded.
    #[error("{path}{at}: unreadable image: {reason}")]
    BadImage {
        /// The image.
        path: PathBuf,
        /// Where it is listed, if known.
        at: Location,
        /// Decoder message.
        reason: String,
    },
    /// An image of the wrong size.
    #[error("{path}: image is {}x{} (width x height), expected {}x{}", found.0, found.1, expected.0, expected.1)]
    ImageSize {
        /// The image.
        path: PathBuf,
        /// Expected (width, height).
        expected: (usize, usize),
        /// Found (width, height).
        found: (usize, usize),
    },
    /// A binary file whose magic number is not the format's.
    #[error("{path}: wrong magic number {found:#010x}, expected {expected:#010x}")]
    BadMagic {
        /// File at fault.
        path: PathBuf,
        /// The format's magic number.
        expected: u32,
        /// What the file starts with.
        found: u32,
    },
    /// A file that ends inside a record or header.
    #[error("{path}{at}: truncated: {reason}")]
    Truncated {
        /// File at fault.
        path: PathBuf,
        /// The first incomplete record.
        at: Location,
        /// What was expected.
        reason: String,
    },
    /// A data set with no usable example.
    #[error("{path}: empty data set: {reason}")]
    Empty {
        /// File or folder at fault.
        path: PathBuf,
        /// Why nothing could be used.
        reason: String,
    },
    /// A file listed by an index (e.g. Pathfinder metadata) that does not exist.
    #[error("{path}: listed in {} line {line} but missing", listed_in.display())]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// The list naming it.
        listed_in: PathBuf,
        /// Line of the list.
        line: usize,
    },
    /// Any other malformed content.
    #[error("{path}{at}: {reason}")]
    Malformed {
        /// File at fault.
        path: PathBuf,
        /// Line or record.
        at: Location,
        /// What is wrong.
        reason: String,
    },
}

impl DataError {
    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            DataError::ColumnCount { path, .. }
            | DataError::LabelOutOfRange { path, .. }
            | DataError::UnknownToken { path, .. }
            | DataError::BadImage { path, .. }
            | DataError::ImageSize { path, .. }
            | DataError::BadMagic { path, .. }
            | DataError::Truncated { path, .. }
            | DataError::Empty { path, .. }
            | DataError::MissingFile { path, .. }
            | DataError::Malformed { path, .. } => path,
        }
    }
}

/// Shortens user content quoted in an error message.
pub(crate) fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    out
}
