//! The experiment's tables, built from its run directories (all long or one-row-per-thing, all
//! with a `variant` column, so variants stack and experiments join):
//!
//! | table | one row per |
//! |---|---|
//! | `summary` | variant: swept parameters, key held-out metrics, compute time |
//! | `metrics` | variant × stage × split × metric × class × epoch (`epoch` null for final values) |
//! | `curves` | the per-epoch rows of `metrics` (training curves) |
//! | `images` | variant × image: class, prediction, probabilities, CAM / pseudo-label / segmentation IoU |
//! | `configs` | variant: the resolved config flattened to `section.key` columns |
//! | `misclassified` | variant × misclassified image, with its confidence and patient |
//! | `patient_errors` | variant × split × patient: images, errors, error rate |
//! | `patient_segmentation` | variant × split × patient: images, mean per-image mIoU of the segmenter and of the pseudo labels, predicted foreground share |
//! | `summary_seeds` | group of variants that differ only in seeds: n, mean and std of each metric |

use std::collections::{BTreeMap, BTreeSet};

use polars::prelude::*;

use super::data::{nums, strs, Experiment, Prediction, Rows, RunData};
use crate::data::Split;
use crate::error::Result;
use crate::table::schema::{col, metric};
use crate::table::{Source, Table, TableBuilder};

/// One key metric of the summary: its column, what it means, where it is read, and whether a
/// run reported on `valid` shows it on `test` too.
#[derive(Debug, Clone, Copy)]
pub struct KeyMetric {
    /// Summary column.
    pub column: &'static str,
    /// Meaning (the report's column tooltip).
    pub meaning: &'static str,
    /// The long table it is read from.
    pub table: Table,
    /// Its `metric` name there.
    pub metric: &'static str,
    /// Which rows (source, classifier level).
    pub rows: KeyRows,
    /// Also shown on the test split (as `test_<column>`).
    pub on_test: bool,
}

/// Rows of a [`KeyMetric`]: like [`Rows`], with the classifier level resolved per run.
#[derive(Debug, Clone, Copy)]
pub enum KeyRows {
    /// No other column.
    All,
    /// One `seg_metrics` source.
    Source(Source),
    /// The run's classifier level ([`RunData::classify_level`]).
    ClassifyLevel,
}

const fn key(
    column: &'static str,
    meaning: &'static str,
    table: Table,
    metric: &'static str,
    rows: KeyRows,
    on_test: bool,
) -> KeyMetric {
    KeyMetric {
        column,
        meaning,
        table,
        metric,
        rows,
        on_test,
    }
}

/// Key metrics of the summary, in column order. A new metric is one line here.
pub const KEY_METRICS: &[KeyMetric] = &[
    key(
        "accuracy",
        "image-level classification accuracy",
        Table::ClassifyMetrics,
        metric::ACCURACY,
        KeyRows::ClassifyLevel,
        true,
    ),
    key(
        "f1",
        "F1 of the positive class",
        Table::ClassifyMetrics,
        metric::F1,
        KeyRows::ClassifyLevel,
        false,
    ),
    key(
        "auc",
        "ROC AUC of the positive class",
        Table::ClassifyMetrics,
        metric::AUC,
        KeyRows::ClassifyLevel,
        false,
    ),
    key(
        "cam_auc",
        "area under the CAM mIoU-vs-threshold curve",
        Table::CamQuality,
        metric::MIOU_AUC,
        KeyRows::All,
        false,
    ),
    key(
        "cam_best_threshold",
        "threshold with the best CAM mIoU",
        Table::CamQuality,
        metric::BEST_THRESHOLD,
        KeyRows::All,
        false,
    ),
    key(
        "pseudo_miou",
        "pseudo-label mIoU",
        Table::PseudoMetrics,
        metric::MIOU,
        KeyRows::All,
        true,
    ),
    key(
        "seg_miou",
        "segmentation mIoU (DeepLab V3+)",
        Table::SegMetrics,
        metric::MIOU,
        KeyRows::Source(Source::Segmenter),
        true,
    ),
    key(
        "seg_dice",
        "segmentation Dice of the foreground",
        Table::SegMetrics,
        metric::DICE_FOREGROUND,
        KeyRows::Source(Source::Segmenter),
        true,
    ),
    key(
        "pseudo_boundary_f",
        "pseudo-label boundary F-score (mean over classes)",
        Table::SegMetrics,
        metric::BOUNDARY_F,
        KeyRows::Source(Source::Pseudo),
        true,
    ),
    key(
        "seg_boundary_f",
        "segmentation boundary F-score (mean over classes)",
        Table::SegMetrics,
        metric::BOUNDARY_F,
        KeyRows::Source(Source::Segmenter),
        true,
    ),
    key(
        "seg_boundary_iou",
        "segmentation Boundary IoU (mean over classes)",
        Table::SegMetrics,
        metric::BOUNDARY_IOU,
        KeyRows::Source(Source::Segmenter),
        true,
    ),
];

