//! The `segment` stage: train DeepLab V3+ on the `train` patients' pseudo labels (weak
//! supervision) or true masks (`segmentation.supervision = "full"`, the upper bound), then
//! the self-training rounds if any (`train::self_training`), and write the weights and the
//! training history (every round's epochs, numbered on, with a `round` column).

use crate::model::weights::FileIdentity;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use super::pseudo_stage::LABEL_DIR;
use super::stage::{SliceInput, Stage, StageInput};
use crate::cam;
use crate::config::{Relabel, SegInit, Supervision};
use crate::data::{mask, Split};
use crate::error::Result;
use crate::table::{self, TableBuilder};
use crate::train::segment::{self, SegmenterConfig};
use crate::train::self_training;
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
        // 3: the per-epoch diagnostics (class losses and shares, gradient norm, agreement with
        // the validation images' labels) and the collapse flag, which the report reads.
        // 4: Winograd 3×3 convolutions and the bilinear-resize kernel (last bits, then training).
        // 5: images resized by data::resize (SIMD; within 2 grey levels of the image crate's).
        5
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
        let of = |want: Split| -> Vec<usize> {
            (0..idx.samples.len())
                .filter(|&i| split.get(&idx.samples[i].patient) == Some(&want))
                .collect()
        };
        let (items, valid_items) = (of(Split::Train), of(Split::Valid));
        let full = cfg.segmentation.supervision == Supervision::Full;
        // The labels the segmenter learns from, for any sample: its mask (full supervision)
        // or its pseudo label (weak supervision: no mask is read, on validation images
        // either).
        let label_of = |i: usize| -> Result<Option<image::GrayImage>> {
            let s = &idx.samples[i];
            if full {
                mask::ground_truth(&idx.spec, s)
            } else {
                let p =
                    cam::sample_file(&input.upstream_dir("pseudo")?.join(LABEL_DIR), &s.id, "png");
                Ok(Some(cam::read_labels(&p)?))
            }
        };
        let mut labels = HashMap::new();
        for &i in &items {
            if let Some(l) = label_of(i)? {
                labels.insert(i, l);
            }
        }
        let mut valid = HashMap::new();
        for &i in &valid_items {
            if let Some(l) = label_of(i)? {
                valid.insert(i, l);
            }
        }
        if full && labels.len() < items.len() {
            tracing::warn!(
                "full supervision: {} of {} training images have no mask and are skipped",
                items.len() - labels.len(),
                items.len()
            );
        }
        let images = super::data_stage::images(input, bytes)?;
        let clf = input
            .upstream_dir("classify")
            .ok()
            .map(|d| d.join("classifier.safetensors"));
        // Round 1 trains on the pseudo labels (or masks); each self-training round after it
        // on the previous round's predictions (validation labels stay the pseudo labels, so
        // every round's epoch is chosen against the CAM's evidence, not its own output).
        let rounds = 1 + cfg.segmentation.self_training_rounds;
        let mut history: Vec<(u32, segment::SegEpoch)> = Vec::new();
        let mut selected_epoch = 0;
        let mut train_round = |round: u32, labels: &HashMap<usize, image::GrayImage>| {
            let data = segment::SegData {
                images: &images,
                train: &items,
                labels,
                valid: &valid,
            };
            // Each round keeps its own checkpoints: an interrupted run resumes in its round.
            let round_scratch = match round {
                1 => scratch.to_path_buf(),
                r => scratch.join(format!("round{r}")),
            };
            let (seg, summary) = segment::train(
                cfg,
                &data,
                input.device,
                &round_scratch,
                clf.as_deref(),
                input.manifest_dir,
            )?;
            warn_if_collapsed(&summary, full, (rounds > 1).then_some(round));
            let offset = history.len() as u32;
            selected_epoch = offset + summary.selected_epoch;
            history.extend(summary.history.iter().cloned().map(|mut r| {
                r.epoch += offset;
                (round, r)
            }));
            Ok::<_, crate::error::Error>((seg, summary))
        };
        let (mut seg, mut summary) = train_round(1, &labels)?;
        let mode = cfg.segmentation.self_training_relabel;
        // `labels` stays the round-1 labels; `current` holds the latest round's. `ignored-pixels`
        // fills in the round-1 labels' ignored pixels every round (what they decide stays
        // decided); `positive-images` relabels the previous round's maps.
        let mut current: Option<HashMap<usize, image::GrayImage>> = None;
        let mut relabelled = Vec::new();
        for round in 2..=rounds {
            let base = match mode {
                Relabel::IgnoredPixels => &labels,
                Relabel::PositiveImages => current.as_ref().unwrap_or(&labels),
            };
            let (next, r) =
                self_training::relabel(&seg, &cfg.segmentation, mode, &images, base, input.device)?;
            let (what, kept) = match mode {
                Relabel::PositiveImages => ("replaced by", "without foreground"),
                Relabel::IgnoredPixels => (
                    "filled in (ignored pixels only) from",
                    "without ignored pixels",
                ),
            };
            tracing::info!(
                "self-training round {round}: {} training label maps {what} the round-{} \
                 segmenter's predictions ({} pixels; foreground {:.1} % → {:.1} %), {} {kept} \
                 kept",
                r.images,
                round - 1,
                r.pixels_relabelled,
                100.0 * r.foreground_before,
                100.0 * r.foreground_after,
                r.kept
            );
            if r.pixels_relabelled == 0 {
                tracing::warn!(
                    "self-training round {round} relabelled no pixel (segmentation.\
                     self_training_relabel = \"{}\"): it trains again on the same labels",
                    mode.as_str()
                );
            }
            relabelled.push(serde_json::json!({"round": round, "relabelled": r}));
            (seg, summary) = train_round(round, current.insert(next))?;
        }
        let kept = summary.selected();
        crate::model::weights::save(&seg.vars, &out.join(WEIGHTS))?;
        let h: Vec<&segment::SegEpoch> = history.iter().map(|(_, r)| r).collect();
        let valid_col = |f: fn(&segment::LabelAgreement) -> f64| -> Vec<f64> {
            h.iter()
                .map(|r| r.valid.as_ref().map_or(f64::NAN, f))
                .collect()
        };
        let mut hist = TableBuilder::new()
            .u32("epoch", h.iter().map(|r| r.epoch).collect())
            .f64("lr", h.iter().map(|r| r.lr).collect())
            .f64("loss", h.iter().map(|r| r.loss).collect())
            .f64(
                "label_accuracy",
                h.iter().map(|r| r.label_accuracy).collect(),
            )
            .f64(
                "loss_background",
                h.iter().map(|r| r.class_loss[0]).collect(),
            )
            .f64(
                "loss_foreground",
                h.iter().map(|r| r.class_loss[1]).collect(),
            )
            .f64(
                "label_foreground",
                h.iter().map(|r| r.label_foreground).collect(),
            )
            .f64(
                "predicted_foreground",
                h.iter().map(|r| r.predicted_foreground).collect(),
            )
            .f64("grad_norm", h.iter().map(|r| r.grad_norm).collect())
            .f64("valid_agreement_miou", valid_col(|v| v.miou))
            .f64("valid_label_foreground", valid_col(|v| v.label_foreground))
            .f64(
                "valid_predicted_foreground",
                valid_col(|v| v.predicted_foreground),
            )
            .bool(
                "valid_collapsed",
                h.iter()
                    .map(|r| r.valid.is_some_and(|v| v.collapsed))
                    .collect(),
            )
            // before `seconds`, which stays last (as in every history table)
            .u32("round", history.iter().map(|(k, _)| *k).collect())
            .f64("seconds", h.iter().map(|r| r.seconds).collect())
            .build()?;
        table::write(&mut hist, out, crate::table::Table::SegmentHistory.stem())?;
        write_json(
            &out.join("segment_summary.json"),
            &serde_json::json!({
                "supervision": cfg.segmentation.supervision,
                "train_images": labels.len(),
                "valid_images": valid.len(),
                "epochs": h.len(),
                "rounds": rounds,
                "self_training": relabelled,
                "self_training_relabel": mode,
                "selected_epoch": selected_epoch,
                "select": cfg.segmentation.select,
                "final_loss": h.last().map(|r| r.loss),
                "valid_agreement": kept,
                "collapsed": kept.is_some_and(|v| v.collapsed),
                "train_images_per_s": summary.train_images_per_s,
                "seconds": t0.elapsed().as_secs_f64(),
            }),
        )
    }

    fn publish(&self, entry: &Path, run_dir: &Path) -> Result<()> {
        publish_files(entry, run_dir, PUBLISHED)
    }
}

/// A loud warning when the kept epoch's predictions on the validation images collapsed onto
/// one class (`round`: the self-training round, when there is more than one).
fn warn_if_collapsed(summary: &segment::SegSummary, full: bool, round: Option<u32>) {
    if let Some(v) = summary.selected().filter(|v| v.collapsed) {
        tracing::warn!(
            "COLLAPSED: the {} segmenter{} predicts {} on {:.1} % of the validation images' \
             labelled pixels (their labels: {:.1} % foreground); its scores measure a \
             collapse, not a segmentation — see segment_history.csv",
            if full { "fully supervised" } else { "weak" },
            round.map_or(String::new(), |r| format!(" of self-training round {r}")),
            if v.predicted_foreground >= 0.5 {
                "foreground"
            } else {
                "background"
            },
            100.0 * v.predicted_foreground.max(1.0 - v.predicted_foreground),
            100.0 * v.label_foreground
        );
    }
}
