//! Run directories: one per resolved variant config, holding the resolved config, the seeds,
//! the versions, the device, the dataset fingerprint and the stage outcomes (`run.json`).

use crate::model::backbone::input_normalisation;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StageState;
use crate::config::{Manifest, Variant};
use crate::data::DatasetIndex;
use crate::error::{Error, Result};
use crate::util::fs::{atomic_write, mkdirs, write_json};

/// Versions of everything that shapes a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Versions {
    /// wsss.
    pub wsss: String,
    /// candle-core.
    pub candle: String,
    /// polars.
    pub polars: String,
    /// The compiler.
    pub rustc: String,
    /// Whether the CUDA backend is compiled in.
    pub cuda_feature: bool,
    /// The CPU kernels' register tile (`avx512`, `avx2`, `portable`; see `WSSS_CPU_KERNELS`);
    /// empty in runs recorded before it was.
    #[serde(default)]
    pub cpu_kernels: String,
}

impl Versions {
    /// This binary's versions.
    pub fn current() -> Self {
        Self {
            wsss: env!("CARGO_PKG_VERSION").into(),
            candle: env!("BUILD_CANDLE_VERSION").into(),
            polars: env!("BUILD_POLARS_VERSION").into(),
            rustc: env!("BUILD_RUSTC_VERSION").into(),
            cuda_feature: cfg!(feature = "cuda"),
            cpu_kernels: wsss_kernels::sgemm::isa().name().into(),
        }
    }
}

/// The folder name of a variant: its id (shortened if long) and its config hash.
pub fn run_dir_name(v: &Variant) -> String {
    let id: String =
        v.id.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "=.,_-+".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
    let id = if id.chars().count() > 96 {
        id.chars().take(96).collect()
    } else {
        id
    };
    format!("{id}-{}", v.hash)
}

/// Why the run directory `dir` cannot hold a run on `idx` (it holds one on other data), if
/// it cannot. `plan` and `run` both ask before anything runs; `--fresh` moves it aside.
pub fn dataset_conflict(dir: &Path, idx: &DatasetIndex) -> Option<String> {
    let bytes = std::fs::read(dir.join("run.json")).ok()?;
    let old = serde_json::from_slice::<RunInfo>(&bytes).ok()?;
    (old.dataset.fingerprint != idx.fingerprint).then(|| {
        format!(
            "{} holds a run on dataset `{}` with fingerprint {}, but the dataset now has \
             fingerprint {}: the data changed. Re-run with --fresh to move the old run aside",
            dir.display(),
            idx.spec.name,
            &old.dataset.fingerprint[..12.min(old.dataset.fingerprint.len())],
            &idx.fingerprint[..12]
        )
    })
}

/// Dataset identity recorded with a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// Registry name.
    pub name: String,
    /// Root folder.
    pub root: PathBuf,
    /// Fingerprint of paths, sizes and labels.
    pub fingerprint: String,
    /// Number of images.
    pub images: usize,
}

/// Input normalisation of the two networks, in words.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InputNormalisation {
    /// The classifier's (`backbone.arch`).
    pub classifier: String,
    /// The segmenter's (`segmentation.encoder`).
    pub segmenter: String,
}

/// One stage's record in `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    /// Stage name.
    pub stage: String,
    /// Cache key.
    pub key: String,
    /// `ran` or `cached` (in the latest invocation).
    pub state: String,
    /// Seconds.
    pub seconds: f64,
    /// Cache entry the outputs came from.
    pub entry: PathBuf,
}

/// The content of `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    /// Experiment name.
    pub experiment: String,
    /// Variant id.
    pub variant: String,
    /// Hash of the resolved config.
    pub config_hash: String,
    /// Manifest files, base first.
    pub manifest_files: Vec<PathBuf>,
    /// `train.seed`.
    pub seed: u64,
    /// `split.seed`.
    pub split_seed: u64,
    /// Versions.
    pub versions: Versions,
    /// Resolved device.
    pub device: String,
    /// The arithmetic the device computes in (`precision`, as applied).
    #[serde(default)]
    pub precision: String,
    /// Dataset identity.
    pub dataset: DatasetRecord,
    /// How the classifier's and the segmenter's inputs are normalised (it follows the
    /// architecture's weights).
    #[serde(default)]
    pub input_normalisation: InputNormalisation,
    /// `running`, `complete` or `failed`.
    pub status: String,
    /// When the directory was created (UTC, RFC 3339).
    pub created: String,
    /// Last update.
    pub updated: String,
    /// Stage outcomes.
    pub stages: Vec<StageRecord>,
    /// Failure message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Create or reopen a run directory. An existing directory of the same config resumes; one
