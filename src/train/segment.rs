//! The segmenter: DeepLab V3+ trained on per-pixel labels (CAM pseudo labels, or the true
//! masks for the fully supervised upper bound), and sliding-window inference.
//!
//! Training: images and labels resized by `segmentation.scale` (labels by nearest neighbour;
//! histology tiles are often segmented below scan resolution), random crops of
//! `segmentation.crop_size` (images smaller than a crop are scaled up first), flips, 90° rotations — applied identically to image
//! and label — and colour / stain jitter on the image; per-pixel cross-entropy with ignore
//! index 255, or the OEEM weighting; poly learning-rate decay; the optimiser, momentum and
//! weight decay of `[train]`, run by the one training driver (`driver::fit`: checkpoints,
//! resume, non-finite loss). Every epoch records what shows a collapse coming — per-class
//! loss, label and predicted foreground shares, gradient norm — and how the predictions on the
//! validation images agree with those images' labels (pseudo labels under weak supervision: no
//! mask is read). The last epoch is kept, or the best by that agreement
//! (`segmentation.select = "label-agreement"`).
//!
//! Inference: windows of the crop size with a third of overlap, softmax probabilities averaged
//! where windows overlap (and over a horizontal flip with `segmentation.tta`), argmax.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use crate::data::resize::bilinear;
use candle_core::{Device, Tensor, D};
use candle_nn::VarMap;
use image::{imageops, imageops::FilterType, GrayImage, RgbImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::driver::{self, EpochStats, Learner, Score};
use super::optim::{lr_at, Optimizer};
use crate::config::{
    CropSampling, ExperimentConfig, Optimizer as OptimizerKind, Schedule, SegBlend, SegInit,
    SegLoss, SegSelect, SegmentationConfig, RATIO_CANDIDATES,
};
use crate::data::loader::{color_jitter, to_chw, Augment, Images, StainJitter};
use crate::data::mask::IGNORE;
use crate::error::{Error, Result};
use crate::metrics::segmentation::Confusion;
use crate::model::deeplab::{DeepLab, DeepLabConfig, ENCODER_PREFIX};
use crate::model::{init, weights, BackboneSpec};

/// Background and foreground.
pub const SEG_CLASSES: usize = 2;

/// A built segmenter and its variables.
pub struct Segmenter {
    /// The network.
    pub model: DeepLab,
    /// Its variables.
    pub vars: VarMap,
}

/// The `[train]` settings the segmenter shares with the classifier.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SegTrain {
    /// `train.optimizer`.
    pub optimizer: OptimizerKind,
    /// `train.momentum` (SGD).
    pub momentum: f64,
    /// `train.weight_decay`.
    pub weight_decay: f64,
    /// `train.seed` (initialisation, crops, order).
    pub seed: u64,
}

/// Everything the segmenter is built and trained from — the segment stage's slice.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SegmenterConfig {
    /// `[segmentation]`; `tta` (an inference setting, the evaluate stage's) is always
    /// `false` here, and `blend` is the default unless the epoch is chosen by agreement (the
    /// only inference in training).
    pub segmentation: SegmentationConfig,
    /// Shared `[train]` settings.
    pub train: SegTrain,
    /// The weights file the encoder starts from: `segmentation.pretrained` (`init =
    /// "pretrained"`), or `backbone.pretrained` (scratch init, same architecture, full width).
    pub pretrained: Option<String>,
}

impl SegmenterConfig {
    /// The segmenter's settings of a resolved config.
    pub fn of(cfg: &ExperimentConfig) -> Self {
        let s = &cfg.segmentation;
        let pretrained = match s.init {
            SegInit::Pretrained => s.pretrained.clone(),
            SegInit::Scratch if cfg.backbone.arch == s.encoder && s.width == 1.0 => {
                cfg.backbone.pretrained.clone()
            }
            SegInit::Scratch | SegInit::Classifier => None,
        };
        Self {
            segmentation: SegmentationConfig {
                tta: false,
                // read only by init = "pretrained" (then as `pretrained` below, by identity)
                pretrained: None,
                // windows are blended in training only to choose the epoch by agreement
                blend: if s.select == SegSelect::LabelAgreement {
                    s.blend
                } else {
                    SegBlend::Mean
                },
                ..s.normalised()
            },
            train: SegTrain {
                optimizer: cfg.train.optimizer,
                momentum: if cfg.train.optimizer == OptimizerKind::Sgd {
                    cfg.train.momentum
                } else {
                    crate::config::TrainConfig::default().momentum
                },
                weight_decay: cfg.train.weight_decay,
                seed: cfg.train.seed,
            },
            pretrained,
        }
    }
}

/// The DeepLab settings of a `[segmentation]` table.
pub fn deeplab_config(s: &SegmentationConfig) -> DeepLabConfig {
    DeepLabConfig {
        encoder: BackboneSpec {
            arch: s.encoder,
            batch_norm: true,
            width: s.width,
            output_stride_8: s.output_stride == 8,
        },
        classes: SEG_CLASSES,
        aspp_channels: s.aspp_channels.map(|a| a as usize),
    }
}

impl Segmenter {
    /// Build with seeded initialisation; the encoder starts from the classifier's weights
    /// (`segmentation.init = "classifier"`), from `segmentation.pretrained` (`init =
    /// "pretrained"`) or from `backbone.pretrained` when the architectures match.
    pub fn build(
        cfg: &SegmenterConfig,
        dev: &Device,
        classifier_weights: Option<&Path>,
        manifest_dir: &Path,
    ) -> Result<Self> {
        let vars = VarMap::new();
        let vb = init::var_builder(&vars, cfg.train.seed ^ 0x5e6, dev);
        let model = DeepLab::new(deeplab_config(&cfg.segmentation), vb)?;
        let from_file = |path: &Path, what: &str| -> Result<()> {
            let n = weights::load_mapped(&vars, path, |name| {
                name.strip_prefix(ENCODER_PREFIX).map(String::from)
            })?;
            tracing::info!("segmenter encoder: {n} tensors from {what}");
            Ok(())
        };
        match (cfg.segmentation.init, classifier_weights) {
            (SegInit::Classifier, Some(p)) => from_file(p, "the classifier")?,
            (SegInit::Classifier, None) => {
                return Err(Error::stage(
                    "segment",
                    "no classifier weights to start from",
                ))
            }
            (SegInit::Scratch | SegInit::Pretrained, _) => {
                if let Some(p) = &cfg.pretrained {
                    let prefixes = model.encoder.pretrained_prefixes();
                    let n = weights::load_mapped(&vars, &manifest_dir.join(p), |name| {
                        name.strip_prefix(ENCODER_PREFIX)
                            .filter(|k| prefixes.iter().any(|p| k.starts_with(p)))
                            .map(String::from)
                    })?;
                    tracing::info!("segmenter encoder: {n} pretrained tensors from {p}");
                }
            }
        }
        Ok(Self { model, vars })
    }

