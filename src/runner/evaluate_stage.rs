//! The `evaluate` stage: the segmenter's predictions on every image (index PNGs and overlays),
//! and, on every split with masks, the dataset-level scores of the predictions and of the
//! pseudo labels side by side — how much the segmenter recovers beyond the labels it learnt
//! from. See [`crate::metrics::segmentation`] for how background and ignore are counted, and
//! [`crate::metrics::boundary`] for the boundary F-score and Boundary IoU beside mIoU.
//!
//! Baselines are scored on the same pixels, so a number means something: `all_background`,
//! `all_foreground`, `otsu` (Otsu on the haematoxylin channel) and, where negative images are
//! all background by protocol (the talk's), `gated_otsu` and `gated_segmenter` — the same
//! predictions with every image the classifier calls negative set to background.

use std::path::Path;
use std::time::Instant;

use image::{GrayImage, RgbImage};
use rayon::prelude::*;

use super::pseudo_stage::LABEL_DIR;
use super::segment_stage::WEIGHTS;
use serde::Serialize;

use super::stage::{SliceInput, Stage, StageInput};
use crate::cam;
use crate::config::SegmentationConfig;
use crate::data::protocol::Protocol;
use crate::data::registry::NegativeMasks;
use crate::data::{mask, Split};
use crate::error::{Error, Result};
use crate::metrics::baselines;
use crate::metrics::boundary::{BoundaryCounts, BoundaryTolerance, TruthOutlines};
use crate::metrics::segmentation::Confusion;
use crate::table::schema::col;
use crate::table::{self, Source, Table, TableBuilder};
use crate::train::segment::Segmenter;
use crate::util::fs::{link_dir, mkdirs, publish_files, write_json};

/// See the module docs.
pub struct EvaluateStage;

/// Folder of predicted label PNGs.
pub const PRED_DIR: &str = "predictions";
/// Folder of overlay PNGs.
pub const OVERLAY_DIR: &str = "overlays";

const PUBLISHED: &[&str] = &[
    "seg_metrics.parquet",
    "seg_metrics.csv",
    "seg_images.parquet",
    "seg_images.csv",
    "evaluate_summary.json",
];

/// Ids of the images the classifier calls negative (its `predictions` table).
fn classifier_negatives(
    classify_dir: &Path,
    positive: &str,
) -> Result<std::collections::BTreeSet<String>> {
    let df = table::read_parquet(&classify_dir.join("predictions.parquet"))?;
    let ids = df.column("id")?.str()?;
    let pred = df.column("predicted")?.str()?;
    Ok(ids
        .iter()
        .zip(pred.iter())
        .filter_map(|(i, p)| match (i, p) {
            (Some(i), Some(p)) if p != positive => Some(i.to_string()),
            _ => None,
        })
        .collect())
}

/// The image with predicted foreground tinted red.
pub fn overlay(img: &RgbImage, labels: &GrayImage) -> RgbImage {
    let mut o = img.clone();
    for (p, l) in o.pixels_mut().zip(labels.pixels()) {
        if l.0[0] == 1 {
            p.0 = [
                ((p.0[0] as u16 + 2 * 230) / 3) as u8,
                (p.0[1] as u16 * 2 / 3) as u8,
                (p.0[2] as u16 * 2 / 3) as u8,
            ];
        }
    }
    o
}

/// What the evaluate stage reads: the segmenter's `[segmentation]` table (the network to
/// rebuild, the inference scale, window size, batch and flip TTA) and whether the gated rows
/// are scored (negative images all background by protocol, and image-level predictions to gate
/// with: a patch-level classifier has none).
#[derive(Debug, Serialize)]
pub struct EvaluateSlice {
    segmentation: SegmentationConfig,
    gate: bool,
    /// `[metrics]`: the boundary tolerances.
    boundary: BoundaryTolerance,
}

