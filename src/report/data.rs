//! Reading a finished experiment back: `experiment.json`, and per variant its resolved config,
//! `run.json`, the stage summaries and the stage tables of its run directory.
//!
//! Everything the report shows comes from files a run wrote, so a report can be rebuilt (or
//! several experiments compared) at any time without recomputing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::data::Split;
use crate::error::{Error, Result};
use crate::runner::Report;
use crate::table::schema::{col, metric};
use crate::table::{self, Source, Table};

/// Which rows of a long metric table to read besides split and metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// No other column (`cam_quality`, `pseudo_metrics`).
    All,
    /// `seg_metrics` rows of one source.
    Source(Source),
    /// `classify_metrics` rows of one level (`image`, `patch`).
    Level(&'static str),
}

/// One variant's run, read back from its run directory.
#[derive(Debug, Clone)]
pub struct RunData {
    /// Variant id.
    pub id: String,
    /// Config hash.
    pub hash: String,
    /// Run directory.
    pub run_dir: PathBuf,
    /// The failure message, if the variant failed.
    pub error: Option<String>,
    /// The resolved config flattened to `section.key → value` (strings, as written in TOML).
    pub config: BTreeMap<String, String>,
    /// The resolved config as written (`config.toml`).
    pub config_text: String,
    /// Cache key per stage (from `run.json`): variants with equal keys share that output.
    pub stage_keys: BTreeMap<String, String>,
    /// Dataset root recorded in `run.json`.
    pub dataset_root: Option<PathBuf>,
    /// `<stage>_summary.json` contents by stage.
    pub summaries: BTreeMap<String, serde_json::Value>,
    /// Stage tables; absent when the stage did not run.
    pub tables: BTreeMap<Table, DataFrame>,
    /// The classifier's per-image predictions, parsed once from `predictions` (empty without).
    pub predictions: Vec<Prediction>,
}

/// One image's classifier prediction (a row of a run's `predictions` table).
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Image id.
    pub id: String,
    /// Patient.
    pub patient: String,
    /// True class.
    pub class: String,
    /// Split.
    pub split: String,
    /// Predicted class.
    pub predicted: String,
    /// Whether the prediction is right.
    pub correct: bool,
    /// Probability of the positive class.
    pub p_positive: f64,
}

impl Prediction {
    /// Probability of the predicted class.
    pub fn confidence(&self, positive: &str) -> f64 {
        if self.predicted == positive {
            self.p_positive
        } else {
            1.0 - self.p_positive
        }
    }
}

/// Parse a `predictions` table; `None` if a column is missing.
fn parse_predictions(t: &DataFrame) -> Option<Vec<Prediction>> {
    // classes are stored negative first: the last `p_<class>` column is the positive class
    let pos = positive_of(t)?;
    let (id, pa, cl, sp, pr, co) = (
        strs(t, "id")?,
        strs(t, "patient")?,
        strs(t, "class")?,
        strs(t, "split")?,
        strs(t, "predicted")?,
        strs(t, "correct")?,
    );
    let pp = nums(t, &format!("p_{pos}"))?;
    Some(
        (0..id.len())
            .map(|i| Prediction {
                id: id[i].clone(),
                patient: pa[i].clone(),
                class: cl[i].clone(),
                split: sp[i].clone(),
                predicted: pr[i].clone(),
                correct: co[i] == "true",
                p_positive: pp[i],
            })
            .collect(),
    )
}

fn positive_of(t: &DataFrame) -> Option<String> {
    t.get_column_names()
        .iter()
        .filter_map(|c| c.as_str().strip_prefix("p_").map(str::to_string))
        .next_back()
}

impl RunData {
    /// A stage table, if the run has it.
    pub fn table(&self, t: Table) -> Option<&DataFrame> {
        self.tables.get(&t)
    }

    /// A config value (`"cam.threshold"`), if set.
    pub fn cfg(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(String::as_str)
    }