    /// Rebuild a trained segmenter from its weights file.
    pub fn load(s: &SegmentationConfig, dev: &Device, path: &Path) -> Result<Self> {
        let vars = VarMap::new();
        let vb = init::var_builder(&vars, 0, dev);
        let model = DeepLab::new(deeplab_config(s), vb)?;
        weights::load_all(&vars, path)?;
        Ok(Self { model, vars })
    }

    /// Foreground probability map `(H, W)` of an image at its own size: the image is resized
    /// by `scale`, segmented by sliding windows of `crop` pixels, and the map is resized back
    /// bilinearly.
    pub fn predict(&self, img: &RgbImage, inf: &Inference, dev: &Device) -> Result<Vec<f32>> {
        let Inference {
            crop,
            scale,
            tta,
            blend,
            batch,
        } = *inf;
        let (w0, h0) = img.dimensions();
        // Predict on a resized copy and resize the probability map back to (w0, h0).
        let resized = |other: &RgbImage| -> Result<Vec<f32>> {
            let (w, h) = other.dimensions();
            let p = self.predict(other, &Inference { scale: 1.0, ..*inf }, dev)?;
            let t = Tensor::from_vec(p, (1, 1, h as usize, w as usize), &Device::Cpu)?;
            Ok(
                crate::model::ops::resize_bilinear(&t, h0 as usize, w0 as usize)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            )
        };
        if (scale - 1.0).abs() > 1e-9 {
            return resized(&rescale(img, scale));
        }
        if w0.min(h0) < MIN_INFERENCE_SIDE {
            // Too small for the encoder's downsampling: scale up as training does for images
            // smaller than a crop, predict, and resize the map back.
            let up = crop.max(MIN_INFERENCE_SIDE) as f64 / w0.min(h0) as f64;
            let (uw, uh) = (
                ((w0 as f64 * up).ceil() as u32).max(crop),
                ((h0 as f64 * up).ceil() as u32).max(crop),
            );
            return resized(&bilinear(img, uw, uh));
        }
        let (w, h) = (w0, h0);
        let (cw, ch) = (crop.min(w), crop.min(h));
        let starts = |len: u32, c: u32| -> Vec<u32> {
            if len <= c {
                return vec![0];
            }
            let stride = (c * 2 / 3).max(1);
            let mut v: Vec<u32> = (0..)
                .map(|k| k * stride)
                .take_while(|&s| s + c < len)
                .collect();
            v.push(len - c);
            v
        };
        let mut windows = Vec::new();
        for y in starts(h, ch) {
            for x in starts(w, cw) {
                windows.push((x, y));
            }
        }
        let mut acc = WindowBlend::new(w, h, cw, ch, blend);
        for chunk in windows.chunks(batch.max(1)) {
            let mut data = Vec::with_capacity(chunk.len() * 3 * (cw * ch) as usize);
            for &(x, y) in chunk {
                data.extend(to_chw(&imageops::crop_imm(img, x, y, cw, ch).to_image()));
            }
            let xb = Tensor::from_vec(
                data,
                (chunk.len(), 3, ch as usize, cw as usize),
                &Device::Cpu,
            )?
            .to_device(dev)?;
            let mut p = candle_nn::ops::softmax(&self.model.forward_t(&xb, false)?, 1)?;
            if tta {
                let pf =
                    candle_nn::ops::softmax(&self.model.forward_t(&xb.flip(&[3])?, false)?, 1)?
                        .flip(&[3])?;
                p = ((p + pf)? * 0.5)?;
            }
            let fg = p
                .narrow(1, 1, 1)?
                .squeeze(1)?
                .to_device(&Device::Cpu)?
                .to_vec3::<f32>()?;
            for (k, &(x, y)) in chunk.iter().enumerate() {
                acc.add(x, y, &fg[k]);
            }
        }
        Ok(acc.finish())
    }
}

/// Inference settings of a `[segmentation]` table: window (= training crop) side in pixels,
/// resize factor, flip TTA, how windows combine, windows per forward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inference {
    /// Window side in pixels (`segmentation.crop_size`).
    pub crop: u32,
    /// Resize factor before inference (`segmentation.scale`); the map is resized back.
    pub scale: f64,
    /// Average with a horizontal flip (`segmentation.tta`).
    pub tta: bool,
    /// How overlapping windows combine (`segmentation.blend`).
    pub blend: SegBlend,
    /// Windows per forward pass (`segmentation.batch_size`, at least 1).
    pub batch: usize,
}

impl Inference {
    /// The inference settings of `s`.
    pub fn of(s: &SegmentationConfig) -> Self {
        Self {
            crop: s.crop_size,
            scale: s.scale,
            tta: s.tta,
            blend: s.blend,
            batch: (s.batch_size as usize).max(1),
        }
    }
}

/// Sliding-window probabilities combined into one map (`segmentation.blend`): each window's
/// map is weighted per pixel by `wx[x] · wy[y]` — 1 for [`SegBlend::Mean`], a Gaussian of σ =
/// ⅛ of the window side centred on the window for [`SegBlend::Gaussian`] (floored at 10⁻³ of
/// its peak, so every pixel a window covers counts, as nnU-Net's importance map) — and the sum
/// divided by the summed weights. Where one window covers a pixel the result is that window's
/// value whatever the weights; pixels no window covers are 0.
pub struct WindowBlend {
    w: usize,
    prob: Vec<f32>,
    weight: Vec<f32>,
    wx: Vec<f32>,
    wy: Vec<f32>,
}

impl WindowBlend {
    /// An empty map of `w × h` pixels for windows of `cw × ch`.
    pub fn new(w: u32, h: u32, cw: u32, ch: u32, blend: SegBlend) -> Self {
        let profile = |n: u32| -> Vec<f32> {
            match blend {
                SegBlend::Mean => vec![1.0; n as usize],
                SegBlend::Gaussian => {
                    let sigma = n as f32 / 8.0;
                    (0..n)
                        .map(|i| {
                            let d = i as f32 + 0.5 - n as f32 / 2.0;
                            (-(d * d) / (2.0 * sigma * sigma)).exp().max(1e-3)
                        })
                        .collect()
                }
            }
        };
        let n = w as usize * h as usize;
        Self {
            w: w as usize,
            prob: vec![0.0; n],
            weight: vec![0.0; n],
            wx: profile(cw),
            wy: profile(ch),
        }
    }

    /// Add one window's map (rows of `cw` values) with its top-left corner at `(x, y)`.
    pub fn add(&mut self, x: u32, y: u32, map: &[Vec<f32>]) {
        for (yy, row) in map.iter().enumerate() {
            let base = (y as usize + yy) * self.w + x as usize;
            for (xx, v) in row.iter().enumerate() {
                let g = self.wx[xx] * self.wy[yy];
                self.prob[base + xx] += v * g;
                self.weight[base + xx] += g;
            }
        }
    }

