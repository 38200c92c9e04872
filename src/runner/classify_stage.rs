//! The `classify` stage: train the image-level classifier on the `train` patients, select the
//! epoch by validation balanced accuracy, and write the weights, the training history, the
//! metrics of every split (image and patient level) and the per-image predictions that the
//! misclassification analysis reads.

use crate::model::weights::FileIdentity;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::stage::{SliceInput, Stage, StageInput};
use crate::config::LabelLevel;
use crate::data::loader::{Images, View};
use crate::data::patches::{self, Patch};
use crate::data::protocol::Protocol;
use crate::data::registry::NegativeMasks;
use crate::data::Split;
use crate::error::Result;
use crate::metrics::classification::{by_patient, Metrics};
use crate::table::{self, TableBuilder};
use crate::train::classify::{self, Classifier, ClassifierConfig, Examples, Job, Predictions};
use crate::util::fs::write_json;

/// See the module docs.
pub struct ClassifyStage;

/// What the classify stage reads: the classifier's settings, the pretrained weights file's
/// identity (path, size, modification time), the classes, and — when window labels come from
/// the masks — what negative-class masks mean.
#[derive(Debug, Serialize)]
pub struct ClassifySlice {
    #[serde(flatten)]
    classifier: ClassifierConfig,
    pretrained_file: Option<FileIdentity>,
    classes: Vec<String>,
    positive: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    negative_masks: Option<NegativeMasks>,
}

/// Files the stage publishes into the run directory.
const PUBLISHED: &[&str] = &[
    "history.parquet",
    "history.csv",
    "classify_metrics.parquet",
    "classify_metrics.csv",
    "predictions.parquet",
    "predictions.csv",
    "classify_summary.json",
];

impl Stage for ClassifyStage {
    type Slice = ClassifySlice;
    fn name(&self) -> &'static str {
        "classify"
    }
    fn version(&self) -> u32 {
        // 2: VGG's 2×2 max-pool passes the whole gradient to each window's maximum (candle's
        // passed a quarter of it), and the CPU conv/batch-norm kernels sum in another order.
        // 3: the binary cross-entropy is computed in its stable form (was NaN for |logit| > 17).
        // 4: 3×3 convolutions with ≥ 32 channels on maps ≥ 24² by Winograd F(2×2, 3×3), forward
        // and both gradients (results move in the last bits, then through training).
        // 5: images resized by data::resize (SIMD; within 2 grey levels of the image crate's).
        5
    }
    fn upstream(&self) -> &'static [&'static str] {
        &["data"]
    }
    fn slice(&self, input: &SliceInput) -> ClassifySlice {
        let classifier = ClassifierConfig::of(input.config);
        let pretrained_file = classifier
            .backbone
            .pretrained
            .as_ref()
            .and_then(|p| FileIdentity::of(&input.manifest_dir.join(p)));
        let spec = &input.dataset.spec;
        ClassifySlice {
            negative_masks: Protocol::of(&classifier.labels)
                .every_image_positive()
                .then_some(spec.negative_masks),
            classifier,
            pretrained_file,
            classes: spec.classes.clone(),
            positive: spec.positive,
        }
    }

    fn run(
        &self,
        slice: &ClassifySlice,
        input: &StageInput,
        out: &Path,
        scratch: &Path,
    ) -> Result<()> {
        let t0 = Instant::now();
        let idx = input.dataset;
        let (split, bytes) =
            super::data_stage::load_split(input.upstream_dir("data")?, "classify")?;
        let images = super::data_stage::images(input, bytes)?;
        let cfg = &slice.classifier;
        let job = Job {
            cfg,
            idx,
            split: &split,
            device: input.device,
            scratch,
            manifest_dir: input.manifest_dir,
        };
        let patch = cfg.labels.patch();
        let windows = |s: Split| patches::for_samples(idx, &job.items(s), &cfg.labels);
        let views = |s: Split| patches::image_windows(idx, &job.items(s), &cfg.labels);
        let ex = match cfg.labels.level {
            LabelLevel::Patch => {
                Examples::patches(&windows(Split::Train)?, &windows(Split::Valid)?)
            }
            LabelLevel::ImageWindows => {
                Examples::classes(&job, &views(Split::Train)?, &views(Split::Valid)?)
            }
            LabelLevel::Image => Examples::images(&job),
        };
        let (clf, summary) = classify::train(&job, &images, &ex)?;
        crate::model::weights::save(&clf.vars, &out.join("classifier.safetensors"))?;

        let h = &summary.history;
        let mut hist = TableBuilder::new()
            .u32("epoch", h.iter().map(|r| r.epoch).collect())
            .f64("lr", h.iter().map(|r| r.lr).collect())
            .f64("train_loss", h.iter().map(|r| r.train_loss).collect())
            .f64(
                "train_accuracy",
                h.iter().map(|r| r.train_accuracy).collect(),
            )
            .f64("grad_norm", h.iter().map(|r| r.grad_norm).collect())
            .f64("valid_loss", h.iter().map(|r| r.valid_loss).collect())
            .f64(
                "valid_accuracy",
                h.iter().map(|r| r.valid_accuracy).collect(),
            )
            .f64(
                "valid_balanced_accuracy",
                h.iter().map(|r| r.valid_balanced_accuracy).collect(),
            )
            .f64("valid_auc", h.iter().map(|r| r.valid_auc).collect())
            .f64("seconds", h.iter().map(|r| r.seconds).collect())
            .build()?;
        table::write(&mut hist, out, crate::table::Table::History.stem())?;

        let valid_acc = if patch {
            write_patch_outputs(input, &job, &images, &clf, out)?
        } else {
            write_image_outputs(input, &job, &images, &clf, out)?
        };
        write_json(
            &out.join("classify_summary.json"),
            &serde_json::json!({
                "best_epoch": summary.best_epoch,
                "epochs_run": summary.epochs_run,
                "early_stopped": summary.early_stopped,
                "train_images_per_s": summary.train_images_per_s,
                "valid_accuracy": valid_acc,
                "seconds": t0.elapsed().as_secs_f64(),
            }),
        )
    }

    fn publish(&self, entry: &Path, run_dir: &Path) -> Result<()> {
        crate::util::fs::publish_files(entry, run_dir, PUBLISHED)?;
        // Written under patch-level labels only.
        let windows: Vec<&str> = ["patches.parquet", "patches.csv"]
            .into_iter()
            .filter(|f| entry.join(f).is_file())
            .collect();
        crate::util::fs::publish_files(entry, run_dir, &windows)
    }
}

