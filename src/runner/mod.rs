//! Running manifests: the plan (variants × stages with their cache keys), the stage chain,
//! the cache, and run directories.
//!
//! `work_dir/` layout:
//! ```text
//! .cache/<stage>/<key>/          one complete stage output (shared by every variant with that key)
//! .locks/<experiment>/           one lock per variant while a process runs it
//! <experiment>/experiment.json   variants, their run directories and last outcome
//! <experiment>/<variant>-<hash>/ one run directory per resolved config: config.toml, run.json,
//!                                and the user-facing outputs of each stage
//! ```
//! A run directory is named by the variant id and the hash of its resolved config, so a changed
//! config gets a new directory and nothing is overwritten; re-running the same config resumes
//! in the same directory from the cache. `--fresh` recomputes every stage and moves the old run
//! directory aside (`…​.replaced-<time>`) instead of deleting it.

mod cache;
mod cam_stage;
mod classify_stage;
mod data_stage;
pub mod device;
mod evaluate_stage;
mod predict;
mod pseudo_stage;
mod results;
mod rundir;
mod segment_stage;
mod select;
mod stage;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use cache::{Cache, Outcome};
pub use cam_stage::CamStage;
pub use classify_stage::ClassifyStage;
pub use data_stage::{DataStage, DataSummary};
pub use evaluate_stage::EvaluateStage;
pub use predict::{predict_folder, PredictReport};
pub use pseudo_stage::PseudoStage;
pub use rundir::{run_dir_name, RunInfo, Versions};
pub use segment_stage::{SegmentStage, WEIGHTS as SEGMENTER_WEIGHTS};
pub use select::{Selection, Shard};
pub use stage::{DynStage, SliceInput, Stage, StageInput};

use crate::config::{ConfigError, ConfigErrors, Manifest, Variant};
use crate::data::{self, DatasetIndex, Registry};
use crate::error::{Error, Result};
use crate::util::fs::{write_json, Lock};

/// The lock a process holds while it runs variant `v` of the experiment in `exp_dir`:
/// `<work_dir>/.locks/<experiment>/<run dir name>.lock`, beside the cache rather than among the
/// run directories.
fn variant_lock(exp_dir: &Path, v: &Variant) -> PathBuf {
    let (work, exp) = (
        exp_dir.parent().unwrap_or(Path::new(".")),
        exp_dir.file_name().unwrap_or_default(),
    );
    work.join(".locks")
        .join(exp)
        .join(format!("{}.lock", run_dir_name(v)))
}

/// The stage chain, in order; each declares its upstream stages and config slice.
pub fn stages() -> Vec<Box<dyn DynStage>> {
    vec![
        Box::new(DataStage),
        Box::new(ClassifyStage),
        Box::new(CamStage),
        Box::new(PseudoStage),
        Box::new(SegmentStage),
        Box::new(EvaluateStage),
    ]
}

fn manifest_dir(m: &Manifest) -> PathBuf {
    m.path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// The datasets of a manifest by registry name; `None` for one not opened (a synthetic
/// dataset not generated yet, or one not on this machine when only checking).
type Opened = BTreeMap<String, Option<DatasetIndex>>;

/// What opening a manifest's datasets is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// `validate`: check what is on this machine; note what is not.
    Check,
    /// `plan`: every dataset must be there (stage keys need it), except a synthetic one not
    /// generated yet.
    Plan,
    /// `run`: generate what is missing, then everything must be there.
    Run,
}

/// Settings of a runner that do not come from the manifest.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Where caches and run directories go.
    pub work_dir: PathBuf,
    /// Recompute every stage and move existing run directories aside.
    pub fresh: bool,
    /// Testing hook: abort the process just before the named stage commits its output.
    pub crash_at: Option<String>,
    /// Stop each variant after this stage (`--until`): a launcher computes the shared
    /// upstream stages first. Such a run directory is `partial`, not complete.
    pub until: Option<String>,
    /// Testing hook (`WSSS_FAIL_VARIANT`): the variant with this id fails before its first
    /// stage, as a crashed task would.
    pub fail_variant: Option<String>,
}