    /// The combined map, row-major.
    pub fn finish(self) -> Vec<f32> {
        self.prob
            .iter()
            .zip(&self.weight)
            .map(|(p, c)| if *c > 0.0 { p / c } else { 0.0 })
            .collect()
    }
}

/// Images (after `segmentation.scale`) with a side below this many pixels are scaled up
/// before inference, as training scales up images smaller than a crop: the encoder halves its
/// input up to five times, and a side of a few pixels would vanish (a 40×28 tile at scale 0.25
/// is 10×7).
pub const MIN_INFERENCE_SIDE: u32 = 32;

/// An image resized by `scale` (bilinear; at least 1 pixel per side).
pub fn rescale(img: &RgbImage, scale: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let nw = ((w as f64 * scale).round() as u32).max(1);
    let nh = ((h as f64 * scale).round() as u32).max(1);
    bilinear(img, nw, nh)
}

/// A label map resized by `scale` (nearest neighbour, so labels stay labels).
pub fn rescale_labels(l: &GrayImage, scale: f64) -> GrayImage {
    let (w, h) = l.dimensions();
    let nw = ((w as f64 * scale).round() as u32).max(1);
    let nh = ((h as f64 * scale).round() as u32).max(1);
    imageops::resize(l, nw, nh, FilterType::Nearest)
}

impl Segmenter {
    /// The label map (0/1) of an image with the manifest's inference settings.
    pub fn segment(
        &self,
        img: &RgbImage,
        s: &crate::config::SegmentationConfig,
        dev: &Device,
    ) -> Result<GrayImage> {
        let prob = self.predict(img, &Inference::of(s), dev)?;
        let (w, h) = img.dimensions();
        Ok(argmax_labels(&prob, w, h))
    }
}

/// Label map of a foreground probability map (foreground where p ≥ 0.5).
pub fn argmax_labels(prob: &[f32], w: u32, h: u32) -> GrayImage {
    GrayImage::from_raw(w, h, prob.iter().map(|&p| u8::from(p >= 0.5)).collect())
        .unwrap_or_else(|| GrayImage::new(w, h))
}

/// Per-pixel loss of logits `(B, K, H, W)` against labels `(B, H, W)` (`u8`, 255 ignored):
/// mean cross-entropy over labelled pixels, or the OEEM weighting (Li et al., "Online Easy
/// Example Mining for Weakly-supervised Gland Segmentation", MICCAI 2022): within each image,
/// pixel losses are re-weighted by `n · softmax(−ℓ)` over its labelled pixels (weights
/// detached), so the easy — likely correctly pseudo-labelled — pixels dominate and the hard
/// ones, likely label noise, are down-weighted.
///
/// `OeemBalanced` normalises the same weights within each pseudo-label class of an image
/// (`n_c · softmax_c(−ℓ)`), so every class keeps the total weight it has under cross-entropy.
/// Plain OEEM can feed on itself: early on the majority class is the easy one, its pixels gain
/// weight, and on GlaS one seed's segmenter ended up predicting background everywhere.
///
/// `BalancedCe` gives every class present in the batch the same total weight: the mean over
/// those classes of each class's mean pixel cross-entropy (median-frequency-style balancing,
/// Eigen & Fergus 2015, with frequencies counted per batch).
pub fn seg_loss(logits: &Tensor, labels: &[u8], kind: SegLoss) -> Result<Tensor> {
    let (b, k, h, w_) = logits.dims4()?;
    let n = h * w_;
    let mut onehot = vec![0f32; b * k * n];
    let mut valid = vec![0f32; b * n];
    for bi in 0..b {
        for i in 0..n {
            let l = labels[bi * n + i];
            if l != IGNORE && (l as usize) < k {
                onehot[(bi * k + l as usize) * n + i] = 1.0;
                valid[bi * n + i] = 1.0;
            }
        }
    }
    let dev = logits.device();
    let onehot = Tensor::from_vec(onehot, (b, k, h, w_), dev)?;
    let valid_t = Tensor::from_vec(valid.clone(), (b, h, w_), dev)?;
    let total = valid.iter().sum::<f32>().max(1.0) as f64;
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let pix = (logp * &onehot)?.sum(1)?.neg()?; // (B, H, W), 0 where ignored
    match kind {
        SegLoss::Ce => Ok((pix.sum_all()? / total)?),
        SegLoss::Oeem => {
            let d = pix.detach();
            let e = (d.neg()?.exp()? * &valid_t)?;
            let z = e.sum_keepdim(D::Minus1)?.sum_keepdim(D::Minus2)?; // (B, 1, 1)
            let nv = valid_t.sum_keepdim(D::Minus1)?.sum_keepdim(D::Minus2)?;
            let wgt = e.broadcast_div(&(z + 1e-12)?)?.broadcast_mul(&nv)?;
            Ok(((pix * wgt)?.sum_all()? / total)?)
        }
        SegLoss::OeemBalanced => {
            let e = (pix.detach().neg()?.exp()? * &valid_t)?;
            let mut wgt = Tensor::zeros_like(&e)?;
            for c in 0..k {
                let oc = onehot.narrow(1, c, 1)?.squeeze(1)?; // (B, H, W)
                let ec = (&e * &oc)?;
                let zc = ec.sum_keepdim(D::Minus1)?.sum_keepdim(D::Minus2)?;
                let nc = oc.sum_keepdim(D::Minus1)?.sum_keepdim(D::Minus2)?;
                wgt = (wgt + ec.broadcast_div(&(zc + 1e-12)?)?.broadcast_mul(&nc)?)?;
            }
            Ok(((pix * wgt)?.sum_all()? / total)?)
        }
        SegLoss::BalancedCe => {
            // Σ_c (Σ_{i∈c} ℓ_i / n_c) / |{c : n_c > 0}|, as weights n / (K' · n_c) per pixel.
            let counts: Vec<f32> = (0..k)
                .map(|c| {
                    (0..b * n)
                        .filter(|&j| valid[j] > 0.0 && labels[j] as usize == c)
                        .count() as f32
                })
                .collect();
            let present = counts.iter().filter(|&&c| c > 0.0).count().max(1) as f32;
            let w: Vec<f32> = (0..b * n)
                .map(|j| {
                    if valid[j] > 0.0 {
                        1.0 / (present * counts[labels[j] as usize])
                    } else {
                        0.0
                    }
                })
                .collect();
            let w = Tensor::from_vec(w, (b, h, w_), dev)?;
            Ok((pix * w)?.sum_all()?)
        }
    }
}

/// Share of foreground (1) among the labelled pixels (0 or 1; 255 is ignored) of the
/// `cw`×`ch` window at (`x0`, `y0`); `None` when none is labelled.
fn labelled_fg_share(label: &GrayImage, x0: u32, y0: u32, cw: u32, ch: u32) -> Option<f64> {
    let (w, raw) = (label.width() as usize, label.as_raw());
    let (mut fg, mut n) = (0u64, 0u64);
    for y in y0 as usize..(y0 + ch) as usize {
        let row = &raw[y * w + x0 as usize..y * w + (x0 + cw) as usize];
        for &v in row.iter().filter(|&&v| v <= 1) {
            n += 1;
            fg += u64::from(v);
        }
    }
    (n > 0).then(|| fg as f64 / n as f64)
}

