//! The `pseudo` stage: the talk's confidence threshold turns each normalised CAM into a pseudo
//! segmentation label (optionally refined to boundaries first, optionally with an ignore
//! band), written as palette PNGs; and the labels' quality on every split with masks, per image
//! and dataset-level, beside whether the classifier got the image right ("evidence accuracy"
//! next to classification accuracy).
//!
//! Per image: foreground and ignore fractions, foreground IoU and mIoU against the mask, and the
//! pointing game (is the CAM's maximum inside the true foreground? positive images with
//! foreground only). Per split: the dataset-level confusion-matrix scores (see
//! [`crate::metrics::segmentation`] for how background and ignore count), and the mean
//! foreground IoU and pointing-game accuracy of correctly and wrongly classified images.
//!
//! Images of the negative class are all background in their pseudo label — except under
//! patch-level labels (`labels.level = "patch"`), where any image may hold foreground and the
//! stored map is the foreground/background margin, so `cam.threshold = 0.5` is the argmax rule.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use super::cam_stage::CAM_DIR;
use serde::Serialize;

use super::cam_stage::cam_layer;
use super::stage::{SliceInput, Stage, StageInput};
use crate::cam::{self, refine, CamView};
use crate::config::{CrfConfig, GcnConfig, HaematoxylinConfig, Refine};
use crate::data::protocol::Protocol;
use crate::data::{mask, Split};
use crate::error::{Error, Result};
use crate::metrics::segmentation::Confusion;
use crate::table::{self, TableBuilder};
use crate::train::classify::{self, Classifier, ClassifierConfig};
use crate::util::fs::{link_dir, mkdirs, publish_files, write_json};

/// See the module docs.
pub struct PseudoStage;

/// Folder of pseudo-label PNGs inside the entry (and the run directory).
pub const LABEL_DIR: &str = "pseudo_labels";

const PUBLISHED: &[&str] = &[
    "pseudo_images.parquet",
    "pseudo_images.csv",
    "pseudo_metrics.parquet",
    "pseudo_metrics.csv",
    "pseudo_summary.json",
];

struct Row {
    id: String,
    patient: String,
    class: String,
    split: Split,
    predicted: String,
    correct: Option<bool>,
    fg_fraction: f64,
    ignore_fraction: f64,
    iou_fg: f64,
    miou: f64,
    pointing: f64,
    confusion: Option<Confusion>,
    pixels: u64,
}

/// `id → (predicted class, correct)` from the classify stage's predictions table.
fn predictions(classify_dir: &Path) -> Result<HashMap<String, (String, bool)>> {
    let path = classify_dir.join("predictions.csv");
    let bad = |e: csv::Error| Error::stage("pseudo", format!("{}: {e}", path.display()));
    let mut rdr = csv::Reader::from_path(&path).map_err(bad)?;
    let h = rdr.headers().map_err(bad)?.clone();
    let col = |n: &str| {
        h.iter()
            .position(|c| c == n)
            .ok_or_else(|| Error::stage("pseudo", format!("{}: no column `{n}`", path.display())))
    };
    let (ci, cp, cc) = (col("id")?, col("predicted")?, col("correct")?);
    let mut out = HashMap::new();
    for r in rdr.records() {
        let r = r.map_err(bad)?;
        out.insert(r[ci].to_string(), (r[cp].to_string(), &r[cc] == "true"));
    }
    Ok(out)
}

/// A positive image's pseudo label with less foreground than this share is reported as nearly
/// empty (`positive_nearly_empty` in `pseudo_summary.json`, and a warning naming them).
pub const EMPTY_FOREGROUND: f64 = 0.01;

/// The ids of the positive images (`(id, positive, foreground share)`) whose pseudo label has
/// less than [`EMPTY_FOREGROUND`] foreground.
fn nearly_empty<'a>(rows: impl Iterator<Item = (&'a str, bool, f64)>) -> Vec<&'a str> {
    rows.filter(|&(_, positive, fg)| positive && fg < EMPTY_FOREGROUND)
        .map(|(id, _, _)| id)
        .collect()
}

/// What the pseudo stage reads: the thresholds (the background one resolved), the
/// refinement method with its settings, and whether every image may hold foreground
/// (patch-level labels: none is forced to background).
#[derive(Debug, Serialize)]
pub struct PseudoSlice {
    threshold: f64,
    background_threshold: f64,
    refine: Refine,
    /// `[cam.crf]`, read only with `refine = "crf"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    crf: Option<CrfConfig>,
    /// What `refine = "gcn"` reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    gcn: Option<GcnSlice>,
    /// `[cam.haematoxylin]`, read only with `refine = "haematoxylin"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    haematoxylin: Option<HaematoxylinConfig>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    every_image_positive: bool,
}

