//! Typed errors of the crate.

#[cfg(feature = "lra")]
mod data;
#[cfg(feature = "lra")]
pub(crate) use data::clip;
#[cfg(feature = "lra")]
pub use data::{DataError, Location};

use std::path::PathBuf;

/// Every fallible function of the crate returns this error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration field holds a value the models cannot run with.
    #[error("invalid config: `{field}` {reason}")]
    Config {
        /// Dotted path of the offending field, e.g. `block.filter.kernel`.
        field: String,
        /// Why the value is rejected.
        reason: String,
    },
    /// A preset, task or model name that the crate does not know.
    #[error("unknown name `{name}`; known names: {known}")]
    UnknownPreset {
        /// The name that was asked for.
        name: String,
        /// Comma separated list of valid names.
        known: String,
    },
    /// A tensor handed to a public function has the wrong shape or dtype.
    #[error("bad input `{input}`: expected {expected}, got {got}")]
    Shape {
        /// Which argument is at fault.
        input: String,
        /// What the function expected, in words.
        expected: String,
        /// What it received.
        got: String,
    },
    /// A sequence is too short for a filter that shortens it (pooling or stride > 1).
    #[error(
        "sequence of length {len} is shorter than the filter window {kernel} (stride {stride})"
    )]
    SequenceTooShort {
        /// Length of the sequence given to the filter.
        len: usize,
        /// Window (kernel) size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File at fault.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint or config file is malformed.
    #[error("{path}: {reason}")]
    Format {
        /// File at fault.
        path: PathBuf,
        /// What is wrong with it (with line or record where known).
        reason: String,
    },
    /// Training met a non-finite loss or gradient.
    #[error("step {step}: non-finite {what} ({value}); lower the learning rate, enable clipping, or pass skip-non-finite to skip such steps")]
    NonFinite {
        /// The optimisation step (1-based).
        step: usize,
        /// `loss` or `gradient norm`.
        what: String,
        /// The value seen.
        value: f64,
    },
    /// Examples longer than the run's length limit, found before training: they would be cut.
    #[error("{over} of {total} {split} examples of {data} are longer than the length limit {limit} (the longest has {longest} positions): they would be cut. Raise the limit (`--max-len`, `fit_lengths`'s `limit`) or ask for truncation explicitly (`--truncate`)")]
    TooLong {
        /// The data set (its `Dataset::name`).
        data: String,
        /// `train`, `val` or `test`.
        split: String,
        /// Examples longer than the limit.
        over: usize,
        /// Examples in the split.
        total: usize,
        /// Length of the longest example (the longer document of a pair).
        longest: usize,
        /// The limit.
        limit: usize,
    },
    /// `--resume` was given an option that differs from the one the run was started with.
    #[error("--{option} {given} differs from the run being resumed ({recorded}, recorded in {}); leave it out to continue that run, or start a new run in another folder", file.display())]
    ResumeMismatch {
        /// The option, as the command line spells it (without `--`).
        option: String,
        /// The value given now.
        given: String,
        /// The value the run was started with.
        recorded: String,
        /// The file that records it.
        file: PathBuf,
    },
    /// An error from Candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A malformed data file (see `data::DataError`: file and line or record).
    #[cfg(feature = "lra")]
    #[error(transparent)]
    Data(#[from] DataError),
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// [`Error::Config`]: `field` (as the config spells it) is invalid for `reason`.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
    /// [`Error::Shape`]: `what` should be `expected` but is `got` (e.g. a tensor's dims).
    pub fn shape(
        input: impl Into<String>,
        expected: impl Into<String>,
        got: impl std::fmt::Debug,
    ) -> Self {
        Error::Shape {
            input: input.into(),
            expected: expected.into(),
            got: format!("{got:?}"),
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Candle's error type carries the crate's, so `?` works in functions that return
/// `candle_core::Result` (and in `Module` implementations). A Candle error inside ours comes
/// back as itself; any other travels as `candle_core::Error::WrappedContext`, whose
/// `wrapped` is the typed error (see [`Error::find_in`]) and whose context its message.
impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(c) => c,
            other => candle_core::Error::WrappedContext {
                context: other.to_string(),
                wrapped: Box::new(other),
            },
        }
    }
}

impl Error {
    /// The crate's typed error inside a Candle error made from it (looking through Candle's
    /// context, path and backtrace layers), if there is one.
    pub fn find_in(e: &candle_core::Error) -> Option<&Error> {
        match e {
            candle_core::Error::WrappedContext { wrapped, .. } => wrapped.downcast_ref::<Error>(),
            candle_core::Error::Context { inner, .. }
            | candle_core::Error::WithPath { inner, .. }
            | candle_core::Error::WithBacktrace { inner, .. } => Self::find_in(inner),
            _ => None,
        }
    }
}