    /// The level of the classifier metrics the report shows: `image`, or `patch` (the
    /// foreground label of a patch-level classifier).
    pub fn classify_level(&self) -> &'static str {
        if self.cfg("labels.level") == Some("patch") {
            "patch"
        } else {
            "image"
        }
    }

    /// A numeric field of a stage summary.
    pub fn summary_num(&self, stage: &str, field: &str) -> Option<f64> {
        self.summaries.get(stage)?.get(field)?.as_f64()
    }

    /// The splits of the run's patients.
    fn splits(&self) -> BTreeSet<String> {
        self.table(Table::Split)
            .and_then(|t| strs(t, col::SPLIT))
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// Whether some patient of the run is in split `s`.
    pub fn has_split(&self, s: Split) -> bool {
        self.splits().contains(s.as_str())
    }

    /// The split the report scores on: `valid` if the run has one, else `test`, else `train`.
    pub fn eval_split(&self) -> Split {
        let splits = self.splits();
        for s in [Split::Valid, Split::Test, Split::Train] {
            if splits.contains(s.as_str()) {
                return s;
            }
        }
        Split::Valid
    }

    /// Whether the run's segmenter collapsed (`segment_summary.json`: one class on nearly
    /// every pixel of the validation images).
    pub fn collapsed(&self) -> bool {
        self.summaries
            .get("segment")
            .and_then(|v| v.get("collapsed"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }

    /// Name of the positive class: the last `p_<class>` column of the predictions (classes
    /// are stored negative first).
    pub fn positive_class(&self) -> Option<String> {
        positive_of(self.table(Table::Predictions)?)
    }

    /// A per-image column (`col`) of a stage table by image id; empty if absent.
    pub fn per_image(&self, table: Table, column: &str) -> BTreeMap<String, f64> {
        self.table(table)
            .and_then(|t| {
                Some(
                    strs(t, col::ID)?
                        .into_iter()
                        .zip(nums(t, column)?)
                        .collect(),
                )
            })
            .unwrap_or_default()
    }

    /// The held-out mIoU a run is ranked by: its segmenter's, else its pseudo labels'.
    pub fn headline_miou(&self) -> Option<f64> {
        let s = self.eval_split();
        self.metric(
            Table::SegMetrics,
            s,
            metric::MIOU,
            Rows::Source(Source::Segmenter),
        )
        .or_else(|| self.metric(Table::PseudoMetrics, s, metric::MIOU, Rows::All))
    }

    /// `value` of the row of a `(split, metric, value)` table (with optional extra filter
    /// column == value).
    pub fn metric(&self, table: Table, split: Split, metric: &str, rows: Rows) -> Option<f64> {
        let t = self.table(table)?;
        let sp = strs(t, col::SPLIT)?;
        let me = strs(t, col::METRIC)?;
        let va = nums(t, col::VALUE)?;
        let filter = match rows {
            Rows::All => None,
            Rows::Source(s) => Some((strs(t, col::SOURCE)?, s.as_str())),
            Rows::Level(l) => Some((strs(t, col::LEVEL)?, l)),
        };
        (0..sp.len())
            .find(|&i| {
                sp[i] == split.as_str()
                    && me[i] == metric
                    && filter.as_ref().is_none_or(|(c, want)| c[i] == *want)
            })
            .map(|i| va[i])
    }
}

/// A finished (or partly finished) experiment.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// Experiment name.
    pub name: String,
    /// `<work_dir>/<experiment>`.
    pub dir: PathBuf,
    /// Variants in manifest order.
    pub variants: Vec<RunData>,
}

impl Experiment {
    /// Read `<dir>/experiment.json` and every run directory it lists.
    pub fn load(dir: &Path) -> Result<Experiment> {
        let path = dir.join("experiment.json");
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Usage(format!(
                    "{} not found: run the experiment first (`wsss run MANIFEST`)",
                    path.display()
                ))
            } else {
                Error::io(&path, e)
            }
        })?;
        let report: Report = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Usage(format!("{}: not an experiment record: {e}", path.display()))
        })?;
        let mut variants = Vec::new();
        for v in &report.variants {
            // run_dir was recorded relative to where `wsss run` ran; the folder name is stable.
            let run_dir = v
                .run_dir
                .file_name()
                .map(|n| dir.join(n))
                .unwrap_or_else(|| v.run_dir.clone());
            variants.push(load_run(&v.id, &v.hash, &run_dir, v.error.clone())?);
        }
        Ok(Experiment {
            name: report.experiment,
            dir: dir.to_path_buf(),
            variants,
        })
    }

    /// Config keys whose values differ between variants (the swept parameters), in key order.
    pub fn varying_keys(&self) -> Vec<String> {
        varying(self.variants.iter().map(|v| &v.config))
    }
}

/// Keys whose values differ across configs (a key missing in some config counts as differing).
pub fn varying<'a>(configs: impl Iterator<Item = &'a BTreeMap<String, String>>) -> Vec<String> {
    let configs: Vec<_> = configs.collect();
    let keys: BTreeSet<&String> = configs.iter().flat_map(|c| c.keys()).collect();
    keys.into_iter()
        .filter(|k| !matches!(k.as_str(), "name" | "description"))
        .filter(|k| {
            let vals: BTreeSet<Option<&String>> = configs.iter().map(|c| c.get(*k)).collect();
            vals.len() > 1
        })
        .cloned()
        .collect()
}