/// The top-left corner of a `crop`² training crop in a `w`×`h` label map (both sides ≥ `crop`):
/// uniform, or, under `label-ratio`, the first of [`RATIO_CANDIDATES`] uniform draws whose
/// labelled foreground share is nearest the whole map's (a crop with no labelled pixel is
/// farthest; with no labelled pixel anywhere, the first draw).
fn crop_origin(
    label: &GrayImage,
    crop: u32,
    sampling: CropSampling,
    rng: &mut ChaCha8Rng,
) -> (u32, u32) {
    let (w, h) = label.dimensions();
    let mut draw = || {
        (
            rng.random_range(0..=w - crop),
            rng.random_range(0..=h - crop),
        )
    };
    match sampling {
        CropSampling::Uniform => draw(),
        CropSampling::LabelRatio => {
            let candidates: Vec<(u32, u32)> = (0..RATIO_CANDIDATES).map(|_| draw()).collect();
            let Some(target) = labelled_fg_share(label, 0, 0, w, h) else {
                return candidates[0];
            };
            let gap = |&(x, y): &(u32, u32)| {
                labelled_fg_share(label, x, y, crop, crop)
                    .map_or(f64::INFINITY, |f| (f - target).abs())
            };
            // each candidate's share once; the first of equal gaps wins (`min_by` keeps it)
            candidates
                .iter()
                .map(|c| (*c, gap(c)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(candidates[0], |(c, _)| c)
        }
    }
}

/// One augmented training crop of an (image, label) pair; `sampling` says where the crop is
/// taken ([`CropSampling`]).
pub fn augment_pair(
    img: &RgbImage,
    label: &GrayImage,
    crop: u32,
    sampling: CropSampling,
    aug: &Augment,
    rng: &mut ChaCha8Rng,
) -> (RgbImage, GrayImage) {
    let (w, h) = img.dimensions();
    // A label of another size than its image (which callers should not pass) is brought to
    // the image's grid, so that crop positions drawn on it are valid for both.
    let resized;
    let label = if label.dimensions() == (w, h) {
        label
    } else {
        resized = imageops::resize(label, w, h, FilterType::Nearest);
        &resized
    };
    let (mut img, mut label) = if w < crop || h < crop {
        let s = crop as f64 / w.min(h) as f64;
        let (nw, nh) = (
            ((w as f64 * s).ceil() as u32).max(crop),
            ((h as f64 * s).ceil() as u32).max(crop),
        );
        (
            bilinear(img, nw, nh),
            imageops::resize(label, nw, nh, FilterType::Nearest),
        )
    } else {
        (img.clone(), label.clone())
    };
    let (x0, y0) = crop_origin(&label, crop, sampling, rng);
    img = imageops::crop_imm(&img, x0, y0, crop, crop).to_image();
    label = imageops::crop_imm(&label, x0, y0, crop, crop).to_image();
    if aug.flips {
        if rng.random_bool(0.5) {
            imageops::flip_horizontal_in_place(&mut img);
            imageops::flip_horizontal_in_place(&mut label);
        }
        if rng.random_bool(0.5) {
            imageops::flip_vertical_in_place(&mut img);
            imageops::flip_vertical_in_place(&mut label);
        }
        match rng.random_range(0..4) {
            1 => {
                img = imageops::rotate90(&img);
                label = imageops::rotate90(&label);
            }
            2 => {
                img = imageops::rotate180(&img);
                label = imageops::rotate180(&label);
            }
            3 => {
                img = imageops::rotate270(&img);
                label = imageops::rotate270(&label);
            }
            _ => {}
        }
    }
    color_jitter(&mut img, aug, rng);
    (img, label)
}

/// One row of the segmenter's training history: what a user needs to see a collapse coming.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegEpoch {
    /// Epoch (1-based).
    pub epoch: u32,
    /// Learning rate at the start of the epoch.
    pub lr: f64,
    /// Mean training loss (the configured loss).
    pub loss: f64,
    /// Pixel accuracy against the training labels (labelled pixels).
    pub label_accuracy: f64,
    /// Mean per-pixel cross-entropy of the training crops' background / foreground label
    /// pixels (unweighted, whatever the loss): a class the network gives up on shows here.
    #[serde(default)]
    pub class_loss: [f64; SEG_CLASSES],
    /// Foreground share of the training crops' labelled pixels.
    #[serde(default)]
    pub label_foreground: f64,
    /// Foreground share of the segmenter's predictions on those pixels.
    #[serde(default)]
    pub predicted_foreground: f64,
    /// Mean L2 norm of the gradient over the epoch's steps.
    #[serde(default)]
    pub grad_norm: f64,
    /// Validation images (no ground truth read for weak supervision: their pseudo labels):
    /// the share and agreement below; absent without validation labels.
    #[serde(default)]
    pub valid: Option<LabelAgreement>,
    /// Seconds.
    pub seconds: f64,
}

/// How a segmenter's predictions on some images agree with those images' labels (the pseudo
/// labels under weak supervision, which weak supervision may read on validation images; the
/// true masks under full supervision).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LabelAgreement {
    /// 2-class mIoU of prediction against label over the labelled pixels of all images.
    pub miou: f64,
    /// Foreground share of the labelled pixels.
    pub label_foreground: f64,
    /// Foreground share of the predictions on them.
    pub predicted_foreground: f64,
    /// One class predicted on nearly every pixel although the labels hold both
    /// ([`collapsed`]).
    pub collapsed: bool,
}

/// A prediction has *collapsed* when a class is predicted on less than this share of the
/// pixels (the other on more than 99 %)…
pub const COLLAPSE_SHARE: f64 = 0.01;
/// …and on less than this fraction of the share its labels give it…
pub const COLLAPSE_RATIO: f64 = 0.25;
/// …which is at least this share (labels with less of a class are one class: no collapse).
pub const COLLAPSE_LABEL_SHARE: f64 = 0.005;

/// Whether a prediction with foreground share `predicted` against labels with foreground share
/// `label` has collapsed onto one class: some class is predicted on < [`COLLAPSE_SHARE`] of the
/// pixels and on < [`COLLAPSE_RATIO`] × its label share, which is ≥ [`COLLAPSE_LABEL_SHARE`].
/// (On synthetic tiles a segmenter predicted no foreground where its pseudo labels had 1.8 %:
/// a collapse, which an absolute label floor of 2 % missed.)
pub fn collapsed(predicted: f64, label: f64) -> bool {
    [(predicted, label), (1.0 - predicted, 1.0 - label)]
        .iter()
        .any(|&(p, l)| p < COLLAPSE_SHARE && p < COLLAPSE_RATIO * l && l >= COLLAPSE_LABEL_SHARE)
}