/// What the GCN reads besides the CAM: its settings and the classifier whose features it pools
/// (built as the classify stage built it, read at the CAM's block, seen as the CAM saw the
/// image); the classifier's `train.seed` seeds the networks.
#[derive(Debug, Serialize)]
pub struct GcnSlice {
    settings: GcnConfig,
    classifier: ClassifierConfig,
    layer: String,
}

impl PseudoSlice {
    /// The refinement method (see [`refine`]).
    fn method(&self) -> Result<Box<dyn refine::Refiner>> {
        let missing = |what: &str| {
            Error::stage(
                "pseudo",
                format!(
                    "cam.refine = \"{what}\" reached the stage without its [cam.{what}] settings"
                ),
            )
        };
        let crf = match (self.refine, self.crf) {
            (Refine::Crf, None) => return Err(missing("crf")),
            (_, c) => c.unwrap_or_default(),
        };
        let gcn = match (self.refine, &self.gcn) {
            (Refine::Gcn, None) => return Err(missing("gcn")),
            (_, g) => g.as_ref().map(|g| g.settings).unwrap_or_default(),
        };
        let haematoxylin = match (self.refine, self.haematoxylin) {
            (Refine::Haematoxylin, None) => return Err(missing("haematoxylin")),
            (_, h) => h.unwrap_or_default(),
        };
        Ok(refine::refiner(
            self.refine,
            &refine::Settings {
                crf,
                gcn,
                haematoxylin,
            },
        ))
    }
}

/// The trained classifier and how it sees an image, for methods that read its features.
struct FeatureSource {
    classifier: Classifier,
    view: CamView,
    layer: usize,
}

