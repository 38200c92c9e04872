//! The `classify` stage: train the image-level classifier on the `train` patients, select the
//! epoch by validation balanced accuracy, and write the weights, the training history, the
//! metrics of every split (image and patient level) and the per-image predictions that the
//! misclassification analysis reads.

use std::path::Path;
use std::time::Instant;

use super::stage::{Stage, StageInput};
use crate::data::loader::Images;
use crate::data::Split;
use crate::error::Result;
use crate::metrics::classification::{by_patient, Metrics};
use crate::table::{self, TableBuilder};
use crate::train::classify::{self, Job};
use crate::util::fs::write_json;

/// See the module docs.
pub struct ClassifyStage;

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
    fn name(&self) -> &'static str {
        "classify"
    }
    fn version(&self) -> u32 {
        1
    }
    fn upstream(&self) -> &'static [&'static str] {
        &["data"]
    }
    fn config_slice(&self, input: &StageInput) -> serde_json::Value {
        let c = &input.variant.config;
        let weights = c.backbone.pretrained.as_ref().map(|p| {
            let full = input.manifest_dir.join(p);
            let meta = std::fs::metadata(&full).ok();
            (
                full.display().to_string(),
                meta.as_ref().map(|m| m.len()),
                meta.and_then(|m| m.modified().ok())
                    .map(|t| format!("{t:?}")),
            )
        });
        // Which layer the CAM reads does not change the classifier.
        let mut backbone = serde_json::to_value(&c.backbone).unwrap_or_default();
        if let Some(o) = backbone.as_object_mut() {
            o.remove("cam_layer");
        }
        serde_json::json!({
            "backbone": backbone,
            "pretrained_file": weights,
            "loss": c.loss,
            "train": c.train,
            "classes": input.dataset.spec.classes,
            "positive": input.dataset.spec.positive,
        })
    }

    fn run(&self, input: &StageInput, out: &Path, scratch: &Path) -> Result<()> {
        let t0 = Instant::now();
        let idx = input.dataset;
        let (split, bytes) =
            super::data_stage::load_split(input.upstream_dir("data")?, "classify")?;
        let images = Images::new(&idx.samples, bytes);
        let job = Job {
            cfg: &input.variant.config,
            idx,
            split: &split,
            device: input.device,
            scratch,
            manifest_dir: input.manifest_dir,
        };
        let (clf, summary) = classify::train(&job, &images)?;
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
        table::write(&mut hist, out, "history")?;

        let t = &input.variant.config.train;
        let classes = &idx.spec.classes;
        let pos = idx.spec.positive;
        let (mut m_split, mut m_level, mut m_name, mut m_val) = (vec![], vec![], vec![], vec![]);
        let (mut p_id, mut p_pat, mut p_cls, mut p_split, mut p_pred) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut p_prob: Vec<Vec<f64>> = vec![vec![]; classes.len()];
        let mut valid_acc = f64::NAN;
        for s in [Split::Train, Split::Valid, Split::Test] {
            let items = job.items(s);
            if items.is_empty() {
                continue;
            }
            let pr = clf.predict(
                &images,
                &items,
                t.image_size,
                (t.batch_size * 2) as usize,
                input.device,
            )?;
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
                for (name, v) in m.pairs() {
                    m_split.push(s.to_string());
                    m_level.push(level.to_string());
                    m_name.push(name.to_string());
                    m_val.push(v);
                }
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
        let mut metrics = TableBuilder::new()
            .str("split", m_split)
            .str("level", m_level)
            .str("metric", m_name)
            .f64("value", m_val)
            .build()?;
        table::write(&mut metrics, out, "classify_metrics")?;
        let correct: Vec<String> = p_cls
            .iter()
            .zip(&p_pred)
            .map(|(a, b)| (a == b).to_string())
            .collect();
        let mut b = TableBuilder::new()
            .str("id", p_id)
            .str("patient", p_pat)
            .str("class", p_cls)
            .str("split", p_split);
        for (c, col) in p_prob.into_iter().enumerate() {
            b = b.f64(&format!("p_{}", classes[c]), col);
        }
        let mut preds = b.str("predicted", p_pred).str("correct", correct).build()?;
        table::write(&mut preds, out, "predictions")?;
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
        crate::util::fs::publish_files(entry, run_dir, PUBLISHED)
    }
}