impl LabelAgreement {
    /// From the confusion matrix of labels (truth) against predictions, the project's
    /// [`Confusion`] (mIoU over the classes present in either, as every score of wsss).
    /// `None` without a counted pixel.
    pub fn of(cm: &Confusion) -> Option<Self> {
        let sc = cm.scores();
        if sc.pixels == 0 {
            return None;
        }
        let share = |fg: u64| fg as f64 / sc.pixels as f64;
        let label_foreground = share(cm.get(1, 0) + cm.get(1, 1));
        let predicted_foreground = share(cm.get(0, 1) + cm.get(1, 1));
        Some(Self {
            miou: sc.miou,
            label_foreground,
            predicted_foreground,
            collapsed: collapsed(predicted_foreground, label_foreground),
        })
    }
}

/// What a segmenter training reports.
#[derive(Debug, Clone, Serialize)]
pub struct SegSummary {
    /// Per-epoch history.
    pub history: Vec<SegEpoch>,
    /// The epoch whose weights were kept (the last, or the best by `segmentation.select`).
    pub selected_epoch: u32,
    /// Training crops per second.
    pub train_images_per_s: f64,
}

impl SegSummary {
    /// The kept epoch's agreement with the validation labels, if measured.
    pub fn selected(&self) -> Option<LabelAgreement> {
        self.history
            .iter()
            .find(|r| r.epoch == self.selected_epoch)
            .and_then(|r| r.valid)
    }
}

/// Images and labels a segmenter trains and is validated on.
pub struct SegData<'a> {
    /// The images (all samples).
    pub images: &'a Images<'a>,
    /// Training samples and their label maps (samples without one are skipped).
    pub train: &'a [usize],
    /// Label maps of training samples, at image size.
    pub labels: &'a HashMap<usize, GrayImage>,
    /// Validation samples and their label maps (pseudo labels for weak supervision).
    pub valid: &'a HashMap<usize, GrayImage>,
}

/// One step: the batch's samples and its augmentation seed.
struct SegStep {
    bi: usize,
    chunk: Vec<usize>,
    seed: u64,
}

/// Statistics of an epoch's training crops.
#[derive(Default)]
struct SegTally {
    correct: u64,
    counted: u64,
    label_fg: u64,
    pred_fg: u64,
    class_loss: [f64; SEG_CLASSES],
    class_count: [u64; SEG_CLASSES],
}

struct SegLearner<'a> {
    cfg: &'a SegmenterConfig,
    seg: &'a Segmenter,
    images: &'a Images<'a>,
    items: Vec<usize>,
    /// Training labels at the training scale.
    labels: &'a HashMap<usize, GrayImage>,
    /// Validation images (at the training scale) and labels.
    valid: Vec<(RgbImage, GrayImage)>,
    aug: Augment,
    dev: &'a Device,
}

impl SegLearner<'_> {
    fn bs(&self) -> usize {
        (self.cfg.segmentation.batch_size as usize).max(1)
    }
    fn scaled(&self) -> bool {
        (self.cfg.segmentation.scale - 1.0).abs() > 1e-9
    }

    /// Agreement of the current weights with the validation labels.
    fn validate(&self) -> Result<Option<LabelAgreement>> {
        let s = &self.cfg.segmentation;
        let mut cm = Confusion::new(SEG_CLASSES);
        for (img, label) in &self.valid {
            // the validation images are already at the training scale; no flip while training
            let inf = Inference {
                scale: 1.0,
                tta: false,
                batch: self.bs(),
                ..Inference::of(s)
            };
            let p = self.seg.predict(img, &inf, self.dev)?;
            let pred: Vec<u8> = p.iter().map(|&v| u8::from(v >= 0.5)).collect();
            cm.add(label.as_raw(), &pred);
        }
        Ok(LabelAgreement::of(&cm))
    }
}

