//! The stage contract: what a stage depends on (its cache key) and what it writes.
//!
//! A stage declares a typed **slice** of the resolved configuration — exactly the values it
//! reads — built by [`Stage::slice`] from the variant. Its cache key hashes its name, its
//! implementation version, that slice, and the keys of the stages it reads from; and
//! [`Stage::run`] receives the slice, never the variant, so a stage cannot read a setting that
//! is not in its key (a threshold sweep that reused a stage reading the threshold would show
//! the first variant's threshold in every run). Two variants that agree on all of that share
//! one cached output: a sweep over `cam.threshold` trains the classifier once.
//!
//! The runner holds stages as [`DynStage`] objects; every [`Stage`] is one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::ExperimentConfig;
use crate::data::DatasetIndex;
use crate::error::Result;
use crate::util::hash::Hasher;

/// What a stage sees besides its config slice when it runs: the data, the upstream outputs
/// and where to run — not the variant's configuration.
pub struct StageInput<'a> {
    /// The indexed dataset (its fingerprint is part of the data stage's slice).
    pub dataset: &'a DatasetIndex,
    /// The file to blame for bad input found while running, by manifest key.
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

/// What a slice is built from: the variant's resolved config, the dataset and the manifest's
/// folder (for files a setting names, such as pretrained weights).
pub struct SliceInput<'a> {
    /// The variant's resolved configuration.
    pub config: &'a ExperimentConfig,
    /// The indexed dataset.
    pub dataset: &'a DatasetIndex,
    /// Folder of the manifest.
    pub manifest_dir: &'a Path,
}

/// One step of the pipeline.
pub trait Stage: Sync {
    /// The settings the stage reads, and nothing else; hashed into its key.
    type Slice: Serialize;
    /// Name, used in cache paths and messages.
    fn name(&self) -> &'static str;
    /// Implementation version; bump it when the stage's outputs change for the same inputs.
    fn version(&self) -> u32;
    /// Names of the stages whose outputs this one reads.
    fn upstream(&self) -> &'static [&'static str];
    /// The upstream stages whose keys enter this stage's key (default: all of
    /// [`Stage::upstream`]); a stage that ignores an upstream output for some slices (the
    /// fully supervised segmenter ignores pseudo labels) leaves it out so that sweeps over
    /// what it ignores share one computation.
    fn key_upstream(&self, _slice: &Self::Slice) -> Vec<&'static str> {
        self.upstream().to_vec()
    }
    /// The stage's slice of a variant's configuration (and of the data's identity).
    fn slice(&self, input: &SliceInput) -> Self::Slice;
    /// Compute the outputs into `out` (an empty folder that becomes the cache entry).
    /// `scratch` survives an interrupted run (checkpoints go there) and is removed once the
    /// entry is committed.
    fn run(
        &self,
        slice: &Self::Slice,
        input: &StageInput,
        out: &Path,
        scratch: &Path,
    ) -> Result<()>;
    /// Copy the outputs a user reads from the cache entry into the run directory.
    fn publish(&self, entry: &Path, run_dir: &Path) -> Result<()>;
}

/// A stage whose slice type is erased, as the runner holds it: the key and the run both come
/// from the same [`Stage::slice`] of the variant (built for each; it is a few fields).
pub trait DynStage: Sync {
    /// See [`Stage::name`].
    fn name(&self) -> &'static str;
    /// The cache key for a variant, given the keys of the stages before it.
    fn key(&self, input: &SliceInput, upstream_keys: &BTreeMap<&'static str, String>) -> String;
    /// Run on the slice of `config`.
    fn run(
        &self,
        config: &SliceInput,
        input: &StageInput,
        out: &Path,
        scratch: &Path,
    ) -> Result<()>;
    /// See [`Stage::publish`].
    fn publish(&self, entry: &Path, run_dir: &Path) -> Result<()>;
}

impl<S: Stage> DynStage for S {
    fn name(&self) -> &'static str {
        Stage::name(self)
    }

    fn key(&self, input: &SliceInput, upstream_keys: &BTreeMap<&'static str, String>) -> String {
        let slice = self.slice(input);
        let mut h = Hasher::new();
        h.field(Stage::name(self))
            .field(self.version().to_le_bytes())
            .json(&serde_json::to_value(&slice).unwrap_or_default());
        for up in self.key_upstream(&slice) {
            h.field(up)
                .field(upstream_keys.get(up).map(String::as_str).unwrap_or(""));
        }
        // The portable CPU tile rounds differently from the SIMD tiles (which agree bit for
        // bit), so what it computes is cached apart (`WSSS_CPU_KERNELS=portable`, or a CPU
        // without AVX2); the SIMD tiles' keys are unchanged.
        if wsss_kernels::sgemm::isa() == wsss_kernels::sgemm::Isa::Portable {
            h.field("cpu-kernels=portable");
        }
        h.hex()
    }

    fn run(
        &self,
        config: &SliceInput,
        input: &StageInput,
        out: &Path,
        scratch: &Path,
    ) -> Result<()> {
        Stage::run(self, &self.slice(config), input, out, scratch)
    }

    fn publish(&self, entry: &Path, run_dir: &Path) -> Result<()> {
        Stage::publish(self, entry, run_dir)
    }
}