/// whose dataset changed is refused (use `--fresh`); `fresh` moves an existing one aside.
pub fn open(
    dir: &Path,
    m: &Manifest,
    v: &Variant,
    idx: &DatasetIndex,
    versions: &Versions,
    device: &str,
    fresh: bool,
) -> Result<RunInfo> {
    let info_path = dir.join("run.json");
    let mut created = now();
    if dir.exists() {
        if fresh {
            let aside = PathBuf::from(format!(
                "{}.replaced-{}",
                dir.display(),
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
            ));
            std::fs::rename(dir, &aside).map_err(|e| Error::io(dir, e))?;
            tracing::info!(
                "--fresh: moved the previous run directory to {}",
                aside.display()
            );
        } else {
            if let Some(conflict) = dataset_conflict(dir, idx) {
                return Err(Error::Usage(conflict));
            }
            if let Some(old) = std::fs::read(&info_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<RunInfo>(&b).ok())
            {
                created = old.created;
            }
        }
    }
    mkdirs(dir)?;
    let header = format!(
        "# Resolved config of variant `{}` of experiment `{}` (config hash {}).\n# Reproduce with: wsss run {}\n\n",
        v.id,
        v.config.name,
        v.hash,
        dir.join("config.toml").display()
    );
    let body = toml::to_string_pretty(&v.config)
        .map_err(|e| Error::io(dir.join("config.toml"), std::io::Error::other(e)))?;
    atomic_write(
        &dir.join("config.toml"),
        format!("{header}{body}").as_bytes(),
    )?;
    let info = RunInfo {
        experiment: v.config.name.clone(),
        variant: v.id.clone(),
        config_hash: v.hash.clone(),
        manifest_files: m.files.clone(),
        seed: v.config.train.seed,
        split_seed: v.config.split.seed,
        versions: versions.clone(),
        device: device.into(),
        precision: String::new(),
        dataset: DatasetRecord {
            name: idx.spec.name.clone(),
            root: idx.spec.root.clone(),
            fingerprint: idx.fingerprint.clone(),
            images: idx.samples.len(),
        },
        input_normalisation: InputNormalisation {
            classifier: input_normalisation(v.config.backbone.arch).into(),
            segmenter: input_normalisation(v.config.segmentation.encoder).into(),
        },
        status: "running".into(),
        created,
        updated: now(),
        stages: vec![],
        error: None,
    };
    write_json(&info_path, &info)?;
    Ok(info)
}

impl RunInfo {
    /// Record a finished stage.
    pub fn record_stage(&mut self, dir: &Path, s: &StageState, entry: &Path) -> Result<()> {
        self.stages.retain(|r| r.stage != s.stage);
        self.stages.push(StageRecord {
            stage: s.stage.clone(),
            key: s.key.clone().unwrap_or_default(),
            state: s.state.clone(),
            seconds: s.seconds,
            entry: entry.to_path_buf(),
        });
        self.updated = now();
        write_json(&dir.join("run.json"), self)
    }

    /// Mark the run complete.
    pub fn complete(&mut self, dir: &Path) -> Result<()> {
        self.status = "complete".into();
        self.error = None;
        self.updated = now();
        write_json(&dir.join("run.json"), self)
    }

    /// Mark the run stopped after `--until`'s stage: the rest runs when it is rerun.
    pub fn partial(&mut self, dir: &Path) -> Result<()> {
        self.status = "partial".into();
        self.updated = now();
        write_json(&dir.join("run.json"), self)
    }

    /// Mark the run interrupted (by a signal) in a stage: it resumes when rerun.
    pub fn interrupt(&mut self, dir: &Path, stage: &str, msg: &str) -> Result<()> {
        self.status = "interrupted".into();
        self.error = Some(format!("stage {stage}: {msg}"));
        self.updated = now();
        write_json(&dir.join("run.json"), self)
    }

    /// Mark the run failed in a stage.
    pub fn fail(&mut self, dir: &Path, stage: &str, msg: &str) -> Result<()> {
        self.status = "failed".into();
        self.error = Some(format!("stage {stage}: {msg}"));
        self.updated = now();
        write_json(&dir.join("run.json"), self)
    }
}