impl Learner for SegLearner<'_> {
    type Step = SegStep;
    type Batch = (Tensor, Vec<u8>);
    type Tally = SegTally;
    type Row = SegEpoch;

    fn stage(&self) -> &'static str {
        "segment"
    }
    fn lr_key(&self) -> &'static str {
        "segmentation.lr"
    }
    fn epochs(&self) -> u32 {
        self.cfg.segmentation.epochs
    }
    fn examples(&self) -> (usize, usize) {
        (self.items.len(), self.bs())
    }
    fn epoch_seed(&self, epoch: u32) -> u64 {
        self.cfg.train.seed ^ 0x5e65_e65e ^ (epoch as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn plan(&self, _epoch: u32, rng: &mut ChaCha8Rng) -> Vec<SegStep> {
        let bs = self.bs();
        let mut order = self.items.clone();
        order.shuffle(rng);
        order
            .chunks(bs)
            .enumerate()
            // A last batch of one crop is dropped (batch statistics of one crop); with
            // `segmentation.batch_size = 1` every batch is one crop and trains (the image
            // pooling branch then uses its running statistics, see `model::deeplab`).
            .filter(|(_, chunk)| chunk.len() >= 2 || bs == 1)
            .map(|(bi, chunk)| SegStep {
                bi,
                chunk: chunk.to_vec(),
                seed: rng.random(),
            })
            .collect()
    }
    fn position(&self, step: &SegStep) -> usize {
        step.bi
    }
    fn steps_per_epoch(&self) -> usize {
        self.items.len().div_ceil(self.bs())
    }
    fn lr_at(&self, epoch: f64) -> f64 {
        let s = &self.cfg.segmentation;
        lr_at(Schedule::Poly, s.lr, epoch, s.epochs, s.warmup_epochs)
    }
    fn build(&self, step: &SegStep) -> Result<(Tensor, Vec<u8>)> {
        let s = &self.cfg.segmentation;
        let (crop, scaled) = (s.crop_size, self.scaled());
        let pairs: Vec<Result<(Vec<f32>, Vec<u8>)>> = step
            .chunk
            .par_iter()
            .enumerate()
            .map(|(j, &i)| {
                let mut r = ChaCha8Rng::seed_from_u64(
                    step.seed
                        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        .wrapping_add(j as u64),
                );
                let img = self.images.get(i)?;
                let img = if scaled {
                    std::borrow::Cow::Owned(rescale(&img, s.scale))
                } else {
                    img
                };
                let sampling = self.cfg.segmentation.crop_sampling;
                let (a, l) =
                    augment_pair(&img, &self.labels[&i], crop, sampling, &self.aug, &mut r);
                Ok((to_chw(&a), l.into_raw()))
            })
            .collect();
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for p in pairs {
            let (x, y) = p?;
            xs.extend(x);
            ys.extend(y);
        }
        let c = crop as usize;
        Ok((
            // On the CPU: the helper thread builds it, the training thread moves it.
            Tensor::from_vec(xs, (step.chunk.len(), 3, c, c), &Device::Cpu)?,
            ys,
        ))
    }
    fn loss(
        &self,
        step: &SegStep,
        (x, ys): (Tensor, Vec<u8>),
        dev: &Device,
        t: &mut SegTally,
    ) -> Result<(Tensor, usize)> {
        let x = x.to_device(dev)?;
        let logits = self.seg.model.forward_t(&x, true)?;
        let loss = seg_loss(&logits, &ys, self.cfg.segmentation.loss)?;
        let (b, k, h, w) = logits.dims4()?;
        let z = logits
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let n = h * w;
        for bi in 0..b {
            for i in 0..n {
                let y = ys[bi * n + i];
                if y == IGNORE || (y as usize) >= k {
                    continue;
                }
                let (z0, z1) = (z[bi * k * n + i], z[(bi * k + 1) * n + i]);
                let pred = u8::from(z1 > z0);
                t.counted += 1;
                t.correct += u64::from(pred == y);
                t.label_fg += u64::from(y == 1);
                t.pred_fg += u64::from(pred);
                // −log softmax of the label's logit, stably: log(1 + e^(z_other − z_label)).
                let d = if y == 1 { z0 - z1 } else { z1 - z0 } as f64;
                let ce = d.max(0.0) + (-d.abs()).exp().ln_1p();
                t.class_loss[y as usize] += ce;
                t.class_count[y as usize] += 1;
            }
        }
        Ok((loss, step.chunk.len()))
    }
    fn end_epoch(
        &self,
        e: EpochStats,
        t: SegTally,
        started: Instant,
    ) -> Result<(SegEpoch, Option<Score>)> {
        let valid = self.validate()?;
        let share = |a: u64| a as f64 / t.counted.max(1) as f64;
        let row = SegEpoch {
            epoch: e.epoch,
            lr: e.lr,
            loss: e.loss,
            label_accuracy: share(t.correct),
            class_loss: [0, 1].map(|c| t.class_loss[c] / t.class_count[c].max(1) as f64),
            label_foreground: share(t.label_fg),
            predicted_foreground: share(t.pred_fg),
            grad_norm: e.grad_norm,
            valid,
            seconds: started.elapsed().as_secs_f64(),
        };
        let v = valid.map_or(String::new(), |v| {
            format!(
                " | valid: agreement mIoU {:.3}, fg {:.3} predicted / {:.3} labelled{}",
                v.miou,
                v.predicted_foreground,
                v.label_foreground,
                if v.collapsed { " — COLLAPSED" } else { "" }
            )
        });
        tracing::info!(
            "segment epoch {}/{}: loss {:.4} (bg {:.3} fg {:.3}) label acc {:.3} fg {:.3} predicted / {:.3} labelled |grad| {:.3}{v} ({:.1}s)",
            row.epoch,
            self.cfg.segmentation.epochs,
            row.loss,
            row.class_loss[0],
            row.class_loss[1],
            row.label_accuracy,
            row.predicted_foreground,
            row.label_foreground,
            row.grad_norm,
            row.seconds
        );
        let score = match self.cfg.segmentation.select {
            SegSelect::Last => None,
            // Ties go to the later epoch.
            SegSelect::LabelAgreement => valid.map(|v| (v.miou, e.epoch as f64)),
        };
        Ok((row, score))
    }
}

/// Train on `data.train` with their label maps, validated every epoch on `data.valid`.
/// `scratch` keeps checkpoints across interruptions.
///
/// Errors: no training image with a label map; `segmentation.select = "label-agreement"`
/// without validation labels; whatever [`driver::fit`] reports.
pub fn train(
    cfg: &SegmenterConfig,
    data: &SegData,
    dev: &Device,
    scratch: &Path,
    classifier_weights: Option<&Path>,
    manifest_dir: &Path,
) -> Result<(Segmenter, SegSummary)> {
    let s = &cfg.segmentation;
    let t = &cfg.train;
    let seg = Segmenter::build(cfg, dev, classifier_weights, manifest_dir)?;
    let vars: Vec<(String, candle_core::Var)> = {
        let d = seg
            .vars
            .data()
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        let mut v: Vec<_> = d.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mut opt = Optimizer::new(t.optimizer, vars, s.lr, t.weight_decay, t.momentum)?
        .with_lr_mult(|name| {
            if name.starts_with(ENCODER_PREFIX) {
                s.encoder_lr_mult
            } else {
                1.0
            }
        });
    let items: Vec<usize> = data
        .train
        .iter()
        .copied()
        .filter(|i| data.labels.contains_key(i))
        .collect();
    if items.is_empty() {
        return Err(Error::stage("segment", "no training image has a label map"));
    }
    if s.select == SegSelect::LabelAgreement && data.valid.is_empty() {
        return Err(Error::stage(
            "segment",
            "segmentation.select = \"label-agreement\" needs validation images with labels, \
             and the valid split has none; use select = \"last\" or give the split \
             validation patients",
        ));
    }
    let scaled = (s.scale - 1.0).abs() > 1e-9;
    let at_scale = |l: &GrayImage| {
        if scaled {
            rescale_labels(l, s.scale)
        } else {
            l.clone()
        }
    };
    let labels: HashMap<usize, GrayImage> =
        data.labels.iter().map(|(k, l)| (*k, at_scale(l))).collect();
    let mut valid_ids: Vec<usize> = data.valid.keys().copied().collect();
    valid_ids.sort_unstable();
    let mut valid = Vec::with_capacity(valid_ids.len());
    for i in valid_ids {
        let img = data.images.get(i)?;
        let img = if scaled {
            rescale(&img, s.scale)
        } else {
            img.into_owned()
        };
        // Labels resized to the scaled image exactly (rounding may differ by a pixel).
        let (w, h) = img.dimensions();
        let l = imageops::resize(&data.valid[&i], w, h, FilterType::Nearest);
        valid.push((img, l));
    }
    let learner = SegLearner {
        cfg,
        seg: &seg,
        images: data.images,
        items,
        labels: &labels,
        valid,
        aug: Augment {
            stain: StainJitter::of(
                cfg.segmentation.stain_augment,
                cfg.segmentation.stain_augment_strength,
            ),
            ..Augment::default()
        },
        dev,
    };
    let ckpt = Checkpoint::new(scratch, "seg_last");
    let fitted = driver::fit(&learner, &seg.vars, &mut opt, dev, &ckpt, 0)?;
    Ok((
        seg,
        SegSummary {
            history: fitted.history,
            selected_epoch: fitted.best_epoch,
            train_images_per_s: fitted.examples_per_s,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 4×1 windows at x = 0 and x = 2 of a 6×1 map, predicting 1 and 0 everywhere. By hand:
    /// the Gaussian profile of a 4-pixel window (σ = 0.5) at offsets ±1.5 and ±0.5 from its
    /// centre is e^-4.5 = 0.011109 and e^-0.5 = 0.606531, so pixel 2 (the first window's
    /// inner pixel, the second's outer) is 0.606531 / (0.606531 + 0.011109) = 0.982014 and
    /// pixel 3 is 0.017986; equal weights give 0.5 on both. Pixels one window covers keep its
    /// value.
    #[test]
    fn window_blend_by_hand() {
        let run = |blend| {
            let mut acc = WindowBlend::new(6, 1, 4, 1, blend);
            acc.add(0, 0, &[vec![1.0; 4]]);
            acc.add(2, 0, &[vec![0.0; 4]]);
            acc.finish()
        };
        let mean = run(SegBlend::Mean);
        assert_eq!(mean, vec![1.0, 1.0, 0.5, 0.5, 0.0, 0.0]);
        let g = run(SegBlend::Gaussian);
        let want = [1.0, 1.0, 0.982014, 0.017986, 0.0, 0.0];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{g:?}");
        }
        // one window over the whole map: its own values, whatever the weights
        let map = vec![vec![0.1, 0.7, 0.3], vec![0.9, 0.2, 0.4]];
        for blend in [SegBlend::Mean, SegBlend::Gaussian] {
            let mut acc = WindowBlend::new(3, 2, 3, 2, blend);
            acc.add(0, 0, &map);
            let got = acc.finish();
            let flat: Vec<f32> = map.concat();
            for (a, b) in got.iter().zip(&flat) {
                assert!((a - b).abs() < 1e-6, "{blend:?}: {got:?}");
            }
        }
    }

    #[test]
    fn ce_with_ignore_by_hand() {
        // One image, 2 pixels: logits (2, 0) label 0 → log(1+e^-2); second pixel ignored.
        let logits =
            Tensor::from_vec(vec![2f32, 0.0, 0.0, 5.0], (1, 2, 1, 2), &Device::Cpu).unwrap();
        let l = seg_loss(&logits, &[0, IGNORE], SegLoss::Ce)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((l as f64 - (1.0 + (-2f64).exp()).ln()).abs() < 1e-6, "{l}");
        // OEEM with equal pixel losses equals CE.
        let logits =
            Tensor::from_vec(vec![2f32, 2.0, 0.0, 0.0], (1, 2, 1, 2), &Device::Cpu).unwrap();
        let a = seg_loss(&logits, &[0, 0], SegLoss::Ce)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let b = seg_loss(&logits, &[0, 0], SegLoss::Oeem)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((a - b).abs() < 1e-6);
        // With unequal losses OEEM weighs the easy pixel more, so it is below CE.
        let logits =
            Tensor::from_vec(vec![3f32, -1.0, 0.0, 0.0], (1, 2, 1, 2), &Device::Cpu).unwrap();
        let a = seg_loss(&logits, &[0, 0], SegLoss::Ce)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let b = seg_loss(&logits, &[0, 0], SegLoss::Oeem)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(b < a, "{b} !< {a}");
    }

    #[test]
    fn balanced_oeem_keeps_each_class_share() {
        // Three pixels: two of class 0 (logits favour class 0 strongly / weakly), one of class 1.
        // Per class the weights are n_c · softmax(−ℓ), so class 1's single pixel keeps weight 1
        // and class 0's two pixels share weight 2 by their ease.
        let z = [3f32, 0.5, 0.0];
        let logits = Tensor::from_vec(
            vec![z[0], z[1], z[2], 0.0, 0.0, 1.0],
            (1, 2, 1, 3),
            &Device::Cpu,
        )
        .unwrap();
        let got = seg_loss(&logits, &[0, 0, 1], SegLoss::OeemBalanced)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let ce = |a: f32, b: f32| -(a - (a.exp() + b.exp()).ln());
        let l = [ce(z[0], 0.0), ce(z[1], 0.0), ce(1.0, z[2])];
        let (e0, e1) = ((-l[0]).exp(), (-l[1]).exp());
        let w = [2.0 * e0 / (e0 + e1), 2.0 * e1 / (e0 + e1), 1.0];
        let want = (w[0] * l[0] + w[1] * l[1] + w[2] * l[2]) / 3.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Equal losses within each class: the same as cross-entropy.
        let flat = Tensor::from_vec(
            vec![1f32, 1.0, 0.0, 0.0, 0.0, 1.0],
            (1, 2, 1, 3),
            &Device::Cpu,
        )
        .unwrap();
        let a = seg_loss(&flat, &[0, 0, 1], SegLoss::Ce)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let b = seg_loss(&flat, &[0, 0, 1], SegLoss::OeemBalanced)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((a - b).abs() < 1e-6);
    }

    #[test]
    fn balanced_ce_by_hand() {
        // Three labelled pixels (two background, one foreground) and one ignored: each class
        // present gets half the weight, whatever its pixel count.
        let z = [(2f32, 0f32), (0.5, 0.0), (0.0, 1.0), (9.0, -9.0)];
        let mut v = vec![];
        v.extend(z.iter().map(|p| p.0));
        v.extend(z.iter().map(|p| p.1));
        let logits = Tensor::from_vec(v, (1, 2, 1, 4), &Device::Cpu).unwrap();
        let got = seg_loss(&logits, &[0, 0, 1, IGNORE], SegLoss::BalancedCe)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let ce = |a: f64, b: f64| (a.exp() + b.exp()).ln() - a;
        let bg = (ce(2.0, 0.0) + ce(0.5, 0.0)) / 2.0;
        let fg = ce(1.0, 0.0);
        assert!((got - (bg + fg) / 2.0).abs() < 1e-6, "{got}");
        // One class only: its mean loss, the same as cross-entropy.
        let a = seg_loss(&logits, &[0, 0, 0, 0], SegLoss::BalancedCe)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let b = seg_loss(&logits, &[0, 0, 0, 0], SegLoss::Ce)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((a - b).abs() < 1e-6);
    }

    #[test]
    fn agreement_and_collapse_by_hand() {
        // confusion[label][prediction]: 60 bg→bg, 20 bg→fg, 5 fg→bg, 15 fg→fg.
        let counts = |c: [[u64; 2]; 2]| {
            let mut cm = Confusion::new(2);
            for (t, row) in c.iter().enumerate() {
                for (p, &n) in row.iter().enumerate() {
                    cm.add_count(t, p, n);
                }
            }
            cm
        };
        let a = LabelAgreement::of(&counts([[60, 20], [5, 15]])).unwrap();
        let iou_bg = 60.0 / (60.0 + 20.0 + 5.0);
        let iou_fg = 15.0 / (15.0 + 5.0 + 20.0);
        assert!((a.miou - (iou_bg + iou_fg) / 2.0).abs() < 1e-12);
        assert!((a.label_foreground - 0.20).abs() < 1e-12);
        assert!((a.predicted_foreground - 0.35).abs() < 1e-12);
        assert!(!a.collapsed);
        // All background predicted while a fifth of the labels are foreground: collapsed.
        let c = LabelAgreement::of(&counts([[80, 0], [20, 0]])).unwrap();
        assert!(c.collapsed && c.predicted_foreground == 0.0);
        // All foreground predicted: collapsed too.
        assert!(collapsed(1.0, 0.3));
        // 0.5 % foreground predicted where the labels have 1 %: under-segmented, not collapsed;
        // where they have 6 %: collapsed. No foreground predicted where the labels have 1.8 %
        // (a synthetic seed's pseudo labels): collapsed; where they have 0.4 %: the labels are
        // one class.
        assert!(!collapsed(0.005, 0.01));
        assert!(collapsed(0.005, 0.06));
        assert!(collapsed(0.0, 0.018));
        assert!(!collapsed(0.0, 0.004));
        assert!(LabelAgreement::of(&counts([[0, 0], [0, 0]])).is_none());
    }

    #[test]
    fn pair_augmentation_keeps_image_and_label_aligned() {
        // Label = 1 exactly where the red channel is high; any crop/flip/rotation keeps that.
        let img = RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([if (x * 3 + y) % 7 < 3 { 250 } else { 10 }, 100, 100])
        });
        let label = GrayImage::from_fn(40, 30, |x, y| image::Luma([u8::from((x * 3 + y) % 7 < 3)]));
        let aug = Augment {
            color: 0.0,
            stain: StainJitter::None,
            ..Augment::default()
        };
        for seed in 0..8 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (a, l) = augment_pair(&img, &label, 24, CropSampling::Uniform, &aug, &mut rng);
            assert_eq!(a.dimensions(), (24, 24));
            for (p, q) in a.pixels().zip(l.pixels()) {
                assert_eq!(p.0[0] > 128, q.0[0] == 1);
            }
        }
        // Smaller than the crop: scaled up, still square crop.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (a, l) = augment_pair(&img, &label, 64, CropSampling::Uniform, &aug, &mut rng);
        assert_eq!((a.dimensions(), l.dimensions()), ((64, 64), (64, 64)));
        // A label smaller than the crop beside an image that is not: brought to the image's
        // grid, no panic, both crops square.
        let big = RgbImage::from_pixel(80, 70, image::Rgb([200, 100, 100]));
        for sampling in [CropSampling::Uniform, CropSampling::LabelRatio] {
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let (a, l) = augment_pair(&big, &label, 64, sampling, &aug, &mut rng);
            assert_eq!((a.dimensions(), l.dimensions()), ((64, 64), (64, 64)));
        }
    }

    /// Uniform crops with the default augmentation are the ones every cached segmenter was
    /// trained on: pinned to the hashes (image, label) of the code before `crop_sampling`.
    #[test]
    fn default_training_crops_are_unchanged() {
        let img = RgbImage::from_fn(300, 200, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        });
        let label = GrayImage::from_fn(300, 200, |x, y| {
            image::Luma([u8::from((x / 20 + y / 30) % 3 == 0)])
        });
        let (a, l) = augment_pair(
            &img,
            &label,
            64,
            CropSampling::Uniform,
            &Augment::default(),
            &mut ChaCha8Rng::seed_from_u64(3),
        );
        let fnv = |b: &[u8]| {
            b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            })
        };
        assert_eq!(
            (fnv(a.as_raw()), fnv(l.as_raw())),
            (17_231_674_996_454_198_624, 13_013_222_289_976_014_141)
        );
    }

    /// `label-ratio` crops: the first of its draws is the uniform crop of the same seed, so its
    /// crop's foreground share is never farther from the image's than the uniform one's; on a
    /// map with foreground in one quarter it is strictly nearer on most seeds, and a map with
    /// nothing labelled falls back to the first draw.
    #[test]
    fn label_ratio_crops_keep_the_image_ratio_at_least_as_well_as_uniform() {
        // 25 % foreground: the left quarter; a band of ignored pixels
        let label = GrayImage::from_fn(120, 80, |x, y| {
            image::Luma([if y < 4 { 255 } else { u8::from(x < 30) }])
        });
        let target = labelled_fg_share(&label, 0, 0, 120, 80).unwrap();
        assert!((target - 0.25).abs() < 1e-12);
        let mut nearer = 0;
        for seed in 0..64 {
            let u = crop_origin(
                &label,
                40,
                CropSampling::Uniform,
                &mut ChaCha8Rng::seed_from_u64(seed),
            );
            let r = crop_origin(
                &label,
                40,
                CropSampling::LabelRatio,
                &mut ChaCha8Rng::seed_from_u64(seed),
            );
            let gap = |(x, y)| (labelled_fg_share(&label, x, y, 40, 40).unwrap() - target).abs();
            assert!(gap(r) <= gap(u), "seed {seed}: {r:?} vs {u:?}");
            nearer += usize::from(gap(r) < gap(u));
        }
        assert!(nearer > 32, "{nearer} of 64");
        assert_eq!(RATIO_CANDIDATES, 4);
        let ignored = GrayImage::from_pixel(50, 50, image::Luma([255]));
        let first = crop_origin(
            &ignored,
            20,
            CropSampling::Uniform,
            &mut ChaCha8Rng::seed_from_u64(5),
        );
        let ratio = crop_origin(
            &ignored,
            20,
            CropSampling::LabelRatio,
            &mut ChaCha8Rng::seed_from_u64(5),
        );
        assert_eq!(first, ratio);
    }

    /// Where the encoder starts, by `segmentation.init`: `segmentation.pretrained` only for
    /// "pretrained" (and then not twice in the cache key), `backbone.pretrained` only for a
    /// scratch encoder of the classifier's architecture at full width.
    #[test]
    fn the_encoder_reads_the_weights_file_its_init_names() {
        let mut cfg = ExperimentConfig::default();
        cfg.backbone.pretrained = Some("classifier.pth".into());
        cfg.segmentation.pretrained = Some("encoder.pth".into());
        let of = |cfg: &ExperimentConfig| {
            let c = SegmenterConfig::of(cfg);
            assert_eq!(c.segmentation.pretrained, None);
            c.pretrained
        };
        // default: VGG-16 classifier, ResNet-18 encoder — the architectures differ
        assert_eq!(of(&cfg), None);
        cfg.segmentation.init = SegInit::Pretrained;
        assert_eq!(of(&cfg).as_deref(), Some("encoder.pth"));
        cfg.segmentation.init = SegInit::Scratch;
        cfg.segmentation.encoder = cfg.backbone.arch;
        assert_eq!(of(&cfg).as_deref(), Some("classifier.pth"));
        cfg.segmentation.width = 0.5;
        assert_eq!(of(&cfg), None);
        cfg.segmentation.init = SegInit::Classifier;
        cfg.segmentation.width = 1.0;
        assert_eq!(of(&cfg), None);
        // a scratch run's key does not depend on the unused path
        let mut other = cfg.clone();
        other.segmentation.pretrained = Some("elsewhere.pth".into());
        assert_eq!(SegmenterConfig::of(&cfg), SegmenterConfig::of(&other));
    }
}