/// Prefix of the summary's columns scored on the `test` split when the run is reported on
/// `valid` (where its choices were made).
pub const TEST_PREFIX: &str = "test_";

/// One row of the summary.
#[derive(Debug, Clone)]
pub struct SummaryRow {
    /// Experiment name.
    pub experiment: String,
    /// Variant id.
    pub variant: String,
    /// Config hash.
    pub hash: String,
    /// `ok`, `failed`, or `collapsed` (finished, but the segmenter predicts one class on
    /// nearly every pixel of the validation images: its scores measure a collapse).
    pub status: String,
    /// The split the metrics are on.
    pub split: String,
    /// Metric columns by name ([`KEY_METRICS`] then `<baseline>_miou`), NaN where absent.
    pub metrics: BTreeMap<String, f64>,
    /// Seconds of compute over the stages (as measured when each ran, cached or not).
    pub compute_s: f64,
    /// The resolved config, flattened.
    pub config: BTreeMap<String, String>,
    /// Run directory.
    pub run_dir: String,
}

/// The summary row of one run.
pub fn summary_row(exp: &str, r: &RunData) -> SummaryRow {
    let split = r.eval_split();
    let mut m = BTreeMap::new();
    let rows = |k: &KeyMetric| match k.rows {
        KeyRows::All => Rows::All,
        KeyRows::Source(s) => Rows::Source(s),
        KeyRows::ClassifyLevel => Rows::Level(r.classify_level()),
    };
    for k in KEY_METRICS {
        let v = r.metric(k.table, split, k.metric, rows(k));
        m.insert(k.column.to_string(), v.unwrap_or(f64::NAN));
    }
    let baseline = |s: Split, source: Source| {
        r.metric(Table::SegMetrics, s, metric::MIOU, Rows::Source(source))
            .unwrap_or(f64::NAN)
    };
    for source in baseline_sources(r) {
        m.insert(format!("{source}_miou"), baseline(split, source));
    }
    // A run with a test split besides the split it is reported on (choices were made on
    // `valid`) shows the test numbers beside, as `test_<metric>` columns.
    if split != Split::Test && r.has_split(Split::Test) {
        for k in KEY_METRICS.iter().filter(|k| k.on_test) {
            let v = r.metric(k.table, Split::Test, k.metric, rows(k));
            m.insert(format!("{TEST_PREFIX}{}", k.column), v.unwrap_or(f64::NAN));
        }
        for source in baseline_sources(r) {
            m.insert(
                format!("{TEST_PREFIX}{source}_miou"),
                baseline(Split::Test, source),
            );
        }
    }
    let compute_s = ["classify", "cam", "pseudo", "segment", "evaluate"]
        .iter()
        .filter_map(|st| r.summary_num(st, "seconds"))
        .sum();
    SummaryRow {
        experiment: exp.into(),
        variant: r.id.clone(),
        hash: r.hash.clone(),
        status: if r.error.is_some() {
            "failed"
        } else if r.collapsed() {
            "collapsed"
        } else {
            "ok"
        }
        .into(),
        split: split.to_string(),
        metrics: m,
        compute_s,
        config: r.config.clone(),
        run_dir: r.run_dir.display().to_string(),
    }
}

/// Sources of `seg_metrics` other than the segmenter and the pseudo labels: baselines scored
/// on the same images.
pub fn baseline_sources(r: &RunData) -> Vec<Source> {
    let Some(t) = r.table(Table::SegMetrics) else {
        return vec![];
    };
    let names = strs(t, col::SOURCE).unwrap_or_default();
    Source::ALL
        .into_iter()
        .filter(|s| s.is_baseline() && names.iter().any(|n| n == s.as_str()))
        .collect()
}

/// Variants whose segmenter collapsed (status `collapsed`), for the report's warning.
pub fn collapsed_variants(rows: &[SummaryRow]) -> Vec<&str> {
    rows.iter()
        .filter(|r| r.status == "collapsed")
        .map(|r| r.variant.as_str())
        .collect()
}

/// Metric column names present in any row, in display order.
pub fn metric_columns(rows: &[SummaryRow]) -> Vec<String> {
    let mut cols: Vec<String> = KEY_METRICS.iter().map(|k| k.column.to_string()).collect();
    let extra: BTreeSet<&String> = rows
        .iter()
        .flat_map(|r| r.metrics.keys())
        .filter(|k| !KEY_METRICS.iter().any(|m| m.column == k.as_str()))
        .collect();
    cols.extend(extra.into_iter().cloned());
    cols
}

