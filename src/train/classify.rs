//! The classifier training loop: seeded data order and augmentation, the manifest's loss
//! variant, schedule and optimiser, per-epoch validation, best/last checkpoints that let an
//! interrupted training resume at the right epoch with the right learning rate, early stopping,
//! and a clear error on a non-finite loss.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor, D};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::driver::{self, EpochStats, Learner, Score};
use super::losses::{self, GridTransform};
use super::optim::{lr_at, Optimizer};
use crate::config::{
    BackboneConfig, ExperimentConfig, LabelsConfig, LossConfig, LossVariant, TrainConfig,
};
use crate::data::loader::{self, Augment, Images, StainJitter, View};
use crate::data::patches::{Patch, FOREGROUND};
use crate::data::protocol::Protocol;
use crate::data::{DatasetIndex, Split};
use crate::error::Result;
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
    /// Mean L2 norm of the gradient over the epoch's steps.
    #[serde(default)]
    pub grad_norm: f64,
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

/// Predictions of a model on a set of images or windows.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// Class probabilities (softmax) or label probabilities (sigmoid, multi-label), one row
    /// per item.
    pub probs: Vec<Vec<f32>>,
}

/// Everything the classifier is built and trained from — the classify stage's slice of the
/// configuration (with the dataset's identity, added by the stage).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassifierConfig {
    /// The network; `cam_layer` (the CAM stage's setting, not read here) is always the
    /// default, so that which block the CAM reads never retrains the classifier.
    pub backbone: BackboneConfig,
    /// `[train]`.
    pub train: TrainConfig,
    /// `[loss]`.
    pub loss: LossConfig,
    /// `[labels]`; under image-level labels (one label per image, nothing of the window
    /// settings read) it is the default table and is not part of the key.
    #[serde(skip_serializing_if = "LabelsConfig::is_image_level")]
    pub labels: LabelsConfig,
}

/// The loss settings `loss.variant` reads, the others at their defaults (so that a sweep over
/// `loss.focal_gamma` with `variant = "ce"` is one computation, not several fake replicates).
pub fn effective_loss(l: &LossConfig) -> LossConfig {
    let d = LossConfig::default();
    match l.variant {
        LossVariant::Ce | LossVariant::Bce => LossConfig {
            variant: l.variant,
            ..d
        },
        LossVariant::Focal => LossConfig {
            variant: l.variant,
            focal_gamma: l.focal_gamma,
            focal_alpha: l.focal_alpha,
            ..d
        },
        LossVariant::LabelSmoothing => LossConfig {
            variant: l.variant,
            label_smoothing: l.label_smoothing,
            ..d
        },
        LossVariant::Equivariance | LossVariant::CamArea => LossConfig {
            variant: l.variant,
            evidence_weight: l.evidence_weight,
            ..d
        },
    }
}

impl ClassifierConfig {
    /// The classifier's settings of a resolved config.
    pub fn of(cfg: &ExperimentConfig) -> Self {
        Self {
            backbone: BackboneConfig {
                cam_layer: BackboneConfig::default().cam_layer,
                ..cfg.backbone.clone()
            },
            train: TrainConfig {
                // Momentum is an SGD setting; AdamW does not read it.
                momentum: if cfg.train.optimizer == crate::config::Optimizer::Sgd {
                    cfg.train.momentum
                } else {
                    TrainConfig::default().momentum
                },
                stain_augment_strength: cfg
                    .train
                    .stain_augment
                    .effective_strength(cfg.train.stain_augment_strength),
                ..cfg.train.clone()
            },
            loss: effective_loss(&cfg.loss),
            labels: if cfg.labels.windows() {
                cfg.labels.clone()
            } else {
                LabelsConfig::default()
            },
        }
    }
}

/// A built classifier and its variables.
pub struct Classifier {
    /// The network.
    pub model: Backbone,
    /// Its variables (torchvision names).
    pub vars: VarMap,
}

impl Classifier {
    /// The backbone settings of a classifier config.
    pub fn spec(cfg: &ClassifierConfig) -> BackboneSpec {
        BackboneSpec {
            arch: cfg.backbone.arch,
            batch_norm: cfg.backbone.batch_norm,
            width: cfg.backbone.width,
            output_stride_8: false,
        }
    }

