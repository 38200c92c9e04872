//! Experiment manifests: schema, layering, sweeps and validation.
//!
//! Data flows one way: TOML sources (defaults → `extends` chain → manifest → `WSSS_*`
//! environment → `--set`) are checked against the [`schema`], merged with figment, expanded
//! by the `[sweep]` table into variants, and each variant is checked once more as a whole.
//! What leaves this module is a [`Manifest`] of resolved [`ExperimentConfig`]s; nothing
//! downstream sees raw TOML.

mod load;
pub mod schema;
mod sweep;
mod types;

use std::fmt;

pub use load::{load, LoadOptions, Manifest, Variant};
pub use sweep::{format_value, Sweep};
pub use types::*;

/// One problem found in a manifest: where (file or other source), which key, what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file (or `environment variable WSSS_…`, or `--set …`) the problem comes from.
    pub source: String,
    /// Dotted key path, when the problem is about one key.
    pub key: Option<String>,
    /// Line and column (1-based) for syntax errors.
    pub line_col: Option<(usize, usize)>,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ConfigError {
    /// A problem with a key.
    pub fn key(
        source: impl Into<String>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            source: source.into(),
            key: Some(key.into()),
            line_col: None,
            message: message.into(),
        }
    }

    /// A problem with a whole source.
    pub fn source(source: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            key: None,
            line_col: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some((l, c)) = self.line_col {
            write!(f, ":{l}:{c}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": key `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a manifest (validation does not stop at the first).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} manifest error{}:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}