/// Metric columns that have a finite value in some row (what a table should show).
pub fn present_metric_columns(rows: &[SummaryRow]) -> Vec<String> {
    metric_columns(rows)
        .into_iter()
        .filter(|m| {
            rows.iter()
                .any(|r| r.metrics.get(m).is_some_and(|v| v.is_finite()))
        })
        .collect()
}

/// The summary as a table: identity, the given parameter columns, metrics, time, run dir.
pub fn summary_frame(rows: &[SummaryRow], params: &[String]) -> Result<DataFrame> {
    let col = |f: &dyn Fn(&SummaryRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let mut b = TableBuilder::new()
        .str("experiment", col(&|r| r.experiment.clone()))
        .str("variant", col(&|r| r.variant.clone()))
        .str("hash", col(&|r| r.hash.clone()))
        .str("status", col(&|r| r.status.clone()));
    for p in params {
        b = b.str(p, col(&|r| r.config.get(p).cloned().unwrap_or_default()));
    }
    b = b.str("split", col(&|r| r.split.clone()));
    for m in metric_columns(rows) {
        b = b.f64(
            &m,
            rows.iter()
                .map(|r| r.metrics.get(&m).copied().unwrap_or(f64::NAN))
                .collect(),
        );
    }
    b.f64("compute_s", rows.iter().map(|r| r.compute_s).collect())
        .str("run_dir", col(&|r| r.run_dir.clone()))
        .build()
}

/// Whether a config key is a seed (`train.seed`, `split.seed`).
pub fn is_seed(key: &str) -> bool {
    key == "seed" || key.ends_with(".seed")
}

/// Variants that differ only in seeds, with the mean and sample standard deviation of each
/// metric over them.
#[derive(Debug, Clone)]
pub struct SeedGroup {
    /// The non-seed parameter values the group shares.
    pub params: Vec<(String, String)>,
    /// Number of variants (seeds) in the group.
    pub n: usize,
    /// Mean per metric (over finite values).
    pub mean: BTreeMap<String, f64>,
    /// Sample standard deviation per metric (NaN with fewer than two values).
    pub std: BTreeMap<String, f64>,
}

/// Group the summary rows by their non-seed parameters (in first-seen order); rows with one
/// config hash (the same resolved configuration) count once.
pub fn seed_groups(rows: &[SummaryRow], params: &[String]) -> Vec<SeedGroup> {
    type Params = Vec<(String, String)>;
    let mut groups: Vec<(Params, Vec<&SummaryRow>)> = Vec::new();
    // Collapsed runs count: leaving them out would hide the failure in the mean.
    for r in rows.iter().filter(|r| r.status != "failed") {
        let sig = signature(r, params);
        match groups.iter_mut().find(|g| g.0 == sig) {
            // The same resolved config twice (another experiment's copy of a run) is one
            // replicate, not two.
            Some(g) if !r.hash.is_empty() && g.1.iter().any(|m| m.hash == r.hash) => {}
            Some(g) => g.1.push(r),
            None => groups.push((sig, vec![r])),
        }
    }
    let metrics = metric_columns(rows);
    groups
        .into_iter()
        .map(|(params, members)| {
            let mut mean = BTreeMap::new();
            let mut std = BTreeMap::new();
            for m in &metrics {
                let v: Vec<f64> = members
                    .iter()
                    .filter_map(|r| r.metrics.get(m).copied())
                    .filter(|x| x.is_finite())
                    .collect();
                let n = v.len() as f64;
                let mu = if v.is_empty() {
                    f64::NAN
                } else {
                    v.iter().sum::<f64>() / n
                };
                let sd = if v.len() < 2 {
                    f64::NAN
                } else {
                    (v.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / (n - 1.0)).sqrt()
                };
                mean.insert(m.clone(), mu);
                std.insert(m.clone(), sd);
            }
            SeedGroup {
                params,
                n: members.len(),
                mean,
                std,
            }
        })
        .collect()
}

/// The non-seed parameter values of a summary row: what its seed group shares.
fn signature(r: &SummaryRow, params: &[String]) -> Vec<(String, String)> {
    params
        .iter()
        .filter(|k| !is_seed(k))
        .map(|k| (k.clone(), r.config.get(k).cloned().unwrap_or_default()))
        .collect()
}

/// The seed groups as a table: parameters, `n`, then `<metric>_mean`, `<metric>_std`.
pub fn seed_frame(groups: &[SeedGroup], rows: &[SummaryRow]) -> Result<DataFrame> {
    let mut b = TableBuilder::new();
    if let Some(first) = groups.first() {
        for (i, (k, _)) in first.params.iter().enumerate() {
            b = b.str(k, groups.iter().map(|g| g.params[i].1.clone()).collect());
        }
    }
    b = b.u32("n", groups.iter().map(|g| g.n as u32).collect());
    for m in metric_columns(rows) {
        b = b
            .f64(
                &format!("{m}_mean"),
                groups
                    .iter()
                    .map(|g| g.mean.get(&m).copied().unwrap_or(f64::NAN))
                    .collect(),
            )
            .f64(
                &format!("{m}_std"),
                groups
                    .iter()
                    .map(|g| g.std.get(&m).copied().unwrap_or(f64::NAN))
                    .collect(),
            );
    }
    b.build()
}

/// Long-format rows of `metrics` / `curves`.
#[derive(Default)]
struct Long {
    variant: Vec<String>,
    stage: Vec<String>,
    split: Vec<String>,
    metric: Vec<String>,
    class: Vec<Option<String>>,
    epoch: Vec<Option<u32>>,
    value: Vec<f64>,
}

impl Long {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        variant: &str,
        stage: &str,
        split: &str,
        metric: &str,
        epoch: Option<u32>,
        value: f64,
    ) {
        let (metric, class) = split_class(metric);
        self.variant.push(variant.into());
        self.stage.push(stage.into());
        self.split.push(split.into());
        self.metric.push(metric);
        self.class.push(class);
        self.epoch.push(epoch);
        self.value.push(value);
    }

    fn frame(self) -> Result<DataFrame> {
        Ok(DataFrame::new_infer_height(vec![
            Column::new("variant".into(), self.variant),
            Column::new("stage".into(), self.stage),
            Column::new("split".into(), self.split),
            Column::new("metric".into(), self.metric),
            Column::new("class".into(), self.class),
            Column::new("epoch".into(), self.epoch),
            Column::new("value".into(), self.value),
        ])?)
    }
}