    /// Build the manifest's backbone with seeded initialisation and optional pretrained weights.
    pub fn build(
        cfg: &ClassifierConfig,
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
        cfg: &ClassifierConfig,
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

    /// Probabilities for `items` (sample indices or windows), without augmentation: softmax
    /// over classes, or per-label sigmoids when `multi_label`.
    pub fn predict<V: Copy + Into<View> + Sync>(
        &self,
        images: &Images,
        items: &[V],
        size: u32,
        batch: usize,
        multi_label: bool,
        dev: &Device,
    ) -> Result<Predictions> {
        let mut probs = Vec::with_capacity(items.len());
        for chunk in items.chunks(batch.max(1)) {
            let x = loader::batch(images, chunk, size, None, 0, dev)?;
            let (_, logits) = self.model.forward_t(&x, false, None)?;
            let p = if multi_label {
                candle_nn::ops::sigmoid(&logits)?
            } else {
                candle_nn::ops::softmax(&logits, D::Minus1)?
            };
            probs.extend(p.to_device(&Device::Cpu)?.to_vec2::<f32>()?);
        }
        Ok(Predictions { probs })
    }
}

/// What one example should make the classifier say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One class of the dataset (image-level labels; softmax).
    Class(usize),
    /// `[background present, foreground present]` (a window; one sigmoid per label).
    Labels([bool; 2]),
}

/// One example: what the network sees and what it should say.
#[derive(Debug, Clone, Copy)]
pub struct Example {
    /// A whole image or a window of it.
    pub view: View,
    /// Its label.
    pub target: Target,
}

impl Example {
    /// Write the target row (one-hot class or multi-hot labels) into `row`.
    fn write_target(&self, row: &mut [f32]) {
        match self.target {
            Target::Class(c) => row[c] = 1.0,
            Target::Labels(l) => {
                for (r, present) in row.iter_mut().zip(l) {
                    *r = f32::from(u8::from(present));
                }
            }
        }
    }
    /// Whether the output scored by the selection metric (`scored`) should be on: the example
    /// is of that class, or has that label.
    fn truth(&self, scored: usize) -> bool {
        match self.target {
            Target::Class(c) => c == scored,
            Target::Labels(l) => l[scored],
        }
    }
    /// Balanced-sampling group: the class, or whether the scored label is present.
    fn group(&self, scored: usize) -> usize {
        match self.target {
            Target::Class(c) => c,
            Target::Labels(l) => usize::from(l[scored]),
        }
    }
}

/// What the classifier learns from: training and validation examples, and the output the
/// selection metric scores (the positive class, or the foreground label).
#[derive(Debug, Clone)]
pub struct Examples {
    /// Training examples.
    pub train: Vec<Example>,
    /// Validation examples.
    pub valid: Vec<Example>,
    /// Multi-label (sigmoid per output) rather than one class per example (softmax).
    pub multi_label: bool,
    /// Output scored by the selection metric.
    pub scored: usize,
}

impl Examples {
    /// Whole images of a job's train and valid splits, one class each.
    pub fn images(job: &Job) -> Self {
        let whole = |s: Split| -> Vec<View> { job.items(s).into_iter().map(View::from).collect() };
        Self::classes(job, &whole(Split::Train), &whole(Split::Valid))
    }
    /// Views (whole images, or windows of them: image-level labels learned on windows) of a
    /// job's train and valid splits, each with its image's class.
    pub fn classes(job: &Job, train: &[View], valid: &[View]) -> Self {
        let of = |vs: &[View]| -> Vec<Example> {
            vs.iter()
                .map(|&view| Example {
                    view,
                    target: Target::Class(job.idx.samples[view.sample].class),
                })
                .collect()
        };
        Self {
            train: of(train),
            valid: of(valid),
            multi_label: false,
            scored: job.idx.spec.positive,
        }
    }
    /// Whether the examples are windows (whose label holds for the whole window only, and
    /// whose scale the CAM stage reuses: no random resized crop).
    pub fn windows(&self) -> bool {
        self.train.iter().any(|e| e.view.window.is_some())
    }
    /// Labelled windows, scored on the foreground label.
    pub fn patches(train: &[Patch], valid: &[Patch]) -> Self {
        let of = |ps: &[Patch]| -> Vec<Example> {
            ps.iter()
                .map(|p| Example {
                    view: (*p).into(),
                    target: Target::Labels(p.labels),
                })
                .collect()
        };
        Self {
            train: of(train),
            valid: of(valid),
            multi_label: true,
            scored: FOREGROUND,
        }
    }
}