/// The state of one variant as its run directory (and its lock) tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VariantState {
    /// No run directory yet.
    Pending,
    /// Stopped after `--until` (shared upstream stages done).
    Partial,
    /// A process is running it (it holds the variant's lock).
    Running,
    /// Finished.
    Done,
    /// Failed, interrupted, or ended without finishing (killed: out of time or memory?).
    Failed,
}

impl VariantState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            VariantState::Pending => "pending",
            VariantState::Partial => "partial",
            VariantState::Running => "running",
            VariantState::Done => "done",
            VariantState::Failed => "failed",
        }
    }
}

/// Runs manifests against a dataset registry.
pub struct Runner {
    opts: RunnerOptions,
    registry: Registry,
    cache: Cache,
    stages: Vec<Box<dyn DynStage>>,
}

/// The state of one stage of one variant in a plan or a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageState {
    /// Stage name.
    pub stage: String,
    /// Cache key, when it can be known (not before a synthetic dataset is generated).
    pub key: Option<String>,
    /// `cached`, `ran`, `to run` or `pending`.
    pub state: String,
    /// Seconds spent (runs only).
    pub seconds: f64,
}

/// One variant of a plan or a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantReport {
    /// Variant id.
    pub id: String,
    /// Config hash.
    pub hash: String,
    /// Run directory.
    pub run_dir: PathBuf,
    /// Stages in order.
    pub stages: Vec<StageState>,
    /// Error message if the variant failed.
    pub error: Option<String>,
}

/// What a plan or a run found or did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Experiment name.
    pub experiment: String,
    /// Per-variant details.
    pub variants: Vec<VariantReport>,
    /// Notes for the user (e.g. a dataset that will be generated).
    pub notes: Vec<String>,
}

impl Report {
    /// How many distinct computations each stage needs, and how many variants share them.
    pub fn sharing(&self) -> Vec<(String, usize, usize)> {
        let mut out: Vec<(String, usize, usize)> = Vec::new();
        let names: Vec<String> = self
            .variants
            .first()
            .map(|v| v.stages.iter().map(|s| s.stage.clone()).collect())
            .unwrap_or_default();
        for (i, name) in names.iter().enumerate() {
            let keys: BTreeSet<Option<&String>> = self
                .variants
                .iter()
                .filter_map(|v| v.stages.get(i))
                .map(|s| s.key.as_ref())
                .collect();
            out.push((name.clone(), keys.len(), self.variants.len()));
        }
        out
    }

    /// Count of stage executions that ran (not cached).
    pub fn ran(&self) -> usize {
        self.variants
            .iter()
            .flat_map(|v| &v.stages)
            .filter(|s| s.state == "ran")
            .count()
    }

    /// Whether any variant failed.
    pub fn failed(&self) -> bool {
        self.variants.iter().any(|v| v.error.is_some())
    }
}

impl Runner {
    /// A runner over a registry.
    pub fn new(opts: RunnerOptions, registry: Registry) -> Self {
        let cache = Cache::new(&opts.work_dir);
        Self {
            opts,
            registry,
            cache,
            stages: stages(),
        }
    }

    /// The registry in use.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Stop each variant after this stage (see [`RunnerOptions::until`]).
    pub fn set_until(&mut self, until: Option<String>) {
        self.opts.until = until;
    }

    /// The work directory (caches and run directories).
    pub fn work_dir(&self) -> &Path {
        &self.opts.work_dir
    }

    /// The stage chain's names, in order.
    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// Check what needs data: every variant's dataset is registered, every file of it decodes
    /// and fits the registry (all problems of all files at once, [`data::open`]), and every
    /// variant's split leaves every class patients in every split. Returns notes for the user.
    /// A dataset that is not on this machine (its root folder is missing) is only noted here:
    /// `plan` and `run` refuse it.
    /// Variants that compute the same thing are refused here as `plan` and `run` refuse
    /// them, also when the dataset is not on this machine.
    pub fn check(&self, m: &Manifest) -> Result<Vec<String>> {
        let (opened, mut notes) = self.open_datasets(m, Open::Check)?;
        notes.extend(m.inert_settings());
        let keys = m
            .variants
            .iter()
            .map(|v| Ok((v, self.identity_keys(m, v, &opened)?)))
            .collect::<Result<Vec<_>>>()?;
        self.refuse_same_computation(m, &keys)?;
        Ok(notes)
    }