/// `iou_foreground` → (`iou`, `foreground`); metrics without a class suffix keep `None`.
fn split_class(metric: &str) -> (String, Option<String>) {
    for class in ["background", "foreground"] {
        if let Some(m) = metric.strip_suffix(&format!("_{class}")) {
            return (m.to_string(), Some(class.to_string()));
        }
    }
    (metric.to_string(), None)
}

/// Append the rows of a `(split, [filter,] metric, value)` stage table.
fn add_metric_table(
    long: &mut Long,
    r: &RunData,
    table: Table,
    stage: &str,
    prefix_col: Option<(&str, &str)>,
) {
    let Some(t) = r.table(table) else { return };
    let (Some(sp), Some(me), Some(va)) = (
        strs(t, col::SPLIT),
        strs(t, col::METRIC),
        nums(t, col::VALUE),
    ) else {
        return;
    };
    let extra = prefix_col.and_then(|(c, _)| strs(t, c));
    for i in 0..sp.len() {
        let metric = match (&extra, prefix_col) {
            // classify_metrics: image-level metrics keep their name, patient-level get a prefix
            (Some(c), Some((_, keep))) if c[i] != keep => format!("{}_{}", c[i], me[i]),
            _ => me[i].clone(),
        };
        long.push(&r.id, stage, &sp[i], &metric, None, va[i]);
    }
}

/// Append per-epoch rows of a history table: `columns` maps a column to (split, metric).
fn add_history(
    long: &mut Long,
    r: &RunData,
    table: Table,
    stage: &str,
    columns: &[(&str, &str, &str)],
) {
    let Some(t) = r.table(table) else { return };
    let Some(ep) = nums(t, "epoch") else { return };
    for (column, split, metric) in columns {
        if let Some(v) = nums(t, column) {
            for (e, x) in ep.iter().zip(v) {
                long.push(&r.id, stage, split, metric, Some(*e as u32), x);
            }
        }
    }
}