/// One training step's batch and random draws, fixed before the epoch runs.
struct Step {
    /// Batch index within the epoch (for the learning-rate schedule and messages).
    bi: usize,
    /// Indices of the training examples.
    chunk: Vec<usize>,
    /// Augmentation seed.
    seed: u64,
    /// Feature dropout mask (0 or 2 per image and channel).
    mask: Vec<f32>,
    /// The equivariance loss's transform, if that loss is used.
    transform: Option<GridTransform>,
}

/// Target rows `(n, k)` of `examples`.
fn targets(examples: &[&Example], k: usize) -> Vec<f32> {
    let mut v = vec![0f32; examples.len() * k];
    for (row, e) in v.chunks_mut(k).zip(examples) {
        e.write_target(row);
    }
    v
}

/// Number of classifier outputs: the dataset's classes, or the two window labels.
pub fn outputs(cfg: &ClassifierConfig, idx: &DatasetIndex) -> usize {
    Protocol::of(&cfg.labels).classifier_outputs(&idx.spec)
}

/// Everything a training run needs.
pub struct Job<'a> {
    /// The classifier's settings.
    pub cfg: &'a ClassifierConfig,
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

/// The classifier's part of a training loop (the [`driver`] runs it).
struct ClassifierLearner<'a> {
    job: &'a Job<'a>,
    images: &'a Images<'a>,
    ex: &'a Examples,
    clf: &'a Classifier,
    aug: Augment,
    /// Outputs.
    k: usize,
    /// Feature channels (the dropout mask's width).
    c: usize,
    /// Balanced-sampling groups.
    groups: usize,
}

/// Correct predictions of an epoch's training steps.
#[derive(Default)]
struct Correct(f64);

