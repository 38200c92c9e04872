//! The `cam` stage: the trained classifier's evidence map for the positive class on every
//! image (all splits), stored as normalised 8-bit PNGs at each image's own size, and the CAM's
//! quality against ground truth wherever masks exist — independent of any threshold.
//!
//! Threshold-free quality: per split, the histogram of CAM values over ground-truth foreground
//! and background pixels of positive-class images (negative-class images are all background
//! in every pseudo label) gives the confusion matrix of *every* threshold at once, hence the
//! mIoU–threshold curve, the best threshold on a 1/255 grid and the area under the curve.
//! Its key depends on the classifier and the CAM options, not on `cam.threshold`: a threshold
//! sweep computes CAMs once.
//!
//! With patch-level labels (`labels.level = "patch"`) the stored map is the stitched margin of
//! the foreground and background CAMs ([`crate::cam::patch`]); windows of training images
//! carry their mask-derived labels, windows of other images the classifier's predictions.
//! Every image then counts as a positive image in the histograms (foreground can be anywhere).
//!
//! With image labels learned on windows (`labels.level = "image-windows"`) the stored map is the
//! positive class's CAM over the whole image at the windows' scale, normalised per image.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use serde::Serialize;

use super::stage::{SliceInput, Stage, StageInput};
use crate::cam::{self, CamSettings};
use crate::config::{CamBalance, CamMethod, CamNorm, LabelLevel};
use crate::data::loader::Images;
use crate::data::patches::{self, Patch};
use crate::data::protocol::Protocol;
use crate::data::DatasetIndex;
use crate::data::{mask, Split};
use crate::error::{Error, Result};
use crate::metrics::segmentation::Confusion;
use crate::model::backbone::BLOCKS;
use crate::table::{self, TableBuilder};
use crate::train::classify::{self, Classifier, ClassifierConfig};
use crate::util::fs::{link_dir, mkdirs, publish_files, write_json};
use candle_core::Device;
use image::{GrayImage, RgbImage};

/// See the module docs.
pub struct CamStage;

/// What the CAM stage reads: the classifier it loads (built as the classify stage built it),
/// the CAM options, the block the CAM reads and how the image border is mapped. Not
/// `cam.threshold`: the stage's quality measures hold for every threshold at once.
#[derive(Debug, Serialize)]
pub struct CamSlice {
    classifier: ClassifierConfig,
    cam: CamOptions,
    layer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    border: Option<String>,
}

/// The `[cam]` options that shape the maps.
#[derive(Debug, Serialize)]
struct CamOptions {
    method: CamMethod,
    tta: bool,
    normalize: CamNorm,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    contrast: bool,
    #[serde(skip_serializing_if = "CamBalance::is_none")]
    balance: CamBalance,
}

const PUBLISHED: &[&str] = &[
    "cam_curve.parquet",
    "cam_curve.csv",
    "cam_quality.parquet",
    "cam_quality.csv",
    "cam_summary.json",
];

/// Folder of CAM PNGs inside the entry (and the run directory).
pub const CAM_DIR: &str = "cams";

/// Block index of `backbone.cam_layer`.
pub fn cam_layer(s: &str) -> usize {
    s.parse::<usize>().unwrap_or(BLOCKS - 1)
}

/// Per-split histograms: CAM value counts over truth-foreground and truth-background pixels
/// of positive images, and the truth counts of negative images.
#[derive(Clone)]
struct Hist {
    fg: [u64; 256],
    bg: [u64; 256],
    neg_fg: u64,
    neg_bg: u64,
}

impl Hist {
    fn new() -> Self {
        Self {
            fg: [0; 256],
            bg: [0; 256],
            neg_fg: 0,
            neg_bg: 0,
        }
    }

    /// The histograms of the maps after [`cam::patch::shift`] by `delta` levels.
    fn shift(&mut self, delta: i32) {
        for counts in [&mut self.fg, &mut self.bg] {
            let mut moved = [0u64; 256];
            for (v, &c) in counts.iter().enumerate() {
                moved[cam::patch::shift_level(v as u8, delta) as usize] += c;
            }
            *counts = moved;
        }
    }

    /// Confusion of the rule "foreground iff stored value ≥ `level`".
    fn confusion_at(&self, level: usize) -> Confusion {
        let mut c = Confusion::new(2);
        let tp: u64 = self.fg[level.min(256)..].iter().sum();
        let fneg: u64 = self.fg[..level.min(256)].iter().sum::<u64>() + self.neg_fg;
        let fp: u64 = self.bg[level.min(256)..].iter().sum();
        let tn: u64 = self.bg[..level.min(256)].iter().sum::<u64>() + self.neg_bg;
        c.add_count(1, 1, tp);
        c.add_count(1, 0, fneg);
        c.add_count(0, 1, fp);
        c.add_count(0, 0, tn);
        c
    }
}