/// The long `metrics` table (final values and per-epoch curves) and its per-epoch subset.
pub fn metrics(exp: &Experiment) -> Result<(DataFrame, DataFrame)> {
    let mut fin = Long::default();
    let mut cur = Long::default();
    for r in &exp.variants {
        add_metric_table(
            &mut fin,
            r,
            Table::ClassifyMetrics,
            "classify",
            Some((col::LEVEL, r.classify_level())),
        );
        add_metric_table(&mut fin, r, Table::CamQuality, "cam", None);
        add_metric_table(&mut fin, r, Table::PseudoMetrics, "pseudo", None);
        if let Some(t) = r.table(Table::SegMetrics) {
            let (Some(sp), Some(so), Some(me), Some(va)) = (
                strs(t, col::SPLIT),
                strs(t, col::SOURCE),
                strs(t, col::METRIC),
                nums(t, col::VALUE),
            ) else {
                continue;
            };
            for i in 0..sp.len() {
                let stage = match so[i].as_str() {
                    s if s == Source::Segmenter.as_str() => "segment".to_string(),
                    // the pseudo labels are already in from their own stage
                    s if s == Source::Pseudo.as_str() => continue,
                    other => format!("baseline:{other}"),
                };
                fin.push(&r.id, &stage, &sp[i], &me[i], None, va[i]);
            }
        }
        add_history(
            &mut cur,
            r,
            Table::History,
            "classify",
            &[
                ("train_loss", "train", "loss"),
                ("valid_loss", "valid", "loss"),
                ("train_accuracy", "train", "accuracy"),
                ("valid_accuracy", "valid", "accuracy"),
                ("valid_balanced_accuracy", "valid", "balanced_accuracy"),
                ("valid_auc", "valid", "auc"),
                ("lr", "train", "lr"),
            ],
        );
        add_history(
            &mut cur,
            r,
            Table::SegmentHistory,
            "segment",
            &[
                ("loss", "train", "loss"),
                ("label_accuracy", "train", "label_accuracy"),
                ("loss_background", "train", "loss_background"),
                ("loss_foreground", "train", "loss_foreground"),
                ("label_foreground", "train", "label_foreground"),
                ("predicted_foreground", "train", "predicted_foreground"),
                ("grad_norm", "train", "grad_norm"),
                ("valid_agreement_miou", "valid", "agreement_miou"),
                (
                    "valid_predicted_foreground",
                    "valid",
                    "predicted_foreground",
                ),
                ("lr", "train", "lr"),
            ],
        );
    }
    let curves = cur.frame()?;
    let mut all = fin.frame()?;
    all.vstack_mut(&curves)?;
    Ok((all, curves))
}

/// The per-image table of every variant.
pub fn images(exp: &Experiment) -> Result<DataFrame> {
    struct Row<'a> {
        variant: &'a str,
        p: &'a Prediction,
        scores: [f64; 5],
    }
    let mut rows = Vec::new();
    for r in &exp.variants {
        let per = [
            r.per_image(Table::PseudoImages, "iou_foreground"),
            r.per_image(Table::PseudoImages, "fg_fraction"),
            r.per_image(Table::PseudoImages, metric::MIOU),
            r.per_image(Table::SegImages, "iou_foreground"),
            r.per_image(Table::SegImages, metric::MIOU),
        ];
        for p in &r.predictions {
            rows.push(Row {
                variant: &r.id,
                p,
                scores: per
                    .each_ref()
                    .map(|m| m.get(&p.id).copied().unwrap_or(f64::NAN)),
            });
        }
    }
    let s = |f: for<'r> fn(&'r Row<'r>) -> &'r str| {
        rows.iter().map(|r| f(r).to_string()).collect::<Vec<_>>()
    };
    let x = |k: usize| rows.iter().map(|r| r.scores[k]).collect::<Vec<_>>();
    Ok(DataFrame::new_infer_height(vec![
        Column::new("variant".into(), s(|r| r.variant)),
        Column::new("id".into(), s(|r| &r.p.id)),
        Column::new("patient".into(), s(|r| &r.p.patient)),
        Column::new("class".into(), s(|r| &r.p.class)),
        Column::new("split".into(), s(|r| &r.p.split)),
        Column::new("predicted".into(), s(|r| &r.p.predicted)),
        Column::new(
            "p_positive".into(),
            rows.iter().map(|r| r.p.p_positive).collect::<Vec<_>>(),
        ),
        Column::new(
            "correct".into(),
            rows.iter().map(|r| r.p.correct).collect::<Vec<_>>(),
        ),
        Column::new("cam_iou".into(), x(0)),
        Column::new("pseudo_fg_fraction".into(), x(1)),
        Column::new("pseudo_miou".into(), x(2)),
        Column::new("seg_iou".into(), x(3)),
        Column::new("seg_miou".into(), x(4)),
    ])?)
}

/// The resolved config of every variant, flattened to one column per key.
pub fn configs(exp: &Experiment) -> Result<DataFrame> {
    let keys: BTreeSet<&String> = exp.variants.iter().flat_map(|v| v.config.keys()).collect();
    let mut b = TableBuilder::new().str(
        "variant",
        exp.variants.iter().map(|v| v.id.clone()).collect(),
    );
    for k in keys {
        b = b.str(
            k,
            exp.variants
                .iter()
                .map(|v| v.config.get(k).cloned().unwrap_or_default())
                .collect(),
        );
    }
    b.build()
}

/// One misclassified image of one variant.
#[derive(Debug, Clone)]
pub struct Miss {
    /// Variant id.
    pub variant: String,
    /// Split.
    pub split: String,
    /// Image id.
    pub id: String,
    /// Patient.
    pub patient: String,
    /// True class.
    pub class: String,
    /// Predicted class.
    pub predicted: String,
    /// Probability of the predicted class.
    pub confidence: f64,
    /// Probability of the positive class.
    pub p_positive: f64,
}

