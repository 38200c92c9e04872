//! The classifier training loop: seeded data order and augmentation, the manifest's loss
//! variant, schedule and optimiser, per-epoch validation, best/last checkpoints that let an
//! interrupted training resume at the right epoch with the right learning rate, early stopping,
//! and a clear error on a non-finite loss.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::losses::{self, GridTransform};
use super::optim::{lr_at, Optimizer};
use crate::config::{ExperimentConfig, LossVariant};
use crate::data::loader::{self, Augment, Images};
use crate::data::{DatasetIndex, Split};
use crate::error::{Error, Result};
use crate::metrics::classification::Metrics;
use crate::model::{init, weights, Backbone, BackboneSpec};

/// One row of the training history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRow {
    /// Epoch (1-based).
    pub epoch: u32,
    /// Learning rate at the start of the epoch.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (on augmented views).
    pub train_accuracy: f64,
    /// Validation loss (cross-entropy).
    pub valid_loss: f64,
    /// Validation accuracy.
    pub valid_accuracy: f64,
    /// Validation balanced accuracy (the selection metric).
    pub valid_balanced_accuracy: f64,
    /// Validation ROC AUC.
    pub valid_auc: f64,
    /// Wall-clock seconds of the epoch.
    pub seconds: f64,
}

/// Progress saved after every epoch in the scratch folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    epochs_done: u32,
    best_epoch: u32,
    best_score: (f64, f64),
    bad_epochs: u32,
    history: Vec<EpochRow>,
}

/// What a finished training reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// Epoch whose weights were kept.
    pub best_epoch: u32,
    /// Epochs actually run (fewer than configured if early stopping fired).
    pub epochs_run: u32,
    /// Whether early stopping ended training.
    pub early_stopped: bool,
    /// Training images per second (forward + backward + update, augmentation included).
    pub train_images_per_s: f64,
    /// Per-epoch history.
    pub history: Vec<EpochRow>,
}

/// Predictions of a model on a set of images.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// Sample indices.
    pub items: Vec<usize>,
    /// Class probabilities, one row per item.
    pub probs: Vec<Vec<f32>>,
}

/// A built classifier and its variables.
pub struct Classifier {
    /// The network.
    pub model: Backbone,
    /// Its variables (torchvision names).
    pub vars: VarMap,
}

impl Classifier {
    /// The backbone settings of a resolved config.
    pub fn spec(cfg: &ExperimentConfig) -> BackboneSpec {
        BackboneSpec {
            arch: cfg.backbone.arch,
            batch_norm: cfg.backbone.batch_norm,
            width: cfg.backbone.width,
            output_stride_8: false,
        }
    }

    /// Build the manifest's backbone with seeded initialisation and optional pretrained weights.
    pub fn build(
        cfg: &ExperimentConfig,
        classes: usize,
        dev: &Device,
        manifest_dir: &Path,
    ) -> Result<Self> {
        let vars = VarMap::new();
        let vb = init::var_builder(&vars, cfg.train.seed, dev);
        let model = Backbone::new(Self::spec(cfg), classes, vb)?;
        if let Some(p) = &cfg.backbone.pretrained {
            let mut n = 0;
            for prefix in model.features.pretrained_prefixes() {
                n += weights::load_pretrained(&vars, &manifest_dir.join(p), prefix)?;
            }
            tracing::info!("loaded {n} pretrained tensors from {p}");
        }
        Ok(Self { model, vars })
    }

    /// Rebuild a trained classifier from the classify stage's weights file.
    pub fn load(
        cfg: &ExperimentConfig,
        classes: usize,
        dev: &Device,
        weights_file: &Path,
    ) -> Result<Self> {
        let vars = VarMap::new();
        let vb = init::var_builder(&vars, cfg.train.seed, dev);
        let model = Backbone::new(Self::spec(cfg), classes, vb)?;
        weights::load_all(&vars, weights_file)?;
        Ok(Self { model, vars })
    }