/// Seed of one image's randomness: the run's seed mixed with the sample id (FNV-1a), so an
/// image's pseudo label does not depend on which other images are in the run.
fn image_seed(seed: u64, id: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Stage for PseudoStage {
    type Slice = PseudoSlice;
    fn name(&self) -> &'static str {
        "pseudo"
    }
    fn version(&self) -> u32 {
        // 2: the GCN's feature maps read images resized by data::resize (SIMD).
        2
    }
    fn upstream(&self) -> &'static [&'static str] {
        &["data", "classify", "cam"]
    }
    fn slice(&self, input: &SliceInput) -> PseudoSlice {
        let c = &input.config.cam;
        PseudoSlice {
            threshold: c.threshold,
            background_threshold: c.background_threshold.unwrap_or(c.threshold),
            refine: c.refine,
            crf: (c.refine == Refine::Crf).then_some(c.crf),
            gcn: (c.refine == Refine::Gcn).then(|| GcnSlice {
                settings: c.gcn,
                classifier: ClassifierConfig::of(input.config),
                layer: input.config.backbone.cam_layer.clone(),
            }),
            haematoxylin: (c.refine == Refine::Haematoxylin).then_some(c.haematoxylin),
            every_image_positive: Protocol::of(&input.config.labels).every_image_positive(),
        }
    }

    fn run(
        &self,
        cfg: &PseudoSlice,
        input: &StageInput,
        out: &Path,
        _scratch: &Path,
    ) -> Result<()> {
        let t0 = Instant::now();
        let every_positive = cfg.every_image_positive;
        let (fg_t, bg_t) = (cfg.threshold, cfg.background_threshold);
        let idx = input.dataset;
        let (split, bytes) = super::data_stage::load_split(input.upstream_dir("data")?, "pseudo")?;
        let preds = predictions(input.upstream_dir("classify")?)?;
        let cam_dir = input.upstream_dir("cam")?.join(CAM_DIR);
        let dir = out.join(LABEL_DIR);
        mkdirs(&dir)?;
        let images = super::data_stage::images(input, bytes)?;
        let items: Vec<usize> = (0..idx.samples.len())
            .filter(|&i| split.contains_key(&idx.samples[i].patient))
            .collect();
        let method = cfg.method()?;
        let needs = method.needs();
        // The classifier, for the methods that read its features (`method()` has checked
        // that such a method came with its settings).
        let features = match (&cfg.gcn, needs.features) {
            (Some(g), true) => Some(FeatureSource {
                classifier: Classifier::load(
                    &g.classifier,
                    classify::outputs(&g.classifier, idx),
                    input.device,
                    &input
                        .upstream_dir("classify")?
                        .join("classifier.safetensors"),
                )?,
                view: CamView::of(
                    &Protocol::of(&g.classifier.labels),
                    g.classifier.train.image_size,
                ),
                layer: cam_layer(&g.layer),
            }),
            _ => None,
        };
        let run_seed = cfg.gcn.as_ref().map_or(0, |g| g.classifier.train.seed);
        let fallbacks = std::sync::atomic::AtomicUsize::new(0);
        let pb = crate::progress::bar(items.len() as u64, "pseudo");
        let rows: Vec<Result<Row>> = items
            .par_iter()
            .map(|&i| {
                let s = &idx.samples[i];
                let cam_path = cam::sample_file(&cam_dir, &s.id, "png");
                let raw = image::open(&cam_path)
                    .map_err(|e| Error::stage("pseudo", format!("{}: {e}", cam_path.display())))?
                    .into_luma8();
                let positive = every_positive || s.class == idx.spec.positive;
                let img = if positive && needs.image {
                    Some(images.get(i)?)
                } else {
                    None
                };
                let feats = match (&features, &img) {
                    (Some(f), Some(im)) => Some(cam::feature_map(
                        &f.classifier.model,
                        im,
                        f.view,
                        f.layer,
                        input.device,
                    )?),
                    _ => None,
                };
                let refine_input = refine::RefineInput {
                    cam: &raw,
                    image: img.as_deref(),
                    features: feats.as_ref(),
                    threshold: fg_t,
                    seed: image_seed(run_seed, &s.id),
                };
                let (label, fell_back) =
                    refine::label(method.as_ref(), &refine_input, fg_t, bg_t, positive).map_err(
                        |e| Error::stage("pseudo", format!("{}: {e}", cam_path.display())),
                    )?;
                if fell_back {
                    fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let png = cam::label_png(&label)?;
                let p = cam::sample_file_mk(&dir, &s.id, "png")?;
                std::fs::write(&p, png).map_err(|e| Error::io(&p, e))?;
                let n = label.as_raw().len().max(1) as f64;
                let fg = label.as_raw().iter().filter(|&&v| v == 1).count() as f64 / n;
                let ig = label
                    .as_raw()
                    .iter()
                    .filter(|&&v| v == mask::IGNORE)
                    .count() as f64
                    / n;
                let (mut iou_fg, mut miou, mut pointing, mut confusion) =
                    (f64::NAN, f64::NAN, f64::NAN, None);
                if let Some(gt) = mask::ground_truth_sized(&idx.spec, s, label.dimensions())? {
                    let mut cm = Confusion::new(2);
                    cm.add(gt.as_raw(), label.as_raw());
                    let sc = cm.scores();
                    iou_fg = sc.iou[1];
                    miou = sc.miou;
                    if positive && gt.as_raw().contains(&1) {
                        // The CAM's (first) maximum, before refinement.
                        let (arg, _) = raw
                            .as_raw()
                            .iter()
                            .enumerate()
                            .fold((0usize, 0u8), |a, (j, &v)| if v > a.1 { (j, v) } else { a });
                        pointing = f64::from(u8::from(gt.as_raw()[arg] == 1));
                    }
                    confusion = Some(cm);
                }
                let (predicted, correct) = match preds.get(&s.id) {
                    Some((p, c)) => (p.clone(), Some(*c)),
                    None => (String::new(), None),
                };
                pb.inc(1);
                Ok(Row {
                    id: s.id.clone(),
                    patient: s.patient.clone(),
                    class: idx.spec.classes[s.class].clone(),
                    split: split.get(&s.patient).copied().unwrap_or(Split::Train),
                    predicted,
                    correct,
                    fg_fraction: fg,
                    ignore_fraction: ig,
                    iou_fg,
                    miou,
                    pointing,
                    confusion,
                    pixels: label.as_raw().len() as u64,
                })
            })
            .collect();
        pb.finish_and_clear();
        let rows: Vec<Row> = rows.into_iter().collect::<Result<_>>()?;
        let secs = t0.elapsed().as_secs_f64();
        let megapixels = rows.iter().map(|r| r.pixels).sum::<u64>() as f64 / 1e6;

        let mut images_t = TableBuilder::new()
            .str("id", rows.iter().map(|r| r.id.clone()).collect())
            .str("patient", rows.iter().map(|r| r.patient.clone()).collect())
            .str("class", rows.iter().map(|r| r.class.clone()).collect())
            .str(
                crate::table::schema::col::SPLIT,
                rows.iter().map(|r| r.split.to_string()).collect(),
            )
            .str(
                "predicted",
                rows.iter().map(|r| r.predicted.clone()).collect(),
            )
            .str(
                "correct",
                rows.iter()
                    .map(|r| r.correct.map_or(String::new(), |c| c.to_string()))
                    .collect(),
            )
            .f64("fg_fraction", rows.iter().map(|r| r.fg_fraction).collect())
            .f64(
                "ignore_fraction",
                rows.iter().map(|r| r.ignore_fraction).collect(),
            )
            .f64("iou_foreground", rows.iter().map(|r| r.iou_fg).collect())
            .f64("miou", rows.iter().map(|r| r.miou).collect())
            .f64("pointing_hit", rows.iter().map(|r| r.pointing).collect())
            .build()?;
        table::write(&mut images_t, out, crate::table::Table::PseudoImages.stem())?;

        let (mut m_split, mut m_metric, mut m_value) = (vec![], vec![], vec![]);
        let mut summary = serde_json::Map::new();
        for s in [Split::Train, Split::Valid, Split::Test] {
            let rs: Vec<&Row> = rows.iter().filter(|r| r.split == s).collect();
            let mut cm = Confusion::new(2);
            let mut any = false;
            for r in &rs {
                if let Some(c) = &r.confusion {
                    cm.merge(c);
                    any = true;
                }
            }
            if !any {
                continue;
            }
            let sc = cm.scores();
            summary.insert(format!("{s}_miou"), sc.miou.into());
            let mut pairs = sc.pairs();
            let mean = |v: Vec<f64>| {
                let v: Vec<f64> = v.into_iter().filter(|x| !x.is_nan()).collect();
                if v.is_empty() {
                    f64::NAN
                } else {
                    v.iter().sum::<f64>() / v.len() as f64
                }
            };
            for (label, want) in [("correct", true), ("misclassified", false)] {
                let sel: Vec<&&Row> = rs
                    .iter()
                    .filter(|r| {
                        r.correct == Some(want) && r.class == idx.spec.classes[idx.spec.positive]
                    })
                    .collect();
                pairs.push((format!("positive_images_{label}"), sel.len() as f64));
                pairs.push((
                    format!("mean_iou_foreground_{label}"),
                    mean(sel.iter().map(|r| r.iou_fg).collect()),
                ));
                pairs.push((
                    format!("pointing_game_{label}"),
                    mean(sel.iter().map(|r| r.pointing).collect()),
                ));
            }
            for (k, v) in pairs {
                m_split.push(s.to_string());
                m_metric.push(k);
                m_value.push(v);
            }
        }
        let mut metrics = TableBuilder::new()
            .str(crate::table::schema::col::SPLIT, m_split)
            .str(crate::table::schema::col::METRIC, m_metric)
            .f64(crate::table::schema::col::VALUE, m_value)
            .build()?;
        table::write(&mut metrics, out, crate::table::Table::PseudoMetrics.stem())?;
        summary.insert("threshold".into(), fg_t.into());
        summary.insert("background_threshold".into(), bg_t.into());
        summary.insert(
            "refine".into(),
            serde_json::to_value(cfg.refine).unwrap_or_default(),
        );
        summary.insert("images".into(), rows.len().into());
        let fallbacks = fallbacks.into_inner();
        if fallbacks > 0 {
            tracing::warn!(
                "cam.refine = \"{}\" fell back on {fallbacks} of {} images ({})",
                method.name(),
                rows.len(),
                method.fallback_note()
            );
        }
        summary.insert("refine_fallbacks".into(), fallbacks.into());
        let pos: Vec<f64> = rows
            .iter()
            .filter(|r| r.class == idx.spec.classes[idx.spec.positive])
            .map(|r| r.fg_fraction)
            .collect();
        summary.insert(
            "positive_fg_fraction".into(),
            (pos.iter().sum::<f64>() / pos.len().max(1) as f64).into(),
        );
        // A positive image whose pseudo label is (nearly) all background teaches "this tissue
        // is background" and scores the labels low, silently: name them.
        let empty = nearly_empty(rows.iter().map(|r| {
            (
                r.id.as_str(),
                r.class == idx.spec.classes[idx.spec.positive],
                r.fg_fraction,
            )
        }));
        if !empty.is_empty() {
            tracing::warn!(
                "{} of {} positive images have less than {} % foreground in their pseudo labels \
                 (cam.threshold {fg_t}, cam.refine = \"{}\"): {}{}",
                empty.len(),
                pos.len(),
                100.0 * EMPTY_FOREGROUND,
                method.name(),
                empty
                    .iter()
                    .take(10)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
                if empty.len() > 10 { ", …" } else { "" }
            );
        }
        summary.insert("positive_nearly_empty".into(), empty.len().into());
        summary.insert(
            "megapixels_per_s".into(),
            (megapixels / secs.max(1e-9)).into(),
        );
        summary.insert("seconds".into(), secs.into());
        write_json(&out.join("pseudo_summary.json"), &summary)
    }

    fn publish(&self, entry: &Path, run_dir: &Path) -> Result<()> {
        publish_files(entry, run_dir, PUBLISHED)?;
        link_dir(&entry.join(LABEL_DIR), &run_dir.join(LABEL_DIR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearly_empty_names_positive_images_under_one_percent_only() {
        let rows = [
            ("a", true, 0.0),
            ("b", true, 0.0099),
            ("c", true, 0.01),
            ("d", false, 0.0),
            ("e", true, 0.5),
        ];
        assert_eq!(nearly_empty(rows.into_iter()), ["a", "b"]);
    }
}
