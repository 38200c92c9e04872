//! The segmenter: DeepLab V3+ trained on per-pixel labels (CAM pseudo labels, or the true
//! masks for the fully supervised upper bound), and sliding-window inference.
//!
//! Training: images and labels resized by `segmentation.scale` (labels by nearest neighbour;
//! histology tiles are often segmented below scan resolution), random crops of
//! `segmentation.crop_size` (images smaller than a crop are scaled up first), flips, 90° rotations — applied identically to image
//! and label — and colour / stain jitter on the image; per-pixel cross-entropy with ignore
//! index 255, or the OEEM weighting; poly learning-rate decay; the optimiser, momentum and
//! weight decay of `[train]`; a checkpoint after every epoch so an interrupted training
//! resumes at the right epoch. The last epoch is kept: validation labels are pseudo labels
//! too, so there is nothing trustworthy to select on without ground truth.
//!
//! Inference: windows of the crop size with a third of overlap, softmax probabilities averaged
//! where windows overlap (and over a horizontal flip with `segmentation.tta`), argmax.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarMap;
use image::{imageops, imageops::FilterType, GrayImage, RgbImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::optim::{lr_at, Optimizer};
use crate::config::{
    ExperimentConfig, Optimizer as OptimizerKind, Schedule, SegInit, SegLoss, SegmentationConfig,
};
use crate::data::loader::{self, color_jitter, to_chw, Augment, Images};
use crate::data::mask::IGNORE;
use crate::error::{Error, Result};
use crate::model::deeplab::{DeepLab, DeepLabConfig};
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
    /// `false` here.
    pub segmentation: SegmentationConfig,
    /// Shared `[train]` settings.
    pub train: SegTrain,
    /// `backbone.pretrained`, when the segmenter's encoder starts from it (scratch init, same
    /// architecture, full width).
    pub pretrained: Option<String>,
}