/// Smallest stored value counted as ≥ `t` (256 = none).
fn level(t: f64) -> usize {
    (0..=255u8)
        .find(|&v| cam::at_least(v, t))
        .map_or(256, |v| v as usize)
}

impl Stage for CamStage {
    type Slice = CamSlice;
    fn name(&self) -> &'static str {
        "cam"
    }
    fn version(&self) -> u32 {
        // 2: Winograd 3×3 convolutions and the bilinear-resize kernel (maps move in the last
        // bits).
        // 3: images resized by data::resize (SIMD; within 2 grey levels of the image crate's).
        3
    }
    fn upstream(&self) -> &'static [&'static str] {
        &["data", "classify"]
    }
    fn slice(&self, input: &SliceInput) -> CamSlice {
        let c = input.config;
        CamSlice {
            classifier: ClassifierConfig::of(c),
            cam: CamOptions {
                method: c.cam.method,
                tta: c.cam.tta,
                normalize: c.cam.normalize,
                contrast: c.cam.contrast,
                balance: c.cam.balance,
            },
            layer: c.backbone.cam_layer.clone(),
            border: (c.labels.level == LabelLevel::ImageWindows).then(|| "reflect".to_string()),
        }
    }

    fn run(&self, cfg: &CamSlice, input: &StageInput, out: &Path, _scratch: &Path) -> Result<()> {
        let t0 = Instant::now();
        let idx = input.dataset;
        let (split, bytes) = super::data_stage::load_split(input.upstream_dir("data")?, "cam")?;
        let clf = Classifier::load(
            &cfg.classifier,
            classify::outputs(&cfg.classifier, idx),
            input.device,
            &input
                .upstream_dir("classify")?
                .join("classifier.safetensors"),
        )?;
        let protocol = Protocol::of(&cfg.classifier.labels);
        let patch = protocol.every_image_positive();
        let settings = CamSettings {
            method: cfg.cam.method,
            layer: cam_layer(&cfg.layer),
            tta: cfg.cam.tta,
            normalize: cfg.cam.normalize,
            size: cfg.classifier.train.image_size,
            contrast: cfg.cam.contrast,
            class: protocol.cam_class(&idx.spec),
        };
        let images = super::data_stage::images(input, bytes)?;
        let dir = out.join(CAM_DIR);
        mkdirs(&dir)?;
        let items: Vec<usize> = (0..idx.samples.len())
            .filter(|&i| split.contains_key(&idx.samples[i].patient))
            .collect();
        let bs = (cfg.classifier.train.batch_size as usize).max(1);
        let splits = [Split::Train, Split::Valid, Split::Test];
        let mut hists = vec![Hist::new(); splits.len()];
        let mut with_mask = vec![0usize; splits.len()];
        let mut cam_secs = 0.0;
        // `cam.balance = "median"`: margins of the training images' two-label windows.
        let mut two_label_hist = [0u64; 256];
        let window_cams = WindowCams {
            clf: &clf,
            cfg,
            idx,
            images: &images,
            settings: &settings,
            dev: input.device,
        };
        let pb = crate::progress::bar(items.len() as u64, "cam");
        for chunk in items.chunks(bs) {
            let t = Instant::now();
            let decoded: Vec<_> = chunk
                .iter()
                .map(|&i| images.get(i))
                .collect::<Result<_>>()?;
            let refs: Vec<&image::RgbImage> = decoded.iter().map(|c| c.as_ref()).collect();
            let maps = if patch {
                chunk
                    .iter()
                    .zip(&refs)
                    .map(|(&i, img)| {
                        let train = split.get(&idx.samples[i].patient) == Some(&Split::Train);
                        let (d, wins) = window_cams.map(i, img, train)?;
                        if train {
                            let both = cam::patch::two_label_pixels(d.dimensions(), &wins);
                            for (v, b) in d.as_raw().iter().zip(both) {
                                two_label_hist[*v as usize] += u64::from(b);
                            }
                        }
                        Ok(d)
                    })
                    .collect::<Result<Vec<_>>>()?
            } else if cfg.classifier.labels.windows() {
                refs.iter()
                    .map(|img| window_cams.whole(img))
                    .collect::<Result<Vec<_>>>()?
            } else {
                cam::cams(&clf.model, &refs, &settings, input.device)?
            };
            cam_secs += t.elapsed().as_secs_f64();
            let per: Vec<Result<Option<(usize, Hist)>>> = chunk
                .par_iter()
                .zip(&maps)
                .map(|(&i, m)| {
                    let s = &idx.samples[i];
                    let path = cam::sample_file_mk(&dir, &s.id, "png")?;
                    m.save(&path)
                        .map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
                    let Some(gt) = mask::ground_truth_sized(&idx.spec, s, m.dimensions())? else {
                        return Ok(None);
                    };
                    let Some(si) = splits.iter().position(|x| Some(x) == split.get(&s.patient))
                    else {
                        return Ok(None);
                    };
                    let mut h = Hist::new();
                    let positive = patch || s.class == idx.spec.positive;
                    for (g, v) in gt.as_raw().iter().zip(m.as_raw()) {
                        match (*g, positive) {
                            (mask::IGNORE, _) => {}
                            (0, true) => h.bg[*v as usize] += 1,
                            (_, true) => h.fg[*v as usize] += 1,
                            (0, false) => h.neg_bg += 1,
                            (_, false) => h.neg_fg += 1,
                        }
                    }
                    Ok(Some((si, h)))
                })
                .collect();
            for r in per {
                if let Some((si, h)) = r? {
                    let acc = &mut hists[si];
                    for v in 0..256 {
                        acc.fg[v] += h.fg[v];
                        acc.bg[v] += h.bg[v];
                    }
                    acc.neg_fg += h.neg_fg;
                    acc.neg_bg += h.neg_bg;
                    with_mask[si] += 1;
                }
            }
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        // Recentre after the fact: shifting is a map of stored levels, so the stored maps are
        // rewritten and the quality histograms remapped, without a second network pass.
        let mut balance_delta = 0i32;
        if patch && cfg.cam.balance == CamBalance::Median {
            balance_delta = 128 - cam::patch::median_level(&two_label_hist) as i32;
            tracing::info!("cam.balance: margin shifted by {balance_delta}/255");
            items.par_iter().try_for_each(|&i| -> Result<()> {
                let path = cam::sample_file(&dir, &idx.samples[i].id, "png");
                let bad = |e: image::ImageError| Error::io(&path, std::io::Error::other(e));
                let mut m = image::open(&path).map_err(bad)?.into_luma8();
                cam::patch::shift(&mut m, balance_delta);
                m.save(&path).map_err(bad)
            })?;
            for h in &mut hists {
                h.shift(balance_delta);
            }
        }

        // Curves and threshold-free scores.
        let (mut c_split, mut c_t, mut c_miou, mut c_fg, mut c_prec, mut c_rec) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut q_split, mut q_metric, mut q_value) = (vec![], vec![], vec![]);
        for (si, s) in splits.iter().enumerate() {
            if with_mask[si] == 0 {
                continue;
            }
            let h = &hists[si];
            let mut curve = Vec::new();
            for k in 0..=100 {
                let t = k as f64 / 100.0;
                let sc = h.confusion_at(level(t)).scores();
                c_split.push(s.to_string());
                c_t.push(t);
                c_miou.push(sc.miou);
                c_fg.push(sc.iou[1]);
                c_prec.push(sc.precision);
                c_rec.push(sc.recall);
                curve.push(sc.miou);
            }
            let auc = curve
                .windows(2)
                .map(|w| (w[0] + w[1]) / 2.0 * 0.01)
                .sum::<f64>();
            let (best_level, best) = (0..=256usize)
                .map(|l| (l, h.confusion_at(l).scores().miou))
                .filter(|(_, m)| !m.is_nan())
                .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
            for (name, v) in [
                ("images_with_masks", with_mask[si] as f64),
                ("best_threshold", best_level as f64 / 255.0),
                ("best_miou", best),
                ("miou_auc", auc),
            ] {
                q_split.push(s.to_string());
                q_metric.push(name.to_string());
                q_value.push(v);
            }
        }
        let mut curve = TableBuilder::new()
            .str(crate::table::schema::col::SPLIT, c_split)
            .f64("threshold", c_t)
            .f64("miou", c_miou)
            .f64("iou_foreground", c_fg)
            .f64("precision", c_prec)
            .f64("recall", c_rec)
            .build()?;
        table::write(&mut curve, out, crate::table::Table::CamCurve.stem())?;
        let mut quality = TableBuilder::new()
            .str(crate::table::schema::col::SPLIT, q_split)
            .str(crate::table::schema::col::METRIC, q_metric)
            .f64(crate::table::schema::col::VALUE, q_value)
            .build()?;
        table::write(&mut quality, out, crate::table::Table::CamQuality.stem())?;
        write_json(
            &out.join("cam_summary.json"),
            &serde_json::json!({
                "method": cfg.cam.method,
                "layer": settings.layer,
                "tta": cfg.cam.tta,
                "images": items.len(),
                "balance_shift": balance_delta as f64 / 255.0,
                "cam_images_per_s": if cam_secs > 0.0 { items.len() as f64 / cam_secs } else { 0.0 },
                "seconds": t0.elapsed().as_secs_f64(),
            }),
        )
    }

    fn publish(&self, entry: &Path, run_dir: &Path) -> Result<()> {
        publish_files(entry, run_dir, PUBLISHED)?;
        link_dir(&entry.join(CAM_DIR), &run_dir.join(CAM_DIR))
    }
}