/// Every misclassified image of every variant, most confident errors first within a variant.
pub fn misses(exp: &Experiment) -> Vec<Miss> {
    let mut out = Vec::new();
    for r in &exp.variants {
        let pos = r.positive_class().unwrap_or_default();
        let mut mine: Vec<Miss> = r
            .predictions
            .iter()
            .filter(|p| !p.correct)
            .map(|p| Miss {
                variant: r.id.clone(),
                split: p.split.clone(),
                id: p.id.clone(),
                patient: p.patient.clone(),
                class: p.class.clone(),
                predicted: p.predicted.clone(),
                confidence: p.confidence(&pos),
                p_positive: p.p_positive,
            })
            .collect();
        mine.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        out.extend(mine);
    }
    out
}

/// The misclassified images as a table.
pub fn misclassified(misses: &[Miss]) -> Result<DataFrame> {
    let c = |f: &dyn Fn(&Miss) -> String| misses.iter().map(f).collect::<Vec<_>>();
    TableBuilder::new()
        .str("variant", c(&|m| m.variant.clone()))
        .str("split", c(&|m| m.split.clone()))
        .str("id", c(&|m| m.id.clone()))
        .str("patient", c(&|m| m.patient.clone()))
        .str("class", c(&|m| m.class.clone()))
        .str("predicted", c(&|m| m.predicted.clone()))
        .f64("confidence", misses.iter().map(|m| m.confidence).collect())
        .f64("p_positive", misses.iter().map(|m| m.p_positive).collect())
        .build()
}

/// Errors per variant, split and patient (every patient listed, also those without errors).
pub fn patient_errors(exp: &Experiment) -> Result<DataFrame> {
    #[derive(Default)]
    struct Group {
        images: u32,
        errors: u32,
        p_sum: f64,
    }
    // (variant, split, patient) in variant order, patients sorted within a variant
    let mut rows: Vec<([String; 3], Group)> = Vec::new();
    for r in &exp.variants {
        let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
        for p in &r.predictions {
            let g = groups
                .entry((p.split.clone(), p.patient.clone()))
                .or_default();
            g.images += 1;
            g.errors += u32::from(!p.correct);
            g.p_sum += p.p_positive;
        }
        rows.extend(
            groups
                .into_iter()
                .map(|((s, p), g)| ([r.id.clone(), s, p], g)),
        );
    }
    let key = |k: usize| rows.iter().map(|r| r.0[k].clone()).collect::<Vec<_>>();
    let n = |r: &([String; 3], Group)| f64::from(r.1.images);
    TableBuilder::new()
        .str("variant", key(0))
        .str("split", key(1))
        .str("patient", key(2))
        .u32("images", rows.iter().map(|r| r.1.images).collect())
        .u32("errors", rows.iter().map(|r| r.1.errors).collect())
        .f64(
            "error_rate",
            rows.iter().map(|r| f64::from(r.1.errors) / n(r)).collect(),
        )
        .f64(
            "mean_p_positive",
            rows.iter().map(|r| r.1.p_sum / n(r)).collect(),
        )
        .build()
}

/// Per patient of every variant's segmentation, from its `seg_images` table: the images
/// segmented (`images`), the mean over those with a score of each image's mIoU — the
/// segmenter's (`seg_miou`) and its pseudo labels' (`pseudo_miou`; images without a mask have
/// none) — and the mean over all of them of the share of pixels the segmenter calls foreground
/// (`seg_fg_fraction`: a patient whose tiles are all called foreground shows 1 here). Means of
/// per-image scores, not pooled pixels, so every tile weighs the same; a patient of two tiles
/// is as visible as one of twenty. NaN where none of the patient's images has a score.
pub fn patient_segmentation(exp: &Experiment) -> Result<DataFrame> {
    #[derive(Default)]
    struct Group {
        images: u32,
        sums: [f64; 3],
        counts: [u32; 3],
    }
    let mut rows: Vec<([String; 3], Group)> = Vec::new();
    for r in &exp.variants {
        let Some(t) = r.table(Table::SegImages) else {
            continue;
        };
        let (Some(split), Some(patient)) = (strs(t, "split"), strs(t, "patient")) else {
            continue;
        };
        let cols = ["miou", "pseudo_miou", "fg_fraction"].map(|c| nums(t, c).unwrap_or_default());
        let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
        for (i, (s, p)) in split.into_iter().zip(patient).enumerate() {
            let g = groups.entry((s, p)).or_default();
            g.images += 1;
            for (k, c) in cols.iter().enumerate() {
                if let Some(v) = c.get(i).copied().filter(|v| v.is_finite()) {
                    g.sums[k] += v;
                    g.counts[k] += 1;
                }
            }
        }
        rows.extend(
            groups
                .into_iter()
                .map(|((s, p), g)| ([r.id.clone(), s, p], g)),
        );
    }
    let key = |k: usize| rows.iter().map(|r| r.0[k].clone()).collect::<Vec<_>>();
    let mean = |k: usize| {
        rows.iter()
            .map(|r| {
                if r.1.counts[k] == 0 {
                    f64::NAN
                } else {
                    r.1.sums[k] / f64::from(r.1.counts[k])
                }
            })
            .collect::<Vec<_>>()
    };
    TableBuilder::new()
        .str("variant", key(0))
        .str("split", key(1))
        .str("patient", key(2))
        .u32("images", rows.iter().map(|r| r.1.images).collect())
        .f64("seg_miou", mean(0))
        .f64("pseudo_miou", mean(1))
        .f64("seg_fg_fraction", mean(2))
        .build()
}

