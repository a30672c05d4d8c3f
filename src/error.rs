//! The library's error type. Every variant names the file (or settings field) it concerns, so the
//! CLI can print one clear line and exit non-zero.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in refmaster's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or decoded, or its audio is unusable (silence, NaN, too short...).
    #[error("{}: {reason}", path.display())]
    Input { path: PathBuf, reason: String },
    /// An output could not be written; nothing was left behind.
    #[error("{}: cannot write: {reason}", path.display())]
    Output { path: PathBuf, reason: String },
    /// A settings file (or in-memory settings) has a bad field.
    #[error("{source_name}: field `{field}`: {reason}")]
    Settings { source_name: String, field: String, reason: String },
    /// An option (of the command line, or its JSON form) is out of range or not a number; named
    /// as the command line spells it.
    #[error("--{option}: {reason}")]
    Option { option: String, reason: String },
    /// A request the engine cannot honour (e.g. more than two channels to master).
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    /// Shorthand for [`Error::Input`].
    pub fn input(path: &Path, reason: impl Into<String>) -> Self {
        Error::Input { path: path.to_path_buf(), reason: reason.into() }
    }
    /// Shorthand for [`Error::Output`].
    pub fn output(path: &Path, reason: impl Into<String>) -> Self {
        Error::Output { path: path.to_path_buf(), reason: reason.into() }
    }
    /// Shorthand for [`Error::Option`]; `option` without its leading dashes.
    pub fn option(option: &str, reason: impl Into<String>) -> Self {
        Error::Option { option: option.to_string(), reason: reason.into() }
    }
    /// Shorthand for [`Error::Settings`].
    pub fn settings(source_name: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Settings { source_name: source_name.to_string(), field: field.into(), reason: reason.into() }
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;