impl SegmenterConfig {
    /// The segmenter's settings of a resolved config.
    pub fn of(cfg: &ExperimentConfig) -> Self {
        let s = &cfg.segmentation;
        let pretrained =
            (s.init == SegInit::Scratch && cfg.backbone.arch == s.encoder && s.width == 1.0)
                .then(|| cfg.backbone.pretrained.clone())
                .flatten();
        Self {
            segmentation: SegmentationConfig {
                tta: false,
                ..s.clone()
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
    /// (`segmentation.init = "classifier"`) or from `backbone.pretrained` when the
    /// architectures match.
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
                name.strip_prefix("encoder.").map(String::from)
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
            (SegInit::Scratch, _) => {
                if let Some(p) = &cfg.pretrained {
                    let prefixes = model.encoder.pretrained_prefixes();
                    let n = weights::load_mapped(&vars, &manifest_dir.join(p), |name| {
                        name.strip_prefix("encoder.")
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
    pub fn predict(
        &self,
        img: &RgbImage,
        crop: u32,
        scale: f64,
        tta: bool,
        batch: usize,
        dev: &Device,
    ) -> Result<Vec<f32>> {
        let (w0, h0) = img.dimensions();
        // Predict on a resized copy and resize the probability map back to (w0, h0).
        let resized = |other: &RgbImage| -> Result<Vec<f32>> {
            let (w, h) = other.dimensions();
            let p = self.predict(other, crop, 1.0, tta, batch, dev)?;
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
            return resized(&imageops::resize(
                img,
                uw,
                uh,
                imageops::FilterType::Triangle,
            ));
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
        let (wu, hu) = (w as usize, h as usize);
        let mut prob = vec![0f32; wu * hu];
        let mut count = vec![0f32; wu * hu];
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
                for (yy, row) in fg[k].iter().enumerate() {
                    let base = (y as usize + yy) * wu + x as usize;
                    for (xx, v) in row.iter().enumerate() {
                        prob[base + xx] += v;
                        count[base + xx] += 1.0;
                    }
                }
            }
        }
        Ok(prob
            .iter()
            .zip(&count)
            .map(|(p, c)| if *c > 0.0 { p / c } else { 0.0 })
            .collect())
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
    imageops::resize(img, nw, nh, FilterType::Triangle)
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
        let prob = self.predict(img, s.crop_size, s.scale, s.tta, s.batch_size as usize, dev)?;
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
pub fn seg_loss(logits: &Tensor, labels: &[u8], kind: SegLoss) -> Result<Tensor> {
    let (b, k, h, w) = logits.dims4()?;
    let n = h * w;
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
    let onehot = Tensor::from_vec(onehot, (b, k, h, w), dev)?;
    let valid_t = Tensor::from_vec(valid.clone(), (b, h, w), dev)?;
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
    }
}

/// One augmented training crop of an (image, label) pair.
pub fn augment_pair(
    img: &RgbImage,
    label: &GrayImage,
    crop: u32,
    aug: &Augment,
    rng: &mut ChaCha8Rng,
) -> (RgbImage, GrayImage) {
    let (w, h) = img.dimensions();
    let (mut img, mut label) = if w < crop || h < crop {
        let s = crop as f64 / w.min(h) as f64;
        let (nw, nh) = (
            ((w as f64 * s).ceil() as u32).max(crop),
            ((h as f64 * s).ceil() as u32).max(crop),
        );
        (
            imageops::resize(img, nw, nh, FilterType::Triangle),
            imageops::resize(label, nw, nh, FilterType::Nearest),
        )
    } else {
        (img.clone(), label.clone())
    };
    let (w, h) = img.dimensions();
    let x0 = rng.random_range(0..=w - crop);
    let y0 = rng.random_range(0..=h - crop);
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

/// One row of the segmenter's training history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegEpoch {
    /// Epoch (1-based).
    pub epoch: u32,
    /// Learning rate at the start of the epoch.
    pub lr: f64,
    /// Mean training loss.
    pub loss: f64,
    /// Pixel accuracy against the training labels (labelled pixels).
    pub label_accuracy: f64,
    /// Seconds.
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    epochs_done: u32,
    history: Vec<SegEpoch>,
}

/// What a segmenter training reports.
#[derive(Debug, Clone, Serialize)]
pub struct SegSummary {
    /// Per-epoch history.
    pub history: Vec<SegEpoch>,
    /// Training crops per second.
    pub train_images_per_s: f64,
}

/// Train on `items` with their label maps. `scratch` keeps checkpoints across interruptions.
#[allow(clippy::too_many_arguments)]
pub fn train(
    cfg: &SegmenterConfig,
    images: &Images,
    items: &[usize],
    labels: &HashMap<usize, GrayImage>,
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
    let mut opt = Optimizer::new(t.optimizer, vars, s.lr, t.weight_decay, t.momentum)?;
    let items: Vec<usize> = items
        .iter()
        .copied()
        .filter(|i| labels.contains_key(i))
        .collect();
    if items.is_empty() {
        return Err(Error::stage("segment", "no training image has a label map"));
    }
    let bs = (s.batch_size as usize).max(1);
    let steps = items.len().div_ceil(bs).max(1);
    let aug = Augment::default();
    let crop = s.crop_size;
    let scaled = (s.scale - 1.0).abs() > 1e-9;
    let rescaled: HashMap<usize, GrayImage>;
    let labels = if scaled {
        rescaled = labels
            .iter()
            .map(|(k, l)| (*k, rescale_labels(l, s.scale)))
            .collect();
        &rescaled
    } else {
        labels
    };
    let ckpt = Checkpoint::new(scratch, "seg_last");
    let mut prog = Progress {
        epochs_done: 0,
        history: vec![],
    };
    if let Some(p) = ckpt.resume::<Progress>(&seg.vars, &mut opt, dev)? {
        tracing::info!("resuming segmenter training after epoch {}", p.epochs_done);
        prog = p;
    }
    let (mut seen, mut secs) = (0usize, 0.0);
    for epoch in prog.epochs_done..s.epochs {
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(
            t.seed ^ 0x5e65_e65e ^ (epoch as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
        );
        let mut order = items.clone();
        order.shuffle(&mut rng);
        let lr0 = lr_at(Schedule::Poly, s.lr, epoch as f64, s.epochs, 0);
        let (mut loss_sum, mut n, mut correct, mut counted) = (0.0, 0usize, 0u64, 0u64);
        // The batches and their augmentation seeds, drawn in step order, so that the next
        // batch can be prepared while the current one trains.
        let plan: Vec<(usize, &[usize], u64)> = order
            .chunks(bs)
            .enumerate()
            // A last batch of one crop is dropped (batch statistics of one crop); with
            // `segmentation.batch_size = 1` every batch is one crop and trains (the image
            // pooling branch then uses its running statistics, see `model::deeplab`).
            .filter(|(_, chunk)| chunk.len() >= 2 || bs == 1)
            .map(|(bi, chunk)| (bi, chunk, rng.random()))
            .collect();
        let build = |step: usize| -> Result<(Tensor, Vec<u8>)> {
            let (_, chunk, seed) = plan[step];
            let pairs: Vec<Result<(Vec<f32>, Vec<u8>)>> = chunk
                .par_iter()
                .enumerate()
                .map(|(j, &i)| {
                    let mut r = ChaCha8Rng::seed_from_u64(
                        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                            .wrapping_add(j as u64),
                    );
                    let img = images.get(i)?;
                    let img = if scaled {
                        std::borrow::Cow::Owned(rescale(&img, s.scale))
                    } else {
                        img
                    };
                    let (a, l) = augment_pair(&img, &labels[&i], crop, &aug, &mut r);
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
                Tensor::from_vec(xs, (chunk.len(), 3, c, c), &Device::Cpu)?,
                ys,
            ))
        };
        loader::prefetched(plan.len(), build, |step, batch| -> Result<()> {
            // An interrupted epoch is dropped: resuming starts it again from the checkpoint.
            crate::util::interrupt::check()?;
            let (bi, chunk, _) = plan[step];
            let (x, ys) = batch?;
            let x = x.to_device(dev)?;
            opt.set_lr(lr_at(
                Schedule::Poly,
                s.lr,
                epoch as f64 + bi as f64 / steps as f64,
                s.epochs,
                0,
            ));
            let logits = seg.model.forward_t(&x, true)?;
            let loss = seg_loss(&logits, &ys, s.loss)?;
            let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !lv.is_finite() {
                return Err(Error::stage(
                    "segment",
                    format!(
                        "the loss became {lv} at epoch {} batch {}; lower segmentation.lr",
                        epoch + 1,
                        bi + 1
                    ),
                ));
            }
            opt.step(&loss.backward()?)?;
            let pred = logits
                .argmax(1)?
                .flatten_all()?
                .to_device(&Device::Cpu)?
                .to_vec1::<u32>()?;
            for (p, y) in pred.iter().zip(&ys) {
                if *y != IGNORE {
                    counted += 1;
                    correct += u64::from(*p == *y as u32);
                }
            }
            loss_sum += lv * chunk.len() as f64;
            n += chunk.len();
            Ok(())
        })?;
        secs += t0.elapsed().as_secs_f64();
        if n == 0 {
            return Err(crate::train::classify::no_step(
                "segment",
                epoch + 1,
                order.len(),
                bs,
            ));
        }
        seen += n;
        let row = SegEpoch {
            epoch: epoch + 1,
            lr: lr0,
            loss: loss_sum / n.max(1) as f64,
            label_accuracy: correct as f64 / counted.max(1) as f64,
            seconds: t0.elapsed().as_secs_f64(),
        };
        tracing::info!(
            "segment epoch {}/{}: loss {:.4} label acc {:.3} ({:.1}s)",
            row.epoch,
            s.epochs,
            row.loss,
            row.label_accuracy,
            row.seconds
        );
        prog.history.push(row);
        prog.epochs_done = epoch + 1;
        ckpt.save(&seg.vars, &opt, &prog, epoch + 1, false)?;
        crate::util::interrupt::check()?;
    }
    Ok((
        seg,
        SegSummary {
            history: prog.history,
            train_images_per_s: if secs > 0.0 { seen as f64 / secs } else { 0.0 },
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn pair_augmentation_keeps_image_and_label_aligned() {
        // Label = 1 exactly where the red channel is high; any crop/flip/rotation keeps that.
        let img = RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([if (x * 3 + y) % 7 < 3 { 250 } else { 10 }, 100, 100])
        });
        let label = GrayImage::from_fn(40, 30, |x, y| image::Luma([u8::from((x * 3 + y) % 7 < 3)]));
        let aug = Augment {
            color: 0.0,
            stain: 0.0,
            ..Augment::default()
        };
        for seed in 0..8 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (a, l) = augment_pair(&img, &label, 24, &aug, &mut rng);
            assert_eq!(a.dimensions(), (24, 24));
            for (p, q) in a.pixels().zip(l.pixels()) {
                assert_eq!(p.0[0] > 128, q.0[0] == 1);
            }
        }
        // Smaller than the crop: scaled up, still square crop.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (a, l) = augment_pair(&img, &label, 64, &aug, &mut rng);
        assert_eq!((a.dimensions(), l.dimensions()), ((64, 64), (64, 64)));
    }
}