    /// A variant's stage keys for telling computations apart: on its opened dataset where
    /// there is one, else on a stand-in with the dataset's registry entry and no files. Stage
    /// slices read the dataset only through its entry and fingerprint, and every variant of
    /// one dataset shares its fingerprint, so two variants' keys agree on the stand-in exactly
    /// when they agree on the data.
    fn identity_keys(&self, m: &Manifest, v: &Variant, opened: &Opened) -> Result<Vec<String>> {
        let spec = self.dataset_for(m, v)?;
        if let Some(idx) = opened.get(&spec.name).and_then(Option::as_ref) {
            return Ok(self.stage_keys(m, v, idx));
        }
        let stand_in = DatasetIndex {
            spec: spec.clone(),
            samples: Vec::new(),
            fingerprint: format!("not opened: {}", spec.name),
            sizes: Vec::new(),
        };
        Ok(self.stage_keys(m, v, &stand_in))
    }

    /// Open every dataset the variants use, once each, and check each variant's split on it.
    /// Dataset problems and split problems are reported together (exit code 2).
    fn open_datasets(&self, m: &Manifest, mode: Open) -> Result<(Opened, Vec<String>)> {
        let mut errs = Vec::new();
        let mut data_errs: Vec<String> = Vec::new();
        let mut notes = Vec::new();
        let mut indexes: BTreeMap<String, Option<DatasetIndex>> = BTreeMap::new();
        // Datasets with file problems, listed as far as possible: their splits are still
        // checked, so that one pass reports both.
        let mut faulty: BTreeMap<String, DatasetIndex> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for v in &m.variants {
            let Some(spec) = self.registry.get(&v.config.dataset) else {
                errs.push(ConfigError::key(
                    m.source_of(v, "dataset"),
                    "dataset",
                    format!(
                        "`{}` is not registered in {} (registered: {})",
                        v.config.dataset,
                        self.registry.source,
                        self.registry.names().join(", ")
                    ),
                ));
                continue;
            };
            if !indexes.contains_key(&spec.name) {
                let idx = if spec.synth.is_some() && !spec.root.exists() && mode != Open::Run {
                    notes.push(format!(
                        "dataset `{}` is generated on first run at {}; its split and stage keys \
                         are checked then",
                        spec.name,
                        spec.root.display()
                    ));
                    None
                } else if spec.synth.is_none() && !spec.root.exists() && mode == Open::Check {
                    notes.push(format!(
                        "dataset `{}` is not on this machine ({} does not exist): its files and \
                         split were not checked; `plan` and `run` need it",
                        spec.name,
                        spec.root.display()
                    ));
                    None
                } else {
                    match data::open_all(spec) {
                        Ok((i, d)) if d.is_empty() => Some(i),
                        Ok((i, d)) => {
                            data_errs.extend(d);
                            faulty.insert(spec.name.clone(), i);
                            None
                        }
                        Err(Error::Dataset(d)) => {
                            data_errs.extend(d);
                            None
                        }
                        Err(e) => return Err(e),
                    }
                };
                indexes.insert(spec.name.clone(), idx);
            }
            let Some(idx) = indexes
                .get(&spec.name)
                .and_then(Option::as_ref)
                .or_else(|| faulty.get(&spec.name))
            else {
                continue;
            };
            let sig =
                serde_json::to_string(&(&v.config.dataset, &v.config.split)).unwrap_or_default();
            if seen.insert(sig) {
                if let Err(ConfigErrors(e)) =
                    data::split::assign(idx, &v.config.split, &m.source_of(v, "split.method"))
                {
                    errs.extend(e);
                }
            }
        }
        if !data_errs.is_empty() {
            data_errs.extend(errs.iter().map(ToString::to_string));
            return Err(Error::Dataset(data_errs));
        }
        if !errs.is_empty() {
            return Err(ConfigErrors(errs).into());
        }
        Ok((indexes, notes))
    }

