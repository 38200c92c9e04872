//! The `segment` stage: train DeepLab V3+ on the `train` patients' pseudo labels (weak
//! supervision) or true masks (`segmentation.supervision = "full"`, the upper bound), and
//! write the weights and the training history.

use crate::model::weights::FileIdentity;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use super::pseudo_stage::LABEL_DIR;
use super::stage::{SliceInput, Stage, StageInput};
use crate::cam;
use crate::config::{SegInit, Supervision};
use crate::data::loader::Images;
use crate::data::{mask, Split};
use crate::error::Result;
use crate::table::{self, TableBuilder};
use crate::train::segment::{self, SegmenterConfig};
use crate::util::fs::{publish_files, write_json};

/// See the module docs.
pub struct SegmentStage;

/// Weights file of the trained segmenter (published into the run directory, where
/// `wsss predict` reads it).
pub const WEIGHTS: &str = "segmenter.safetensors";

const PUBLISHED: &[&str] = &[
    WEIGHTS,
    "segment_history.parquet",
    "segment_history.csv",
    "segment_summary.json",
];

/// What the segment stage reads: the segmenter's settings and, when its encoder starts from
/// `backbone.pretrained`, that file's identity (its content, not its name).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentSlice {
    #[serde(flatten)]
    segmenter: SegmenterConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pretrained_file: Option<FileIdentity>,
}

impl Stage for SegmentStage {
    type Slice = SegmentSlice;
    fn name(&self) -> &'static str {
        "segment"
    }
    fn version(&self) -> u32 {
        // 2: VGG's 2×2 max-pool passes the whole gradient to each window's maximum (candle's
        // passed a quarter of it), and the CPU conv/batch-norm kernels sum in another order.
        2
    }
    fn upstream(&self) -> &'static [&'static str] {
        &["data", "classify", "pseudo"]
    }
    fn key_upstream(&self, slice: &SegmentSlice) -> Vec<&'static str> {
        let s = &slice.segmenter.segmentation;
        let mut v = vec!["data"];
        if s.init == SegInit::Classifier {
            v.push("classify");
        }
        if s.supervision == Supervision::Pseudo {
            v.push("pseudo");
        }
        v
    }
    fn slice(&self, input: &SliceInput) -> SegmentSlice {
        let segmenter = SegmenterConfig::of(input.config);
        let pretrained_file = segmenter
            .pretrained
            .as_ref()
            .and_then(|p| FileIdentity::of(&input.manifest_dir.join(p)));
        SegmentSlice {
            segmenter,
            pretrained_file,
        }
    }
    fn run(
        &self,
        slice: &SegmentSlice,
        input: &StageInput,
        out: &Path,
        scratch: &Path,
    ) -> Result<()> {
        let t0 = Instant::now();
        let cfg = &slice.segmenter;
        let idx = input.dataset;
        let (split, bytes) = super::data_stage::load_split(input.upstream_dir("data")?, "segment")?;
        let items: Vec<usize> = (0..idx.samples.len())
            .filter(|&i| split.get(&idx.samples[i].patient) == Some(&Split::Train))
            .collect();
        let mut labels = HashMap::new();
        let full = cfg.segmentation.supervision == Supervision::Full;
        for &i in &items {
            let s = &idx.samples[i];
            let l = if full {
                mask::ground_truth(&idx.spec, s)?
            } else {
                let p =
                    cam::sample_file(&input.upstream_dir("pseudo")?.join(LABEL_DIR), &s.id, "png");
                Some(cam::read_labels(&p)?)
            };
            if let Some(l) = l {
                labels.insert(i, l);
            }
        }
        if full && labels.len() < items.len() {
            tracing::warn!(
                "full supervision: {} of {} training images have no mask and are skipped",
                items.len() - labels.len(),
                items.len()
            );
        }
        let images = Images::new(&idx.samples, bytes);
        let clf = input
            .upstream_dir("classify")
            .ok()
            .map(|d| d.join("classifier.safetensors"));
        let (seg, summary) = segment::train(
            cfg,
            &images,
            &items,
            &labels,
            input.device,
            scratch,
            clf.as_deref(),
            input.manifest_dir,
        )?;
        crate::model::weights::save(&seg.vars, &out.join(WEIGHTS))?;
        let h = &summary.history;
        let mut hist = TableBuilder::new()
            .u32("epoch", h.iter().map(|r| r.epoch).collect())
            .f64("lr", h.iter().map(|r| r.lr).collect())
            .f64("loss", h.iter().map(|r| r.loss).collect())
            .f64(
                "label_accuracy",
                h.iter().map(|r| r.label_accuracy).collect(),
            )
            .f64("seconds", h.iter().map(|r| r.seconds).collect())
            .build()?;
        table::write(&mut hist, out, "segment_history")?;
        write_json(
            &out.join("segment_summary.json"),
            &serde_json::json!({
                "supervision": cfg.segmentation.supervision,
                "train_images": labels.len(),
                "epochs": h.len(),
                "final_loss": h.last().map(|r| r.loss),
                "train_images_per_s": summary.train_images_per_s,
                "seconds": t0.elapsed().as_secs_f64(),
            }),
        )
    }

    fn publish(&self, entry: &Path, run_dir: &Path) -> Result<()> {
        publish_files(entry, run_dir, PUBLISHED)
    }
}