impl Learner for ClassifierLearner<'_> {
    type Step = Step;
    type Batch = Tensor;
    type Tally = Correct;
    type Row = EpochRow;

    fn stage(&self) -> &'static str {
        "classify"
    }
    fn lr_key(&self) -> &'static str {
        "train.lr"
    }
    fn epochs(&self) -> u32 {
        self.job.cfg.train.epochs
    }
    fn examples(&self) -> (usize, usize) {
        (self.ex.train.len(), self.job.cfg.train.batch_size as usize)
    }
    fn epoch_seed(&self, epoch: u32) -> u64 {
        self.job.cfg.train.seed ^ (epoch as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn plan(&self, _epoch: u32, rng: &mut ChaCha8Rng) -> Vec<Step> {
        let (cfg, ex) = (self.job.cfg, self.ex);
        let (n_train, scored, groups) = (ex.train.len(), ex.scored, self.groups);
        let bs = cfg.train.batch_size as usize;
        let order: Vec<usize> = if cfg.train.balanced_sampling {
            let by_group: Vec<Vec<usize>> = (0..groups)
                .map(|c| {
                    (0..n_train)
                        .filter(|&i| ex.train[i].group(scored) == c)
                        .collect()
                })
                .collect();
            (0..n_train)
                .filter_map(|_| {
                    let c = rng.random_range(0..groups);
                    by_group[c]
                        .get(rng.random_range(0..by_group[c].len().max(1)))
                        .copied()
                })
                .collect()
        } else {
            let mut o: Vec<usize> = (0..n_train).collect();
            o.shuffle(rng);
            o
        };
        // Every random draw of the epoch's steps, in the order the steps make them.
        order
            .chunks(bs)
            .enumerate()
            // A last batch of one is dropped where batch norm trains on it (batch statistics
            // of one image); with `train.batch_size = 1` every batch is one image and trains.
            .filter(|(_, chunk)| chunk.len() >= 2 || bs == 1 || !cfg.backbone.batch_norm)
            .map(|(bi, chunk)| Step {
                bi,
                chunk: chunk.to_vec(),
                seed: rng.random(),
                mask: (0..chunk.len() * self.c)
                    .map(|_| if rng.random_bool(0.5) { 2.0 } else { 0.0 })
                    .collect(),
                transform: matches!(cfg.loss.variant, LossVariant::Equivariance)
                    .then(|| GridTransform::ALL[rng.random_range(0..GridTransform::ALL.len())]),
            })
            .collect()
    }
    fn position(&self, step: &Step) -> usize {
        step.bi
    }
    fn steps_per_epoch(&self) -> usize {
        self.ex
            .train
            .len()
            .div_ceil(self.job.cfg.train.batch_size as usize)
    }
    fn lr_at(&self, epoch: f64) -> f64 {
        let t = &self.job.cfg.train;
        lr_at(t.schedule, t.lr, epoch, t.epochs, t.warmup_epochs)
    }
    fn build(&self, step: &Step) -> Result<Tensor> {
        let views: Vec<View> = step.chunk.iter().map(|&j| self.ex.train[j].view).collect();
        // Built on the CPU by the helper thread; moved to the device by the training one.
        let t = &self.job.cfg.train;
        loader::batch(
            self.images,
            &views,
            t.image_size,
            Some(&self.aug),
            step.seed,
            &Device::Cpu,
        )
    }
    fn loss(
        &self,
        step: &Step,
        x: Tensor,
        dev: &Device,
        tally: &mut Correct,
    ) -> Result<(Tensor, usize)> {
        let (cfg, ex, clf, k) = (self.job.cfg, self.ex, self.clf, self.k);
        let n = step.chunk.len();
        let x = x.to_device(dev)?;
        let batch: Vec<&Example> = step.chunk.iter().map(|&i| &ex.train[i]).collect();
        let target = targets(&batch, k);
        let yt = Tensor::from_vec(target.clone(), (n, k), dev)?;
        let mask = Tensor::from_vec(step.mask.clone(), (n, self.c), dev)?;
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
                    + (losses::cam_area(&cam, &yt, ex.scored)? * l.evidence_weight)?)?
            }
            LossVariant::Equivariance => {
                // Drawn in the plan for this loss (the first transform otherwise).
                let tf = step.transform.unwrap_or(GridTransform::ALL[0]);
                let cam = clf.model.cam(&feats)?;
                let (feats_t, _) = clf.model.forward_t(&tf.apply(&x)?, true, None)?;
                let cam_t = clf.model.cam(&feats_t)?;
                let eq = losses::equivariance(&cam_t, &tf.apply(&cam)?)?;
                (losses::cross_entropy(&logits, &yt)? + (eq * l.evidence_weight)?)?
            }
        };
        let lg = logits.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        tally.0 += lg
            .iter()
            .zip(target.chunks(k))
            .map(|(z, y)| accuracy_of(z, y, ex.multi_label))
            .sum::<f64>();
        Ok((loss, n))
    }
    fn end_epoch(
        &self,
        e: EpochStats,
        correct: Correct,
        started: Instant,
    ) -> Result<(EpochRow, Option<Score>)> {
        let (t, ex, k) = (&self.job.cfg.train, self.ex, self.k);
        let (multi, scored) = (ex.multi_label, ex.scored);
        let valid: Vec<&Example> = ex.valid.iter().collect();
        let views: Vec<View> = valid.iter().map(|e| e.view).collect();
        let bs = t.batch_size as usize;
        let pv = self.clf.predict(
            self.images,
            &views,
            t.image_size,
            bs * 2,
            multi,
            self.job.device,
        )?;
        let vt = targets(&valid, k);
        let vp: Vec<f64> = pv.probs.iter().map(|p| p[scored] as f64).collect();
        let truth_pos: Vec<usize> = valid.iter().map(|e| usize::from(e.truth(scored))).collect();
        let m = Metrics::compute(&truth_pos, &vp);
        let vloss = pv
            .probs
            .iter()
            .zip(vt.chunks(k))
            .map(|(p, y)| prob_loss(p, y, multi))
            .sum::<f64>()
            / valid.len().max(1) as f64;
        let row = EpochRow {
            epoch: e.epoch,
            lr: e.lr,
            train_loss: e.loss,
            train_accuracy: correct.0 / e.examples.max(1) as f64,
            grad_norm: e.grad_norm,
            valid_loss: vloss,
            valid_accuracy: m.accuracy,
            valid_balanced_accuracy: m.balanced_accuracy,
            valid_auc: m.auc,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            "epoch {}/{}: loss {:.4} acc {:.3} |grad| {:.3} | valid loss {:.4} acc {:.3} bal {:.3} auc {:.3} ({:.1}s)",
            row.epoch, t.epochs, row.train_loss, row.train_accuracy, row.grad_norm, row.valid_loss, row.valid_accuracy, row.valid_balanced_accuracy, row.valid_auc, row.seconds
        );
        Ok((row, Some((m.balanced_accuracy, -vloss))))
    }
}