    /// Variables the optimiser updates: all but those of the first `freeze_blocks` blocks.
    pub fn trainable(&self, freeze_blocks: u32) -> Vec<(String, candle_core::Var)> {
        let frozen = self.model.features.block_prefixes(freeze_blocks as usize);
        let data = self
            .vars
            .data()
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        let mut v: Vec<(String, candle_core::Var)> = data
            .into_iter()
            .filter(|(k, _)| !frozen.iter().any(|f| k.starts_with(f)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Class probabilities for `items`, without augmentation.
    pub fn predict(
        &self,
        images: &Images,
        items: &[usize],
        size: u32,
        batch: usize,
        dev: &Device,
    ) -> Result<Predictions> {
        let mut probs = Vec::with_capacity(items.len());
        for chunk in items.chunks(batch.max(1)) {
            let x = loader::batch(images, chunk, size, None, 0, dev)?;
            let (_, logits) = self.model.forward_t(&x, false, None)?;
            let p = candle_nn::ops::softmax(&logits, D::Minus1)?
                .to_device(&Device::Cpu)?
                .to_vec2::<f32>()?;
            probs.extend(p);
        }
        Ok(Predictions {
            items: items.to_vec(),
            probs,
        })
    }
}

fn one_hot(labels: &[usize], k: usize, dev: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; labels.len() * k];
    for (i, &l) in labels.iter().enumerate() {
        v[i * k + l] = 1.0;
    }
    Ok(Tensor::from_vec(v, (labels.len(), k), dev)?)
}

/// Everything a training run needs.
pub struct Job<'a> {
    /// The resolved variant.
    pub cfg: &'a ExperimentConfig,
    /// The dataset.
    pub idx: &'a DatasetIndex,
    /// Patient → split.
    pub split: &'a BTreeMap<String, Split>,
    /// Compute device.
    pub device: &'a Device,
    /// Folder whose checkpoints survive an interruption.
    pub scratch: &'a Path,
    /// Folder of the manifest (relative weight paths).
    pub manifest_dir: &'a Path,
}

impl Job<'_> {
    /// Sample indices of a split.
    pub fn items(&self, s: Split) -> Vec<usize> {
        (0..self.idx.samples.len())
            .filter(|&i| self.split.get(&self.idx.samples[i].patient) == Some(&s))
            .collect()
    }
}