fn load_run(id: &str, hash: &str, run_dir: &Path, error: Option<String>) -> Result<RunData> {
    let config_path = run_dir.join("config.toml");
    let config_text = std::fs::read_to_string(&config_path).unwrap_or_default();
    // defaults are filled in only for a config that was read: a run without one stays blank
    let config = match toml::from_str::<toml::Table>(&config_text) {
        Ok(t) if !config_text.trim().is_empty() => with_defaults(flatten(&t)),
        _ => BTreeMap::new(),
    };
    let mut stage_keys = BTreeMap::new();
    let mut dataset_root = None;
    if let Ok(bytes) = std::fs::read(run_dir.join("run.json")) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            for s in v["stages"].as_array().into_iter().flatten() {
                if let (Some(n), Some(k)) = (s["stage"].as_str(), s["key"].as_str()) {
                    stage_keys.insert(n.to_string(), k.to_string());
                }
            }
            dataset_root = v["dataset"]["root"].as_str().map(PathBuf::from);
        }
    }
    let mut summaries = BTreeMap::new();
    let mut tables = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(run_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stage) = name.strip_suffix("_summary.json") {
                if let Ok(v) = std::fs::read(e.path())
                    .map_err(|_| ())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|_| ()))
                {
                    summaries.insert(stage.to_string(), v);
                }
            }
        }
    }
    for t in Table::ALL {
        let p = run_dir.join(format!("{}.parquet", t.stem()));
        if p.exists() {
            tables.insert(t, table::read_parquet(&p)?);
        }
    }
    let predictions = tables
        .get(&Table::Predictions)
        .and_then(parse_predictions)
        .unwrap_or_default();
    Ok(RunData {
        id: id.into(),
        hash: hash.into(),
        run_dir: run_dir.to_path_buf(),
        error,
        config,
        config_text,
        stage_keys,
        dataset_root,
        summaries,
        tables,
        predictions,
    })
}

/// A run's flattened config completed with the defaults of the keys it leaves out (a saved
/// config omits keys at their default so older cache keys stay valid): a sweep over
/// `segmentation.stain_augment_strength = [0.05, 0.2]` shows `0.05`, not an empty cell.
fn with_defaults(mut config: BTreeMap<String, String>) -> BTreeMap<String, String> {
    static DEFAULTS: std::sync::LazyLock<BTreeMap<String, String>> =
        std::sync::LazyLock::new(|| match crate::config::schema::default_values() {
            toml::Value::Table(t) => flatten(&t),
            _ => BTreeMap::new(),
        });
    for (k, v) in DEFAULTS.iter() {
        if k != "name" {
            config.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    config
}

/// Flatten nested TOML tables to dotted keys; values as TOML writes them (strings unquoted).
pub fn flatten(t: &toml::Table) -> BTreeMap<String, String> {
    fn go(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, String>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(sub) => go(&key, sub, out),
                toml::Value::String(s) => {
                    out.insert(key, s.clone());
                }
                other => {
                    out.insert(key, other.to_string());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    go("", t, &mut out);
    out
}

/// A column as strings (numbers and booleans formatted); `None` if absent.
pub fn strs(df: &DataFrame, name: &str) -> Option<Vec<String>> {
    let c = df.column(name).ok()?;
    let s = c.as_materialized_series();
    Some(
        (0..s.len())
            .map(|i| match s.get(i) {
                Ok(AnyValue::String(v)) => v.to_string(),
                Ok(AnyValue::StringOwned(v)) => v.to_string(),
                Ok(AnyValue::Null) | Err(_) => String::new(),
                Ok(v) => v.to_string(),
            })
            .collect(),
    )
}

/// A column as `f64` (booleans as 0/1, nulls and non-numbers as NaN); `None` if absent.
pub fn nums(df: &DataFrame, name: &str) -> Option<Vec<f64>> {
    let c = df.column(name).ok()?;
    let s = c.as_materialized_series();
    Some(
        (0..s.len())
            .map(|i| match s.get(i) {
                Ok(AnyValue::Boolean(b)) => f64::from(u8::from(b)),
                Ok(v) => v.extract::<f64>().unwrap_or(f64::NAN),
                Err(_) => f64::NAN,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_out_defaults_are_filled_in() {
        let mut c = BTreeMap::new();
        c.insert(
            "segmentation.stain_augment_strength".to_string(),
            "0.2".to_string(),
        );
        c.insert("name".to_string(), "x".to_string());
        let f = with_defaults(c);
        assert_eq!(f["segmentation.stain_augment_strength"], "0.2");
        assert_eq!(f["train.stain_augment_strength"], "0.05");
        assert_eq!(f["segmentation.warmup_epochs"], "0");
        assert_eq!(f["precision"], "auto");
        assert_eq!(f["name"], "x");
        assert!(!f.keys().any(|k| k.starts_with("launcher.")));
    }

    #[test]
    fn flatten_nested_tables() {
        let t: toml::Table = toml::from_str(
            "name = \"x\"\n[cam]\nthreshold = 0.7\nmethod = \"cam\"\n[a.b]\nc = [1, 2]\n",
        )
        .unwrap();
        let f = flatten(&t);
        assert_eq!(f["cam.threshold"], "0.7");
        assert_eq!(f["cam.method"], "cam");
        assert_eq!(f["a.b.c"], "[1, 2]");
        assert_eq!(f["name"], "x");
    }

    #[test]
    fn varying_keys_ignore_equal_values() {
        let a: BTreeMap<String, String> =
            [("x".into(), "1".into()), ("y".into(), "2".into())].into();
        let b: BTreeMap<String, String> =
            [("x".into(), "1".into()), ("y".into(), "3".into())].into();
        let c: BTreeMap<String, String> = [("x".into(), "1".into())].into();
        assert_eq!(varying([&a, &b].into_iter()), vec!["y".to_string()]);
        assert_eq!(varying([&a, &c].into_iter()), vec!["y".to_string()]);
        assert!(varying([&a, &a].into_iter()).is_empty());
    }
}