/// Train the classifier on `ex`; returns the model with its best weights loaded (by validation
/// balanced accuracy, then loss), and the summary.
pub fn train(job: &Job, images: &Images, ex: &Examples) -> Result<(Classifier, TrainSummary)> {
    let cfg = job.cfg;
    let t = &cfg.train;
    let k = outputs(cfg, job.idx);
    let clf = Classifier::build(cfg, k, job.device, job.manifest_dir)?;
    let trainable = clf.trainable(cfg.backbone.freeze_blocks);
    let mut opt = Optimizer::new(t.optimizer, trainable, t.lr, t.weight_decay, t.momentum)?;
    let stain = StainJitter::of(t.stain_augment, t.stain_augment_strength);
    let aug = if ex.windows() {
        Augment {
            min_crop_area: 1.0,
            stain,
            ..Augment::default()
        }
    } else {
        Augment {
            stain,
            ..Augment::default()
        }
    };
    let learner = ClassifierLearner {
        job,
        images,
        ex,
        clf: &clf,
        aug,
        k,
        c: clf.model.feature_channels(),
        groups: if ex.multi_label { 2 } else { k },
    };
    let ckpt = Checkpoint::new(job.scratch, "last");
    let fitted = driver::fit(&learner, &clf.vars, &mut opt, job.device, &ckpt, t.patience)?;
    let summary = TrainSummary {
        best_epoch: fitted.best_epoch,
        epochs_run: fitted.epochs_run,
        early_stopped: fitted.early_stopped,
        train_images_per_s: fitted.examples_per_s,
        history: fitted.history,
    };
    Ok((clf, summary))
}

/// Accuracy of one example from its logits: the argmax class is the target's (single-label),
/// or the share of labels whose sigmoid decision (logit ≥ 0) matches (multi-label).
fn accuracy_of(logits: &[f32], target: &[f32], multi: bool) -> f64 {
    if multi {
        let hits = logits
            .iter()
            .zip(target)
            .filter(|(z, y)| (**z >= 0.0) == (**y > 0.5))
            .count();
        hits as f64 / logits.len().max(1) as f64
    } else {
        let arg = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap_or(0);
        f64::from(u8::from(target.get(arg).is_some_and(|&y| y > 0.5)))
    }
}

/// Loss of one example from its probabilities: cross-entropy (single-label) or the mean
/// binary cross-entropy over labels (multi-label).
fn prob_loss(p: &[f32], target: &[f32], multi: bool) -> f64 {
    let ln = |v: f32| (v.clamp(1e-12, 1.0) as f64).ln();
    if multi {
        -p.iter()
            .zip(target)
            .map(|(&p, &y)| y as f64 * ln(p) + (1.0 - y as f64) * ln(1.0 - p))
            .sum::<f64>()
            / p.len().max(1) as f64
    } else {
        -p.iter()
            .zip(target)
            .map(|(&p, &y)| y as f64 * ln(p))
            .sum::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_loss_by_hand() {
        assert_eq!(accuracy_of(&[0.1, 2.0], &[0.0, 1.0], false), 1.0);
        assert_eq!(accuracy_of(&[3.0, 2.0], &[0.0, 1.0], false), 0.0);
        // Multi-label: background predicted absent (wrong), foreground present (right).
        assert_eq!(accuracy_of(&[-1.0, 0.5], &[1.0, 1.0], true), 0.5);
        let ce = prob_loss(&[0.25, 0.75], &[0.0, 1.0], false);
        assert!((ce - -(0.75f64).ln()).abs() < 1e-6);
        let bce = prob_loss(&[0.25, 0.75], &[1.0, 1.0], true);
        assert!((bce - -((0.25f64).ln() + (0.75f64).ln()) / 2.0).abs() < 1e-6);
    }
}