/// What the maps of window-trained classifiers need: the stitched margin maps of patch-level
/// labels, and the whole-image CAMs of image labels learned on windows.
struct WindowCams<'a> {
    clf: &'a Classifier,
    cfg: &'a CamSlice,
    idx: &'a DatasetIndex,
    images: &'a Images<'a>,
    settings: &'a CamSettings,
    dev: &'a Device,
}

impl WindowCams<'_> {
    /// The margin map of sample `i` (unshifted) and its labelled windows: a training image's
    /// windows carry their mask-derived labels, the others the classifier's predicted labels.
    fn map(&self, i: usize, img: &RgbImage, train: bool) -> Result<(GrayImage, Vec<Patch>)> {
        let (cfg, l) = (self.cfg, &self.cfg.classifier.labels);
        let wins = if train {
            patches::for_samples(self.idx, &[i], l)?
        } else {
            let mut wins: Vec<Patch> =
                patches::windows(img.dimensions(), l.patch_size, l.patch_stride)
                    .into_iter()
                    .map(|(x, y, w, h)| Patch {
                        sample: i,
                        x,
                        y,
                        w,
                        h,
                        labels: [false; 2],
                    })
                    .collect();
            let batch = (cfg.classifier.train.batch_size as usize * 2).max(1);
            let pr = self.clf.predict(
                self.images,
                &wins,
                cfg.classifier.train.image_size,
                batch,
                true,
                self.dev,
            )?;
            for (p, q) in wins.iter_mut().zip(&pr.probs) {
                p.labels = [q[patches::BACKGROUND] >= 0.5, q[patches::FOREGROUND] >= 0.5];
            }
            wins
        };
        let scale = cfg.classifier.train.image_size as f64 / l.patch_size as f64;
        let maps = cam::patch::label_maps(&self.clf.model, img, self.settings, scale, self.dev)?;
        let d = cam::patch::stitch(&maps, img.dimensions(), &wins, cfg.cam.normalize);
        Ok((d, wins))
    }

    /// Image labels learned on windows: the positive class's CAM over the whole image, at the
    /// scale the classifier saw windows (`train.image_size / labels.patch_size`), the image
    /// mirrored outward by half a window so its border is mapped like its interior, normalised
    /// per image.
    fn whole(&self, img: &RgbImage) -> Result<GrayImage> {
        let l = &self.cfg.classifier.labels;
        let size = self.cfg.classifier.train.image_size;
        let scale = size as f64 / l.patch_size as f64;
        let class = self.settings.class;
        let mut maps = cam::patch::full_maps(
            &self.clf.model,
            img,
            self.settings,
            scale,
            size / 2,
            &[class],
            self.dev,
        )?;
        let m = maps.pop().unwrap_or_default();
        let (w, h) = img.dimensions();
        Ok(cam::quantize(
            &cam::normalize(&m, self.cfg.cam.normalize),
            w,
            h,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifting_the_histogram_equals_shifting_the_maps() {
        let vals: Vec<u8> = vec![0, 1, 60, 127, 128, 200, 254, 255, 90];
        let truth = [1, 0, 1, 0, 1, 1, 0, 0, 1];
        let count = |vs: &[u8]| {
            let mut h = Hist::new();
            for (&v, &g) in vs.iter().zip(&truth) {
                if g == 1 {
                    h.fg[v as usize] += 1
                } else {
                    h.bg[v as usize] += 1
                }
            }
            h
        };
        for delta in [-200, -50, 0, 37, 300] {
            let mut h = count(&vals);
            h.shift(delta);
            let moved: Vec<u8> = vals
                .iter()
                .map(|&v| cam::patch::shift_level(v, delta))
                .collect();
            let direct = count(&moved);
            assert_eq!((h.fg, h.bg), (direct.fg, direct.bg), "delta {delta}");
        }
    }

    #[test]
    fn histogram_confusion_matches_direct_counting() {
        // Positive image: truth 1 1 0 0, CAM 200 100 150 10; negative image: truth 1 0.
        let mut h = Hist::new();
        for (g, v) in [(1, 200), (1, 100), (0, 150), (0, 10)] {
            if g == 1 {
                h.fg[v] += 1
            } else {
                h.bg[v] += 1
            }
        }
        h.neg_fg = 1;
        h.neg_bg = 1;
        // Threshold at 150: positive-image prediction 1 0 1 0; negative all 0.
        let direct = {
            let mut c = Confusion::new(2);
            c.add(&[1, 1, 0, 0, 1, 0], &[1, 0, 1, 0, 0, 0]);
            c
        };
        assert_eq!(h.confusion_at(150), direct);
        assert_eq!(level(0.0), 0);
        assert_eq!(level(1.0), 255);
        assert_eq!(level(0.7), 179);
    }
}