    fn dataset_for(&self, m: &Manifest, v: &Variant) -> Result<&data::DatasetSpec> {
        self.registry.get(&v.config.dataset).ok_or_else(|| {
            ConfigErrors(vec![ConfigError::key(
                m.source_of(v, "dataset"),
                "dataset",
                format!(
                    "`{}` is not registered (registered: {})",
                    v.config.dataset,
                    self.registry.names().join(", ")
                ),
            )])
            .into()
        })
    }

    fn exp_dir(&self, m: &Manifest) -> PathBuf {
        self.opts.work_dir.join(m.name())
    }

    /// Every stage's cache key for a variant, in chain order.
    fn stage_keys(&self, m: &Manifest, v: &Variant, idx: &DatasetIndex) -> Vec<String> {
        let mdir = manifest_dir(m);
        let input = SliceInput {
            config: &v.config,
            dataset: idx,
            manifest_dir: &mdir,
        };
        let mut keys: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut out = Vec::new();
        for s in &self.stages {
            let k = s.key(&input, &keys);
            keys.insert(s.name(), k.clone());
            out.push(k);
        }
        out
    }

    /// Refuse, before anything runs, run directories that hold runs on other data (unless
    /// `--fresh`): `plan` says what `run` would do.
    fn refuse_changed_data(&self, m: &Manifest, opened: &Opened) -> Result<()> {
        if self.opts.fresh {
            return Ok(());
        }
        let mut errs = Vec::new();
        for v in &m.variants {
            let spec = self.dataset_for(m, v)?;
            if let Some(idx) = opened.get(&spec.name).and_then(Option::as_ref) {
                let dir = self.exp_dir(m).join(run_dir_name(v));
                errs.extend(rundir::dataset_conflict(&dir, idx));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Usage(errs.join("\n")))
        }
    }