/// Rows of the `classify_metrics` table: `(split, level, metric, value)`.
#[derive(Default)]
struct MetricRows {
    split: Vec<String>,
    level: Vec<String>,
    metric: Vec<String>,
    value: Vec<f64>,
}

impl MetricRows {
    fn push(&mut self, split: Split, level: &str, m: &Metrics) {
        for (name, v) in m.pairs() {
            self.split.push(split.to_string());
            self.level.push(level.to_string());
            self.metric.push(name.to_string());
            self.value.push(v);
        }
    }

    fn write(self, out: &Path) -> Result<()> {
        let mut t = TableBuilder::new()
            .str(crate::table::schema::col::SPLIT, self.split)
            .str(crate::table::schema::col::LEVEL, self.level)
            .str(crate::table::schema::col::METRIC, self.metric)
            .f64(crate::table::schema::col::VALUE, self.value)
            .build()?;
        table::write(&mut t, out, crate::table::Table::ClassifyMetrics.stem())
    }
}

/// Image-level metrics, patient-level metrics and per-image predictions of every split;
/// returns the validation accuracy.
fn write_image_outputs(
    input: &StageInput,
    job: &Job,
    images: &Images,
    clf: &Classifier,
    out: &Path,
) -> Result<f64> {
    let cfg = job.cfg;
    let t = &cfg.train;
    let idx = input.dataset;
    let classes = &idx.spec.classes;
    let pos = idx.spec.positive;
    let mut rows = MetricRows::default();
    let (mut p_id, mut p_pat, mut p_cls, mut p_split, mut p_pred) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut p_prob: Vec<Vec<f64>> = vec![vec![]; classes.len()];
    let mut valid_acc = f64::NAN;
    for s in [Split::Train, Split::Valid, Split::Test] {
        let items = job.items(s);
        if items.is_empty() {
            continue;
        }
        let bs = (t.batch_size * 2) as usize;
        let pr = if cfg.labels.windows() {
            // Image-level labels on windows: an image's probabilities are its windows' mean.
            let wins = patches::image_windows(idx, &items, &cfg.labels)?;
            let pw = clf.predict(images, &wins, t.image_size, bs, false, input.device)?;
            let wt: Vec<usize> = wins
                .iter()
                .map(|v| usize::from(idx.samples[v.sample].class == pos))
                .collect();
            let wp: Vec<f64> = pw.probs.iter().map(|p| p[pos] as f64).collect();
            rows.push(s, "window", &Metrics::compute(&wt, &wp));
            mean_by_sample(&items, &wins, &pw.probs)
        } else {
            clf.predict(images, &items, t.image_size, bs, false, input.device)?
        };
        let truth: Vec<usize> = items
            .iter()
            .map(|&i| usize::from(idx.samples[i].class == pos))
            .collect();
        let ppos: Vec<f64> = pr.probs.iter().map(|p| p[pos] as f64).collect();
        let pats: Vec<String> = items
            .iter()
            .map(|&i| idx.samples[i].patient.clone())
            .collect();
        let (_, pt, pp) = by_patient(&pats, &truth, &ppos);
        for (level, m) in [
            ("image", Metrics::compute(&truth, &ppos)),
            ("patient", Metrics::compute(&pt, &pp)),
        ] {
            if s == Split::Valid && level == "image" {
                valid_acc = m.accuracy;
            }
            rows.push(s, level, &m);
        }
        for (j, &i) in items.iter().enumerate() {
            let smp = &idx.samples[i];
            p_id.push(smp.id.clone());
            p_pat.push(smp.patient.clone());
            p_cls.push(classes[smp.class].clone());
            p_split.push(s.to_string());
            let probs = &pr.probs[j];
            let arg = (0..probs.len())
                .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
                .unwrap_or(0);
            p_pred.push(classes[arg].clone());
            for (c, col) in p_prob.iter_mut().enumerate() {
                col.push(probs[c] as f64);
            }
        }
    }
    rows.write(out)?;
    let correct: Vec<String> = p_cls
        .iter()
        .zip(&p_pred)
        .map(|(a, b)| (a == b).to_string())
        .collect();
    let mut b = TableBuilder::new()
        .str("id", p_id)
        .str("patient", p_pat)
        .str("class", p_cls)
        .str(crate::table::schema::col::SPLIT, p_split);
    for (c, col) in p_prob.into_iter().enumerate() {
        b = b.f64(&format!("p_{}", classes[c]), col);
    }
    let mut preds = b.str("predicted", p_pred).str("correct", correct).build()?;
    table::write(&mut preds, out, crate::table::Table::Predictions.stem())?;
    Ok(valid_acc)
}

