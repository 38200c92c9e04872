//! The library's error type and the process exit codes it maps to.
//!
//! Exit codes are part of the command-line API (documented in the README):
//! `0` everything ran, `1` a run failed while executing, `2` bad input (manifest, registry,
//! dataset or command-line arguments). Every error a user can cause lands in one of the
//! "bad input" variants with the offending file, key or image path in its message.

use std::path::PathBuf;

use crate::config::ConfigErrors;

/// Process exit code: success.
pub const EXIT_OK: i32 = 0;
/// Process exit code: a run started but failed (I/O, numerical failure, a stage error).
pub const EXIT_RUN_FAILED: i32 = 1;
/// Process exit code: bad input (manifest, dataset registry, dataset files, arguments).
pub const EXIT_BAD_INPUT: i32 = 2;

/// Everything that can go wrong in `wsss`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more problems in a manifest (all of them, not only the first).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A problem in `datasets.toml` or in a dataset's files.
    #[error("{}", format_list("dataset", .0))]
    Dataset(Vec<String>),
    /// A weights file that does not fit the model (missing keys, wrong shapes).
    #[error("weights {}: {}", path.display(), problems.join("; "))]
    Weights {
        /// The safetensors file.
        path: PathBuf,
        /// Every mismatch found, each naming its key.
        problems: Vec<String>,
    },
    /// A bad command-line value that is not part of a manifest.
    #[error("{0}")]
    Usage(String),
    /// File-system failure, with the path involved.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder that could not be read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A stage failed while running.
    #[error("stage `{stage}` failed: {message}")]
    Stage {
        /// Stage name.
        stage: String,
        /// What went wrong.
        message: String,
    },
    /// Tensor library failure.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A figure could not be drawn.
    #[error("figure: {0}")]
    Figure(String),
    /// Table library failure.
    #[error("table error: {0}")]
    Polars(#[from] polars::error::PolarsError),
    /// SIGINT or SIGTERM arrived; the run stopped at a safe point and resumes when rerun.
    #[error(
        "interrupted by {}: stopped at a safe point (checkpoints committed); run the same command again to resume",
        signal_name(*signal)
    )]
    Interrupted {
        /// The signal's number.
        signal: i32,
    },
}

/// The conventional name of a signal number.
fn signal_name(signal: i32) -> &'static str {
    match signal {
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

fn format_list(what: &str, items: &[String]) -> String {
    match items {
        [one] => one.clone(),
        _ => {
            let mut s = format!("{} {what} problems:", items.len());
            for it in items {
                s.push_str("\n  - ");
                s.push_str(it);
            }
            s
        }
    }
}

impl Error {
    /// The documented process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Dataset(_) | Error::Usage(_) | Error::Weights { .. } => {
                EXIT_BAD_INPUT
            }
            Error::Io { .. }
            | Error::Stage { .. }
            | Error::Candle(_)
            | Error::Polars(_)
            | Error::Figure(_) => EXIT_RUN_FAILED,
            Error::Interrupted { signal } => 128 + signal,
        }
    }

    /// Shorthand for an I/O error at `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for a single dataset problem.
    pub fn dataset(msg: impl Into<String>) -> Self {
        Error::Dataset(vec![msg.into()])
    }

    /// Shorthand for a stage failure.
    pub fn stage(stage: &str, message: impl std::fmt::Display) -> Self {
        Error::Stage {
            stage: stage.to_string(),
            message: message.to_string(),
        }
    }
}

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