    /// Refuse variants that compute the same thing: every stage of both reads the same
    /// settings (they differ only in keys that nothing reads, such as `split.seed` under
    /// `split.method = "patients"`), so reporting them as two runs would fake replicates.
    fn refuse_same_computation(
        &self,
        m: &Manifest,
        keys: &[(&Variant, Vec<String>)],
    ) -> Result<()> {
        let mut first: BTreeMap<&String, &Variant> = BTreeMap::new();
        let mut errs = Vec::new();
        for (v, k) in keys {
            let Some(last) = k.last() else {
                continue;
            };
            if let Some(o) = first.get(last) {
                let differ: Vec<String> = v
                    .assignments
                    .iter()
                    .filter(|a| !o.assignments.contains(a))
                    .map(|(k, _)| format!("`{k}`"))
                    .collect();
                errs.push(ConfigError::key(
                    &m.sweep_source,
                    "sweep",
                    format!(
                        "variants `{}` and `{}` compute the same thing: they differ only in {}, \
                         which no stage reads with these settings; one computation counted \
                         twice is not a replicate",
                        o.id,
                        v.id,
                        differ.join(", ")
                    ),
                ));
            } else {
                first.insert(last, v);
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs).into())
        }
    }

    /// What `plan` and `run` both do first: open the datasets, compute every variant's stage
    /// keys once, and refuse variants that compute the same thing and run directories that
    /// hold runs on other data.
    #[allow(clippy::type_complexity)]
    fn prepare<'m>(
        &self,
        m: &'m Manifest,
        mode: Open,
    ) -> Result<(Opened, Vec<String>, Vec<(&'m Variant, Option<Vec<String>>)>)> {
        let (opened, mut notes) = self.open_datasets(m, mode)?;
        notes.extend(m.inert_settings());
        let mut all_keys = Vec::new();
        let mut identity = Vec::new();
        for v in &m.variants {
            let spec = self.dataset_for(m, v)?;
            let is_open = opened.get(&spec.name).is_some_and(Option::is_some);
            // On an opened dataset these are the variant's stage keys.
            let id = self.identity_keys(m, v, &opened)?;
            all_keys.push((v, is_open.then(|| id.clone())));
            identity.push((v, id));
        }
        self.refuse_same_computation(m, &identity)?;
        self.refuse_changed_data(m, &opened)?;
        Ok((opened, notes, all_keys))
    }

    /// A dry run: every variant, every stage's key, and whether it is cached.
    pub fn plan(&self, m: &Manifest) -> Result<Report> {
        let (_, notes, all_keys) = self.prepare(m, Open::Plan)?;
        let mut variants = Vec::new();
        for (v, keys) in &all_keys {
            let run_dir = self.exp_dir(m).join(run_dir_name(v));
            let mut states = Vec::new();
            for (i, s) in self.stages.iter().enumerate() {
                let key = keys.as_ref().map(|k| k[i].clone());
                let state = match &key {
                    Some(k) if self.cache.has(s.name(), k) && !self.opts.fresh => "cached",
                    Some(_) => "to run",
                    None => "pending",
                };
                states.push(StageState {
                    stage: s.name().into(),
                    key,
                    state: state.into(),
                    seconds: 0.0,
                });
            }
            variants.push(VariantReport {
                id: v.id.clone(),
                hash: v.hash.clone(),
                run_dir,
                stages: states,
                error: None,
            });
        }
        Ok(Report {
            experiment: m.name().into(),
            variants,
            notes,
        })
    }

    /// Run the selected variants through the stage chain. Bad input stops the run (exit code
    /// 2); a variant that fails while running is reported and the others still run (exit
    /// code 1). Returns this process's variants.
    ///
    /// Safe beside other processes running other (or the same) variants of the experiment:
    /// each variant holds the lock of its run directory while it runs, and
    /// `experiment.json` / `results` are rebuilt at the end, under the experiment's lock, from
    /// this process's outcomes and every other variant's `run.json` — never from this process's
    /// variants alone, so no shard's results replace another's.
    pub fn run(&self, m: &Manifest, selection: &Selection) -> Result<Report> {
        let (datasets, notes, all_keys) = self.prepare(m, Open::Run)?;
        let mut picked = selection.pick(m)?;
        if picked.is_empty() {
            tracing::warn!(
                "the selection ({selection:?}) holds none of the {} variant(s): nothing to run",
                m.variants.len()
            );
        }
        if let Some(u) = &self.opts.until {
            // Stopping a finished variant after an early stage would mark it partial: skip it.
            let states = self.states(m);
            picked.retain(|&i| {
                let done = states[i].1 == VariantState::Done;
                if done {
                    tracing::info!("--until {u}: {} is done already", m.variants[i].id);
                }
                !done
            });
        }
        let exp_dir = self.exp_dir(m);
        let mut computed_now: BTreeSet<(String, String)> = BTreeSet::new();
        let mut variants = Vec::new();
        let total = m.variants.len();
        for &vi in &picked {
            let (v, keys) = &all_keys[vi];
            tracing::info!("variant {}/{total}: {}", vi + 1, v.id);
            let spec = self.dataset_for(m, v)?;
            let (Some(idx), Some(keys)) = (datasets.get(&spec.name).and_then(Option::as_ref), keys)
            else {
                return Err(Error::dataset(format!(
                    "dataset `{}` was not opened",
                    spec.name
                )));
            };
            let run_dir = exp_dir.join(run_dir_name(v));
            let _variant_lock = Lock::acquire(&variant_lock(&exp_dir, v))?;
            match self.run_variant(m, v, idx, keys, &run_dir, &mut computed_now) {
                Ok(stages) => variants.push(VariantReport {
                    id: v.id.clone(),
                    hash: v.hash.clone(),
                    run_dir,
                    stages,
                    error: None,
                }),
                Err(e) if e.exit_code() == crate::error::EXIT_BAD_INPUT => return Err(e),
                Err(e @ Error::Interrupted { .. }) => return Err(e),
                Err(e) => {
                    tracing::error!("variant {} failed: {e}", v.id);
                    variants.push(VariantReport {
                        id: v.id.clone(),
                        hash: v.hash.clone(),
                        run_dir,
                        stages: vec![],
                        error: Some(e.to_string()),
                    })
                }
            }
        }
        let report = Report {
            experiment: m.name().into(),
            variants,
            notes,
        };
        if self.opts.until.is_none() {
            let _lock = Lock::acquire(&exp_dir.join(".lock"))?;
            let all = self.rebuild(m, &report);
            write_json(&exp_dir.join("experiment.json"), &all)?;
            results::write(m, &all, &exp_dir)?;
        }
        Ok(report)
    }

    /// What variant `v`'s run directory records: its state, its failure message and its
    /// `run.json`. A `running` run whose lock no process holds ended without finishing.
    fn recorded(
        &self,
        exp_dir: &Path,
        v: &Variant,
    ) -> (VariantState, Option<String>, Option<RunInfo>) {
        let Some(info) = std::fs::read(exp_dir.join(run_dir_name(v)).join("run.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<RunInfo>(&b).ok())
        else {
            return (VariantState::Pending, None, None);
        };
        let (state, err) = match info.status.as_str() {
            "complete" => (VariantState::Done, None),
            "partial" => (VariantState::Partial, None),
            "failed" | "interrupted" => (
                VariantState::Failed,
                Some(
                    info.error
                        .clone()
                        .unwrap_or_else(|| format!("run {}", info.status)),
                ),
            ),
            _ if Lock::held(&variant_lock(exp_dir, v)) => (VariantState::Running, None),
            _ => (
                VariantState::Failed,
                Some(format!(
                    "ended without finishing (last update {}): killed, or out of time or memory?",
                    info.updated
                )),
            ),
        };
        (state, err, Some(info))
    }

    /// Each variant's state (manifest order) with its failure message, from its run
    /// directory (see [`Runner::collect`]).
    pub fn states(&self, m: &Manifest) -> Vec<(String, VariantState, Option<String>)> {
        let exp_dir = self.exp_dir(m);
        m.variants
            .iter()
            .map(|v| {
                let (state, err, _) = self.recorded(&exp_dir, v);
                (v.id.clone(), state, err)
            })
            .collect()
    }

    /// What a cluster's report job runs: rebuild `experiment.json` and `results` from every
    /// run directory (a run that ended without finishing is recorded as failed). Returns the
    /// experiment's report and the ids of variants that are not done.
    pub fn collect(&self, m: &Manifest) -> Result<(Report, Vec<String>)> {
        let exp_dir = self.exp_dir(m);
        let none = Report {
            experiment: m.name().into(),
            variants: vec![],
            notes: vec![],
        };
        let _lock = Lock::acquire(&exp_dir.join(".lock"))?;
        let all = self.rebuild(m, &none);
        write_json(&exp_dir.join("experiment.json"), &all)?;
        results::write(m, &all, &exp_dir)?;
        let not_done = self
            .states(m)
            .into_iter()
            .filter(|(_, s, _)| *s != VariantState::Done)
            .map(|(id, _, _)| id)
            .collect();
        Ok((all, not_done))
    }

    /// Every variant's stage keys, with the data generated if it is missing (what a launcher
    /// groups variants by). Errors as [`Runner::run`]'s bad input.
    pub fn stage_keys_of(&self, m: &Manifest) -> Result<Vec<(String, Vec<String>)>> {
        let (_, _, all_keys) = self.prepare(m, Open::Run)?;
        Ok(all_keys
            .into_iter()
            .map(|(v, k)| (v.id.clone(), k.unwrap_or_default()))
            .collect())
    }

    /// The experiment's report over every variant, in manifest order: this process's outcomes
    /// (`own`), and for the other variants what their run directories record — finished runs
    /// only (complete, failed, interrupted, or ended without finishing, with their stages); a
    /// variant still running, partial or never run is left out until the process that runs it
    /// rebuilds the files.
    fn rebuild(&self, m: &Manifest, own: &Report) -> Report {
        let exp_dir = self.exp_dir(m);
        let mut variants = Vec::new();
        for v in &m.variants {
            if let Some(r) = own.variants.iter().find(|r| r.id == v.id) {
                variants.push(r.clone());
                continue;
            }
            // Finished runs only: a running one is rebuilt by its own process when it ends.
            let (VariantState::Done | VariantState::Failed, error, Some(info)) =
                self.recorded(&exp_dir, v)
            else {
                continue;
            };
            let run_dir = exp_dir.join(run_dir_name(v));
            variants.push(VariantReport {
                id: v.id.clone(),
                hash: v.hash.clone(),
                run_dir,
                stages: info
                    .stages
                    .iter()
                    .map(|s| StageState {
                        stage: s.stage.clone(),
                        key: Some(s.key.clone()),
                        state: s.state.clone(),
                        seconds: s.seconds,
                    })
                    .collect(),
                error,
            });
        }
        Report {
            experiment: own.experiment.clone(),
            variants,
            notes: own.notes.clone(),
        }
    }

    fn run_variant(
        &self,
        m: &Manifest,
        v: &Variant,
        idx: &DatasetIndex,
        stage_keys: &[String],
        run_dir: &Path,
        computed_now: &mut BTreeSet<(String, String)>,
    ) -> Result<Vec<StageState>> {
        let (dev, device_desc) = device::resolve(&v.config.device)?;
        let mdir = manifest_dir(m);
        let versions = Versions::current();
        let precision = crate::model::precision::apply(v.config.precision, &dev)?;
        let mut info = rundir::open(run_dir, m, v, idx, &versions, &device_desc, self.opts.fresh)?;
        info.precision = precision;
        if self.opts.fail_variant.as_deref() == Some(v.id.as_str()) {
            let msg = format!("WSSS_FAIL_VARIANT={}: injected failure", v.id);
            info.fail(run_dir, "data", &msg)?;
            return Err(Error::stage("data", msg));
        }
        let src = |k: &str| m.source_of(v, k);
        let mut upstream: BTreeMap<&'static str, PathBuf> = BTreeMap::new();
        let mut states = Vec::new();
        for (s, key) in self.stages.iter().zip(stage_keys) {
            if states.last().is_some_and(|st: &StageState| {
                self.opts.until.as_deref() == Some(st.stage.as_str())
            }) {
                info.partial(run_dir)?;
                return Ok(states);
            }
            let t0 = Instant::now();
            let slice_input = SliceInput {
                config: &v.config,
                dataset: idx,
                manifest_dir: &mdir,
            };
            let input = StageInput {
                dataset: idx,
                source_of: &src,
                upstream: &upstream,
                device: &dev,
                manifest_dir: &mdir,
            };
            let key = key.clone();
            let force =
                self.opts.fresh && !computed_now.contains(&(s.name().to_string(), key.clone()));
            let crash = self.opts.crash_at.as_deref() == Some(s.name());
            let result = self.cache.get_or_compute(
                s.name(),
                &key,
                force,
                |out, scratch| {
                    tracing::info!("stage {}: running ({})", s.name(), &key[..12]);
                    s.run(&slice_input, &input, out, scratch)
                },
                || {
                    if crash {
                        eprintln!(
                            "WSSS_CRASH_AT={}: aborting before the stage output is committed",
                            s.name()
                        );
                        std::process::abort();
                    }
                },
            );
            let result = result.and_then(|x| crate::util::interrupt::check().map(|()| x));
            let (entry, outcome) = match result {
                Ok(x) => x,
                Err(e @ Error::Interrupted { .. }) => {
                    info.interrupt(run_dir, s.name(), &e.to_string())?;
                    return Err(e);
                }
                Err(e) => {
                    info.fail(run_dir, s.name(), &e.to_string())?;
                    return Err(e);
                }
            };
            computed_now.insert((s.name().to_string(), key.clone()));
            s.publish(&entry, run_dir)?;
            let state = StageState {
                stage: s.name().into(),
                key: Some(key.clone()),
                state: match outcome {
                    Outcome::Cached => "cached".into(),
                    Outcome::Ran => "ran".into(),
                },
                seconds: t0.elapsed().as_secs_f64(),
            };
            tracing::info!(
                "stage {}: {} in {:.2}s",
                s.name(),
                state.state,
                state.seconds
            );
            info.record_stage(run_dir, &state, &entry)?;
            upstream.insert(s.name(), entry);
            states.push(state);
        }
        info.complete(run_dir)?;
        Ok(states)
    }
}