/// Per-image means of window probabilities: row `j` averages the rows of `probs` whose window
/// belongs to `items[j]`.
fn mean_by_sample(items: &[usize], wins: &[View], probs: &[Vec<f32>]) -> Predictions {
    let k = probs.first().map_or(0, Vec::len);
    let row: BTreeMap<usize, usize> = items.iter().enumerate().map(|(j, &i)| (i, j)).collect();
    let mut sum = vec![vec![0f32; k]; items.len()];
    let mut n = vec![0usize; items.len()];
    for (v, p) in wins.iter().zip(probs) {
        if let Some(&j) = row.get(&v.sample) {
            for (a, b) in sum[j].iter_mut().zip(p) {
                *a += b;
            }
            n[j] += 1;
        }
    }
    for (r, c) in sum.iter_mut().zip(n) {
        r.iter_mut().for_each(|a| *a /= c.max(1) as f32);
    }
    Predictions { probs: sum }
}

/// Window-level metrics of both labels and per-window predictions of the held-out splits, and
/// the windows table; returns the validation accuracy of the foreground label.
fn write_patch_outputs(
    input: &StageInput,
    job: &Job,
    images: &Images,
    clf: &Classifier,
    out: &Path,
) -> Result<f64> {
    let cfg = job.cfg;
    let t = &cfg.train;
    let idx = input.dataset;
    let names = patches::LABELS;
    let mut metrics = MetricRows::default();
    let mut rows: Vec<(Split, Patch, [f32; 2])> = Vec::new();
    let mut valid_acc = f64::NAN;
    // Training windows are many and their scores say little (the classifier saw them); the
    // held-out windows are what the metrics need.
    for s in [Split::Valid, Split::Test] {
        let wins = patches::for_samples(idx, &job.items(s), &cfg.labels)?;
        if wins.is_empty() {
            continue;
        }
        let pr = clf.predict(
            images,
            &wins,
            t.image_size,
            (t.batch_size * 2) as usize,
            true,
            input.device,
        )?;
        for (label, level) in [
            (patches::FOREGROUND, "patch"),
            (patches::BACKGROUND, "patch-background"),
        ] {
            let truth: Vec<usize> = wins.iter().map(|p| usize::from(p.labels[label])).collect();
            let p: Vec<f64> = pr.probs.iter().map(|q| q[label] as f64).collect();
            let m = Metrics::compute(&truth, &p);
            if s == Split::Valid && label == patches::FOREGROUND {
                valid_acc = m.accuracy;
            }
            metrics.push(s, level, &m);
        }
        for (p, q) in wins.iter().zip(&pr.probs) {
            rows.push((s, *p, [q[0], q[1]]));
        }
    }
    metrics.write(out)?;
    let sample = |p: &Patch| &idx.samples[p.sample];
    let label_of = |present: bool| names[usize::from(present)].to_string();
    let fg = |r: &(Split, Patch, [f32; 2])| r.2[patches::FOREGROUND] >= 0.5;
    let mut preds = TableBuilder::new()
        .str(
            "id",
            rows.iter().map(|r| r.1.id(&sample(&r.1).id)).collect(),
        )
        .str(
            "image",
            rows.iter().map(|r| sample(&r.1).id.clone()).collect(),
        )
        .str(
            "patient",
            rows.iter().map(|r| sample(&r.1).patient.clone()).collect(),
        )
        .str(
            "class",
            rows.iter()
                .map(|r| label_of(r.1.labels[patches::FOREGROUND]))
                .collect(),
        )
        .str(
            crate::table::schema::col::SPLIT,
            rows.iter().map(|r| r.0.to_string()).collect(),
        )
        .u32("x", rows.iter().map(|r| r.1.x).collect())
        .u32("y", rows.iter().map(|r| r.1.y).collect())
        .str(
            "has_background",
            rows.iter()
                .map(|r| r.1.labels[patches::BACKGROUND].to_string())
                .collect(),
        )
        .f64(
            "p_background",
            rows.iter()
                .map(|r| r.2[patches::BACKGROUND] as f64)
                .collect(),
        )
        .f64(
            "p_foreground",
            rows.iter()
                .map(|r| r.2[patches::FOREGROUND] as f64)
                .collect(),
        )
        .str("predicted", rows.iter().map(|r| label_of(fg(r))).collect())
        .str(
            "correct",
            rows.iter()
                .map(|r| (fg(r) == r.1.labels[patches::FOREGROUND]).to_string())
                .collect(),
        )
        .build()?;
    table::write(&mut preds, out, crate::table::Table::Predictions.stem())?;
    let mut wins = TableBuilder::new()
        .str(
            "image",
            rows.iter().map(|r| sample(&r.1).id.clone()).collect(),
        )
        .str(
            crate::table::schema::col::SPLIT,
            rows.iter().map(|r| r.0.to_string()).collect(),
        )
        .u32("x", rows.iter().map(|r| r.1.x).collect())
        .u32("y", rows.iter().map(|r| r.1.y).collect())
        .u32("w", rows.iter().map(|r| r.1.w).collect())
        .u32("h", rows.iter().map(|r| r.1.h).collect())
        .str(
            "has_background",
            rows.iter()
                .map(|r| r.1.labels[patches::BACKGROUND].to_string())
                .collect(),
        )
        .str(
            "has_foreground",
            rows.iter()
                .map(|r| r.1.labels[patches::FOREGROUND].to_string())
                .collect(),
        )
        .build()?;
    table::write(&mut wins, out, "patches")?;
    Ok(valid_acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_probabilities_are_their_windows_means() {
        let win = |sample: usize| View {
            sample,
            window: Some((0, 0, 8, 8)),
        };
        // Images 7 and 3 (in that row order); a window of image 9 belongs to neither.
        let wins = [win(3), win(7), win(3), win(9), win(3)];
        let probs = vec![
            vec![0.2, 0.8],
            vec![0.9, 0.1],
            vec![0.5, 0.5],
            vec![0.0, 1.0],
            vec![0.8, 0.2],
        ];
        let p = mean_by_sample(&[7, 3], &wins, &probs);
        assert_eq!(p.probs.len(), 2);
        assert!((p.probs[0][0] - 0.9).abs() < 1e-6 && (p.probs[0][1] - 0.1).abs() < 1e-6);
        assert!((p.probs[1][0] - 0.5).abs() < 1e-6 && (p.probs[1][1] - 0.5).abs() < 1e-6);
    }
}