impl Stage for EvaluateStage {
    type Slice = EvaluateSlice;
    fn name(&self) -> &'static str {
        "evaluate"
    }
    fn version(&self) -> u32 {
        // 3: boundary F-score and Boundary IoU in seg_metrics and the summary
        // 4: Winograd 3×3 convolutions and the bilinear-resize kernel in the segmenter's forward
        // 5: images resized by data::resize (SIMD; within 2 grey levels of the image crate's).
        5
    }
    fn upstream(&self) -> &'static [&'static str] {
        &["data", "classify", "pseudo", "segment"]
    }
    fn slice(&self, input: &SliceInput) -> EvaluateSlice {
        EvaluateSlice {
            // what cannot change the trained segmenter is left out of the key (what can is in
            // the segment stage's key, upstream of this one)
            segmentation: input.config.segmentation.normalised(),
            gate: input.dataset.spec.negative_masks == NegativeMasks::Background
                && !Protocol::of(&input.config.labels).every_image_positive(),
            boundary: BoundaryTolerance {
                f: input.config.metrics.boundary_f_tolerance,
                iou: input.config.metrics.boundary_iou_width,
            },
        }
    }

    fn run(
        &self,
        cfg: &EvaluateSlice,
        input: &StageInput,
        out: &Path,
        _scratch: &Path,
    ) -> Result<()> {
        let t0 = Instant::now();
        let idx = input.dataset;
        let (split, bytes) =
            super::data_stage::load_split(input.upstream_dir("data")?, "evaluate")?;
        let seg = Segmenter::load(
            &cfg.segmentation,
            input.device,
            &input.upstream_dir("segment")?.join(WEIGHTS),
        )?;
        let pseudo_dir = input.upstream_dir("pseudo")?.join(LABEL_DIR);
        let gate = cfg.gate;
        let called_negative = if gate {
            classifier_negatives(
                input.upstream_dir("classify")?,
                &idx.spec.classes[idx.spec.positive],
            )?
        } else {
            Default::default()
        };
        let (pred_dir, ov_dir) = (out.join(PRED_DIR), out.join(OVERLAY_DIR));
        mkdirs(&pred_dir)?;
        mkdirs(&ov_dir)?;
        let images = super::data_stage::images(input, bytes)?;
        let items: Vec<usize> = (0..idx.samples.len())
            .filter(|&i| split.contains_key(&idx.samples[i].patient))
            .collect();
        let pb = crate::progress::bar(items.len() as u64, "evaluate");
        let s = &cfg.segmentation;
        let mut rows = Vec::new();
        let mut infer_secs = 0.0;
        // Inference runs image by image (the model uses every core); what follows per image —
        // PNG encoding, the baselines, the confusion counts — runs in parallel per chunk.
        type Row = (usize, Split, f64, Vec<Option<(Confusion, BoundaryCounts)>>);
        let tol = cfg.boundary;
        for chunk in items.chunks(16) {
            let mut done = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let img = images.get(i)?;
                let t = Instant::now();
                let pred = seg.segment(&img, s, input.device)?;
                infer_secs += t.elapsed().as_secs_f64();
                done.push((i, img, pred));
            }
            let post =
                |(i, img, pred): (usize, std::borrow::Cow<RgbImage>, GrayImage)| -> Result<Row> {
                    let smp = &idx.samples[i];
                    let (pp, op) = (
                        cam::sample_file_mk(&pred_dir, &smp.id, "png")?,
                        cam::sample_file_mk(&ov_dir, &smp.id, "png")?,
                    );
                    std::fs::write(&pp, cam::label_png(&pred)?).map_err(|e| Error::io(&pp, e))?;
                    overlay(&img, &pred)
                        .save(&op)
                        .map_err(|e| Error::io(&op, std::io::Error::other(e)))?;
                    let gt = mask::ground_truth_sized(&idx.spec, smp, pred.dimensions())?;
                    let pseudo = cam::read_labels(&cam::sample_file(&pseudo_dir, &smp.id, "png"))?;
                    let mut conf: Vec<Option<(Confusion, BoundaryCounts)>> =
                        vec![None; Source::ALL.len()];
                    if let Some(gt) = &gt {
                        let (w, h) = pred.dimensions();
                        let otsu = baselines::otsu_haematoxylin(&img);
                        let negative = gate && called_negative.contains(smp.id.as_str());
                        let bg = baselines::constant(w, h, 0);
                        let fg = baselines::constant(w, h, 1);
                        // In `Source::ALL`'s order.
                        let maps: [&GrayImage; 7] = [
                            &pred,
                            &pseudo,
                            &bg,
                            &fg,
                            &otsu,
                            if negative { &bg } else { &pred },
                            if negative { &bg } else { &otsu },
                        ];
                        let outlines = TruthOutlines::new(gt.as_raw(), w, h, 2, &tol);
                        for (k, m) in maps.iter().enumerate() {
                            if k >= 5 && !gate {
                                continue;
                            }
                            let mut c = Confusion::new(2);
                            c.add(gt.as_raw(), m.as_raw());
                            conf[k] = Some((c, outlines.counts(m.as_raw())));
                        }
                    }
                    let fg = pred.as_raw().iter().filter(|&&v| v == 1).count() as f64
                        / pred.as_raw().len().max(1) as f64;
                    Ok((
                        i,
                        split.get(&smp.patient).copied().unwrap_or(Split::Train),
                        fg,
                        conf,
                    ))
                };
            let chunk_rows: Vec<Row> = done.into_par_iter().map(post).collect::<Result<_>>()?;
            pb.inc(chunk_rows.len() as u64);
            rows.extend(chunk_rows);
        }
        pb.finish_and_clear();

        let nan = f64::NAN;
        let mut per = TableBuilder::new()
            .str(
                "id",
                rows.iter().map(|r| idx.samples[r.0].id.clone()).collect(),
            )
            .str(
                "patient",
                rows.iter()
                    .map(|r| idx.samples[r.0].patient.clone())
                    .collect(),
            )
            .str(
                "class",
                rows.iter()
                    .map(|r| idx.spec.classes[idx.samples[r.0].class].clone())
                    .collect(),
            )
            .str("split", rows.iter().map(|r| r.1.to_string()).collect())
            .f64("fg_fraction", rows.iter().map(|r| r.2).collect())
            .f64(
                "iou_foreground",
                rows.iter()
                    .map(|r| r.3[0].as_ref().map_or(nan, |c| c.0.scores().iou[1]))
                    .collect(),
            )
            .f64(
                "miou",
                rows.iter()
                    .map(|r| r.3[0].as_ref().map_or(nan, |c| c.0.scores().miou))
                    .collect(),
            )
            .f64(
                "pseudo_miou",
                rows.iter()
                    .map(|r| r.3[1].as_ref().map_or(nan, |c| c.0.scores().miou))
                    .collect(),
            )
            .build()?;
        table::write(&mut per, out, Table::SegImages.stem())?;

        let (mut m_split, mut m_source, mut m_metric, mut m_value) =
            (vec![], vec![], vec![], vec![]);
        let mut summary = serde_json::Map::new();
        for sp in [Split::Train, Split::Valid, Split::Test] {
            for (k, &source) in Source::ALL.iter().enumerate() {
                let (mut cm, mut bc) = (Confusion::new(2), BoundaryCounts::new(2));
                let mut any = false;
                for r in rows.iter().filter(|r| r.1 == sp) {
                    if let Some((c, b)) = &r.3[k] {
                        cm.merge(c);
                        bc.merge(b);
                        any = true;
                    }
                }
                if !any {
                    continue;
                }
                let sc = cm.scores();
                let key = if source == Source::Segmenter {
                    format!("{sp}_miou")
                } else {
                    format!("{sp}_{source}_miou")
                };
                summary.insert(key, sc.miou.into());
                if source == Source::Segmenter {
                    summary.insert(format!("{sp}_dice_foreground"), sc.dice[1].into());
                }
                let bs = bc.scores();
                if !source.is_baseline() {
                    let pre = if source == Source::Segmenter {
                        format!("{sp}")
                    } else {
                        format!("{sp}_{source}")
                    };
                    summary.insert(format!("{pre}_boundary_f"), bs.mean_f.into());
                    summary.insert(format!("{pre}_boundary_iou"), bs.mean_iou.into());
                }
                for (name, v) in sc.pairs().into_iter().chain(bs.pairs()) {
                    m_split.push(sp.to_string());
                    m_source.push(source.to_string());
                    m_metric.push(name);
                    m_value.push(v);
                }
            }
        }
        let mut metrics = TableBuilder::new()
            .str(col::SPLIT, m_split)
            .str(col::SOURCE, m_source)
            .str(col::METRIC, m_metric)
            .f64(col::VALUE, m_value)
            .build()?;
        table::write(&mut metrics, out, Table::SegMetrics.stem())?;
        summary.insert(
            "inference_images_per_s".into(),
            (items.len() as f64 / infer_secs.max(1e-9)).into(),
        );
        summary.insert("seconds".into(), t0.elapsed().as_secs_f64().into());
        write_json(&out.join("evaluate_summary.json"), &summary)
    }

    fn publish(&self, entry: &Path, run_dir: &Path) -> Result<()> {
        publish_files(entry, run_dir, PUBLISHED)?;
        link_dir(&entry.join(PRED_DIR), &run_dir.join(PRED_DIR))?;
        link_dir(&entry.join(OVERLAY_DIR), &run_dir.join(OVERLAY_DIR))
    }
}