/// One patient of one seed group in the report's per-patient segmentation table.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientSegRow {
    /// The group's non-seed parameter values.
    pub params: Vec<(String, String)>,
    /// Split.
    pub split: String,
    /// Patient.
    pub patient: String,
    /// Images of the patient scored (per variant).
    pub images: u32,
    /// Seeds (variants) averaged.
    pub n: usize,
    /// Mean over seeds of the patient's mean per-image segmenter mIoU, and its sample std.
    pub seg_miou: (f64, f64),
    /// Mean over seeds of the patient's mean per-image pseudo-label mIoU.
    pub pseudo_miou: f64,
    /// Mean over seeds of the patient's mean predicted foreground share.
    pub seg_fg_fraction: f64,
}

/// The rows of [`patient_segmentation`] on the `valid` and `test` splits, averaged over the
/// seeds of each seed group (as [`seed_groups`]: failed runs left out, collapsed ones kept).
pub fn patient_seed_groups(
    rows: &[SummaryRow],
    params: &[String],
    per_patient: &DataFrame,
) -> Vec<PatientSegRow> {
    let s = |c| strs(per_patient, c).unwrap_or_default();
    let n = |c| nums(per_patient, c).unwrap_or_default();
    let (va, sp, pa, im) = (s("variant"), s("split"), s("patient"), n("images"));
    let (seg, pseudo, fg) = (n("seg_miou"), n("pseudo_miou"), n("seg_fg_fraction"));
    // variant -> its group; a resolved config met twice (same hash) counts once
    let mut seen = BTreeSet::new();
    let group_of: BTreeMap<&str, Vec<(String, String)>> = rows
        .iter()
        .filter(|r| r.status != "failed")
        .filter_map(|r| {
            let sig = signature(r, params);
            (r.hash.is_empty() || seen.insert((sig.clone(), r.hash.clone())))
                .then_some((r.variant.as_str(), sig))
        })
        .collect();
    type Key = (Vec<(String, String)>, String, String);
    let mut order: Vec<Key> = Vec::new();
    // images, then the per-seed values of seg_miou, pseudo_miou, seg_fg_fraction
    type Acc = (u32, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut acc: BTreeMap<Key, Acc> = BTreeMap::new();
    for i in 0..va.len() {
        let (Some(g), true) = (group_of.get(va[i].as_str()), sp[i] != "train") else {
            continue;
        };
        let k = (g.clone(), sp[i].clone(), pa[i].clone());
        let e = acc.entry(k.clone()).or_insert_with(|| {
            order.push(k);
            (0, vec![], vec![], vec![])
        });
        e.0 = im.get(i).copied().unwrap_or(0.0) as u32;
        for (v, col) in [(&mut e.1, &seg), (&mut e.2, &pseudo), (&mut e.3, &fg)] {
            if let Some(x) = col.get(i).copied().filter(|x| x.is_finite()) {
                v.push(x);
            }
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let std = |v: &[f64]| {
        if v.len() < 2 {
            return f64::NAN;
        }
        let m = mean(v);
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    };
    // groups in first-seen order, splits valid before test, patients as the table sorts them
    order.sort_by_key(|k| (k.1 != "valid", k.1.clone()));
    order
        .into_iter()
        .map(|k| {
            let e = &acc[&k];
            PatientSegRow {
                split: k.1.clone(),
                patient: k.2.clone(),
                params: k.0,
                images: e.0,
                n: e.1.len(),
                seg_miou: (mean(&e.1), std(&e.1)),
                pseudo_miou: mean(&e.2),
                seg_fg_fraction: mean(&e.3),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seed: &str, sup: &str, miou: f64) -> SummaryRow {
        SummaryRow {
            experiment: "e".into(),
            variant: format!("{sup}-{seed}"),
            hash: format!("{sup}-{seed}"),
            status: "ok".into(),
            split: "valid".into(),
            metrics: [("seg_miou".to_string(), miou)].into(),
            compute_s: 0.0,
            config: [
                ("train.seed".to_string(), seed.to_string()),
                ("segmentation.supervision".to_string(), sup.to_string()),
            ]
            .into(),
            run_dir: String::new(),
        }
    }

    #[test]
    fn seed_groups_mean_and_sample_std_by_hand() {
        let rows = vec![
            row("0", "pseudo", 0.4),
            row("0", "full", 0.6),
            row("1", "pseudo", 0.5),
            row("1", "full", 0.6),
            row("2", "pseudo", 0.6),
            row("2", "full", 0.6),
        ];
        let params = vec![
            "segmentation.supervision".to_string(),
            "train.seed".to_string(),
        ];
        let g = seed_groups(&rows, &params);
        assert_eq!(g.len(), 2);
        assert_eq!(
            g[0].params,
            vec![("segmentation.supervision".to_string(), "pseudo".to_string())]
        );
        assert_eq!(g[0].n, 3);
        assert!((g[0].mean["seg_miou"] - 0.5).abs() < 1e-12);
        // sample std of 0.4, 0.5, 0.6 is 0.1
        assert!((g[0].std["seg_miou"] - 0.1).abs() < 1e-12);
        assert!(g[1].std["seg_miou"].abs() < 1e-12);
        let df = seed_frame(&g, &rows).unwrap();
        assert_eq!(df.height(), 2);
        assert!(df.column("seg_miou_std").is_ok());
    }

    #[test]
    fn one_resolved_config_is_one_replicate() {
        // The same run twice (same config hash, e.g. a copy in another experiment) and a
        // second seed: n = 2, not 3.
        let rows = vec![
            row("0", "pseudo", 0.4),
            row("0", "pseudo", 0.4),
            row("1", "pseudo", 0.6),
        ];
        let g = seed_groups(&rows, &["train.seed".to_string()]);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].n, 2);
        assert!((g[0].std["seg_miou"] - 0.2f64.hypot(0.0) / 2f64.sqrt()).abs() < 1e-12);
    }

    /// Two seeds of one setting, one of another; patient A's tiles score 0.4 / 0.6 under seed
    /// 0 (mean 0.5) and 0.7 under seed 1; training patients stay out; a copy of a run (same
    /// hash) is not a third seed.
    #[test]
    fn patient_rows_average_tiles_then_seeds_by_hand() {
        let rows = vec![
            row("0", "pseudo", 0.0),
            row("1", "pseudo", 0.0),
            row("0", "full", 0.0),
            SummaryRow {
                variant: "copy".into(),
                ..row("1", "pseudo", 0.0)
            },
        ];
        let params = vec![
            "segmentation.supervision".to_string(),
            "train.seed".to_string(),
        ];
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let df = TableBuilder::new()
            .str(
                "variant",
                v(&[
                    "pseudo-0", "pseudo-0", "pseudo-1", "full-0", "copy", "pseudo-0",
                ]),
            )
            .str(
                "split",
                v(&["valid", "test", "valid", "valid", "valid", "train"]),
            )
            .str("patient", v(&["A", "B", "A", "A", "A", "C"]))
            .u32("images", vec![2, 1, 2, 2, 2, 5])
            .f64("seg_miou", vec![0.5, 0.3, 0.7, 0.9, 0.1, 0.2])
            .f64("pseudo_miou", vec![0.4, 0.2, 0.6, 1.0, 0.0, 0.1])
            .f64("seg_fg_fraction", vec![0.8, 1.0, 0.6, 0.5, 0.0, 0.3])
            .build()
            .unwrap();
        let g = patient_seed_groups(&rows, &params, &df);
        let sup = |s: &str| vec![("segmentation.supervision".to_string(), s.to_string())];
        assert_eq!(g.len(), 3, "{g:?}");
        assert_eq!(
            (g[0].params.clone(), g[0].patient.as_str()),
            (sup("pseudo"), "A")
        );
        assert_eq!((g[0].n, g[0].images), (2, 2));
        assert!((g[0].seg_miou.0 - 0.6).abs() < 1e-12);
        // sample std of 0.5 and 0.7
        assert!((g[0].seg_miou.1 - 0.2 / 2f64.sqrt()).abs() < 1e-12);
        assert!((g[0].pseudo_miou - 0.5).abs() < 1e-12);
        assert!((g[0].seg_fg_fraction - 0.7).abs() < 1e-12);
        assert_eq!((g[1].params.clone(), g[1].n), (sup("full"), 1));
        assert!(g[1].seg_miou.1.is_nan());
        // test rows after every valid row
        assert_eq!((g[2].split.as_str(), g[2].patient.as_str()), ("test", "B"));
    }

    #[test]
    fn class_suffix_is_split_off() {
        assert_eq!(
            split_class("iou_foreground"),
            ("iou".to_string(), Some("foreground".to_string()))
        );
        assert_eq!(
            split_class("dice_background"),
            ("dice".to_string(), Some("background".to_string()))
        );
        assert_eq!(split_class("miou"), ("miou".to_string(), None));
    }
}
