//! The stage contract: what a stage depends on (its cache key) and what it writes.
//!
//! A stage's key hashes exactly its name, its implementation version, the slice of the
//! resolved config it reads, and the keys of the stages it reads from. Two variants that agree
//! on all of that share one cached output: a sweep over `cam.threshold` trains the classifier
//! once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Variant;
use crate::data::DatasetIndex;
use crate::error::Result;
use crate::util::hash::Hasher;

/// What a stage sees when it computes its key or runs.
pub struct StageInput<'a> {
    /// The variant being run.
    pub variant: &'a Variant,
    /// The indexed dataset (its fingerprint is part of the data stage's key).
    pub dataset: &'a DatasetIndex,
    /// The file to blame for bad input found while running.
    pub source_of: &'a dyn Fn(&str) -> String,
    /// Output folders of the upstream stages, by stage name.
    pub upstream: &'a BTreeMap<&'static str, PathBuf>,
    /// Compute device of this variant.
    pub device: &'a candle_core::Device,
    /// Folder of the manifest (relative paths in it resolve here).
    pub manifest_dir: &'a Path,
}

impl StageInput<'_> {
    /// The output folder of an upstream stage.
    pub fn upstream_dir(&self, stage: &str) -> Result<&Path> {
        self.upstream
            .get(stage)
            .map(PathBuf::as_path)
            .ok_or_else(|| crate::error::Error::stage(stage, "upstream output missing"))
    }
}

/// One step of the pipeline.
pub trait Stage: Sync {
    /// Name, used in cache paths and messages.
    fn name(&self) -> &'static str;
    /// Implementation version; bump it when the stage's outputs change for the same inputs.
    fn version(&self) -> u32;
    /// Names of the stages whose outputs this one reads.
    fn upstream(&self) -> &'static [&'static str];
    /// The upstream stages whose keys enter this stage's key (default: all of
    /// [`Stage::upstream`]); a stage that ignores an upstream output for some configs (the
    /// fully supervised segmenter ignores pseudo labels) leaves it out so that sweeps over
    /// what it ignores share one computation.
    fn key_upstream(&self, _input: &StageInput) -> Vec<&'static str> {
        self.upstream().to_vec()
    }
    /// The part of the configuration (and data identity) this stage's output depends on.
    fn config_slice(&self, input: &StageInput) -> serde_json::Value;
    /// Compute the outputs into `out` (an empty folder that becomes the cache entry).
    /// `scratch` survives an interrupted run (checkpoints go there) and is removed once the
    /// entry is committed.
    fn run(&self, input: &StageInput, out: &Path, scratch: &Path) -> Result<()>;
    /// Copy the outputs a user reads from the cache entry into the run directory.
    fn publish(&self, entry: &Path, run_dir: &Path) -> Result<()>;
}

/// The cache key of a stage for a variant.
pub fn key(
    stage: &dyn Stage,
    input: &StageInput,
    upstream_keys: &BTreeMap<&'static str, String>,
) -> String {
    let mut h = Hasher::new();
    h.field(stage.name())
        .field(stage.version().to_le_bytes())
        .json(&stage.config_slice(input));
    for up in stage.key_upstream(input) {
        h.field(up)
            .field(upstream_keys.get(up).map(String::as_str).unwrap_or(""));
    }
    h.hex()
}