/// Train the classifier; returns the model with its best weights loaded, and the summary.
pub fn train(job: &Job, images: &Images) -> Result<(Classifier, TrainSummary)> {
    let cfg = job.cfg;
    let t = &cfg.train;
    let k = job.idx.spec.classes.len();
    let positive = job.idx.spec.positive;
    let dev = job.device;
    let clf = Classifier::build(cfg, k, dev, job.manifest_dir)?;
    let trainable = clf.trainable(cfg.backbone.freeze_blocks);
    let mut opt = Optimizer::new(t.optimizer, trainable, t.lr, t.weight_decay, t.momentum)?;
    let train_items = job.items(Split::Train);
    let valid_items = job.items(Split::Valid);
    let labels: Vec<usize> = job.idx.samples.iter().map(|s| s.class).collect();
    let aug = Augment::default();
    let bs = t.batch_size as usize;
    let steps_per_epoch = train_items.len().div_ceil(bs).max(1);

    let ckpt = Checkpoint::new(job.scratch, "last");
    let best = job.scratch.join("best.safetensors");
    let mut prog = Progress {
        epochs_done: 0,
        best_epoch: 0,
        best_score: (f64::NEG_INFINITY, f64::NEG_INFINITY),
        bad_epochs: 0,
        history: vec![],
    };
    if let Some(p) = ckpt.resume::<Progress>(&clf.vars, &mut opt, dev)? {
        tracing::info!("resuming classifier training after epoch {}", p.epochs_done);
        prog = p;
    }

    let mut seen = 0usize;
    let mut train_secs = 0.0;
    let mut early = false;
    for epoch in prog.epochs_done..t.epochs {
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(
            t.seed ^ (epoch as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
        );
        let order: Vec<usize> = if t.balanced_sampling {
            let by_class: Vec<Vec<usize>> = (0..k)
                .map(|c| {
                    train_items
                        .iter()
                        .copied()
                        .filter(|&i| labels[i] == c)
                        .collect()
                })
                .collect();
            (0..train_items.len())
                .filter_map(|_| {
                    let c = rng.random_range(0..k);
                    by_class[c]
                        .get(rng.random_range(0..by_class[c].len().max(1)))
                        .copied()
                })
                .collect()
        } else {
            let mut o = train_items.clone();
            o.shuffle(&mut rng);
            o
        };
        let lr0 = lr_at(t.schedule, t.lr, epoch as f64, t.epochs, t.warmup_epochs);
        let (mut loss_sum, mut correct, mut n) = (0.0, 0usize, 0usize);
        for (bi, chunk) in order.chunks(bs).enumerate() {
            if chunk.len() < 2 && cfg.backbone.batch_norm {
                continue; // batch norm needs two images
            }
            let step = epoch as f64 + bi as f64 / steps_per_epoch as f64;
            opt.set_lr(lr_at(t.schedule, t.lr, step, t.epochs, t.warmup_epochs));
            let x = loader::batch(images, chunk, t.image_size, Some(&aug), rng.random(), dev)?;
            let y: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
            let yt = one_hot(&y, k, dev)?;
            let c = clf.model.feature_channels();
            let mask: Vec<f32> = (0..chunk.len() * c)
                .map(|_| if rng.random_bool(0.5) { 2.0 } else { 0.0 })
                .collect();
            let mask = Tensor::from_vec(mask, (chunk.len(), c), dev)?;
            let (feats, logits) = clf.model.forward_t(&x, true, Some(&mask))?;
            let l = &cfg.loss;
            let loss = match l.variant {
                LossVariant::Ce => losses::cross_entropy(&logits, &yt)?,
                LossVariant::Bce => losses::bce(&logits, &yt)?,
                LossVariant::Focal => losses::focal(&logits, &yt, l.focal_gamma, l.focal_alpha)?,
                LossVariant::LabelSmoothing => {
                    losses::label_smoothing(&logits, &yt, l.label_smoothing)?
                }
                LossVariant::CamArea => {
                    let cam = clf.model.cam(&feats)?;
                    (losses::cross_entropy(&logits, &yt)?
                        + (losses::cam_area(&cam, &yt, positive)? * l.evidence_weight)?)?
                }
                LossVariant::Equivariance => {
                    let tf = GridTransform::ALL[rng.random_range(0..GridTransform::ALL.len())];
                    let cam = clf.model.cam(&feats)?;
                    let (feats_t, _) = clf.model.forward_t(&tf.apply(&x)?, true, None)?;
                    let cam_t = clf.model.cam(&feats_t)?;
                    let eq = losses::equivariance(&cam_t, &tf.apply(&cam)?)?;
                    (losses::cross_entropy(&logits, &yt)? + (eq * l.evidence_weight)?)?
                }
            };
            let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !lv.is_finite() {
                return Err(Error::stage(
                    "classify",
                    format!("the loss became {lv} at epoch {} batch {} (lr {:.2e}); lower train.lr or use a warm-up", epoch + 1, bi + 1, opt.lr()),
                ));
            }
            let grads = loss.backward()?;
            opt.step(&grads)?;
            let pred = logits
                .argmax(D::Minus1)?
                .to_device(&Device::Cpu)?
                .to_vec1::<u32>()?;
            correct += pred
                .iter()
                .zip(&y)
                .filter(|(p, y)| **p as usize == **y)
                .count();
            loss_sum += lv * chunk.len() as f64;
            n += chunk.len();
        }
        train_secs += t0.elapsed().as_secs_f64();
        seen += n;

        let pv = clf.predict(images, &valid_items, t.image_size, bs * 2, dev)?;
        let vy: Vec<usize> = valid_items.iter().map(|&i| labels[i]).collect();
        let vp: Vec<f64> = pv.probs.iter().map(|p| p[positive] as f64).collect();
        let truth_pos: Vec<usize> = vy.iter().map(|&c| usize::from(c == positive)).collect();
        let m = Metrics::compute(&truth_pos, &vp);
        let vloss = pv
            .probs
            .iter()
            .zip(&vy)
            .map(|(p, &y)| -(p[y].max(1e-12) as f64).ln())
            .sum::<f64>()
            / vy.len().max(1) as f64;
        let row = EpochRow {
            epoch: epoch + 1,
            lr: lr0,
            train_loss: loss_sum / n.max(1) as f64,
            train_accuracy: correct as f64 / n.max(1) as f64,
            valid_loss: vloss,
            valid_accuracy: m.accuracy,
            valid_balanced_accuracy: m.balanced_accuracy,
            valid_auc: m.auc,
            seconds: t0.elapsed().as_secs_f64(),
        };
        tracing::info!(
            "epoch {}/{}: loss {:.4} acc {:.3} | valid loss {:.4} acc {:.3} bal {:.3} auc {:.3} ({:.1}s)",
            row.epoch, t.epochs, row.train_loss, row.train_accuracy, row.valid_loss, row.valid_accuracy, row.valid_balanced_accuracy, row.valid_auc, row.seconds
        );
        let score = (m.balanced_accuracy, -vloss);
        if score > prog.best_score {
            prog.best_score = score;
            prog.best_epoch = epoch + 1;
            prog.bad_epochs = 0;
            weights::save(&clf.vars, &best)?;
        } else {
            prog.bad_epochs += 1;
        }
        prog.history.push(row);
        prog.epochs_done = epoch + 1;
        ckpt.save(&clf.vars, &opt, &prog)?;
        if t.patience > 0 && prog.bad_epochs >= t.patience {
            tracing::info!("early stopping: no improvement for {} epochs", t.patience);
            early = true;
            break;
        }
    }
    if best.is_file() {
        weights::load_all(&clf.vars, &best)?;
    }
    let summary = TrainSummary {
        best_epoch: prog.best_epoch,
        epochs_run: prog.epochs_done,
        early_stopped: early || prog.epochs_done < t.epochs,
        train_images_per_s: if train_secs > 0.0 {
            seen as f64 / train_secs
        } else {
            0.0
        },
        history: prog.history,
    };
    Ok((clf, summary))
}
