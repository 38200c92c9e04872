//! One training driver for every network wsss trains (after burn-train's `fit`): the
//! classifier and the segmenter differ in what a step computes and how an epoch is judged, not
//! in how training proceeds.
//!
//! The driver owns the skeleton: resume from the committed checkpoint → per epoch a seeded
//! random generator → the learner's step plan (every random draw made before the first step,
//! so the next batch is prepared on a helper thread while the current one trains) → the
//! learning rate at each step's fractional epoch → the forward pass and loss → a clear error on
//! a non-finite loss → backward and update, with the gradient norm recorded → an error for an
//! epoch that made no step → the learner's end-of-epoch record and selection score → a
//! checkpoint committed as one piece (weights, optimiser, progress, best weights) → early
//! stopping → the best weights loaded at the end. A [`Learner`] supplies only what differs.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::optim::Optimizer;
use crate::data::loader;
use crate::error::{Error, Result};
use crate::model::weights;

/// A selection score: higher is better, compared lexicographically.
pub type Score = (f64, f64);

/// What one training loop computes; the [`fit`] driver runs it.
pub trait Learner: Sync {
    /// One step's batch (indices) and random draws, fixed before the epoch runs.
    type Step: Sync;
    /// A built batch, prepared on a helper thread (on the CPU).
    type Batch: Send;
    /// Training statistics a learner gathers over an epoch's steps (accuracy, class shares…).
    type Tally: Default;
    /// One row of the training history.
    type Row: Clone + Serialize + DeserializeOwned;

    /// Stage name in messages (`classify`, `segment`).
    fn stage(&self) -> &'static str;
    /// The manifest key of the learning rate, named when the loss becomes non-finite.
    fn lr_key(&self) -> &'static str;
    /// Epochs to train.
    fn epochs(&self) -> u32;
    /// Training examples and batch size (named when an epoch makes no step).
    fn examples(&self) -> (usize, usize);
    /// Seed of the random draws of `epoch` (0-based).
    fn epoch_seed(&self, epoch: u32) -> u64;
    /// The epoch's steps with all their random draws, taken from `rng` in step order.
    fn plan(&self, epoch: u32, rng: &mut ChaCha8Rng) -> Vec<Self::Step>;
    /// Position of a step within its epoch, in steps (the learning-rate schedule's clock).
    fn position(&self, step: &Self::Step) -> usize;
    /// Steps in a full epoch (the schedule's unit).
    fn steps_per_epoch(&self) -> usize;
    /// Learning rate at a fractional epoch.
    fn lr_at(&self, epoch: f64) -> f64;
    /// Build a step's batch (runs on the helper thread).
    fn build(&self, step: &Self::Step) -> Result<Self::Batch>;
    /// Forward pass of one step: the loss to minimise and the number of examples it covers;
    /// statistics go to `tally`.
    fn loss(
        &self,
        step: &Self::Step,
        batch: Self::Batch,
        dev: &Device,
        tally: &mut Self::Tally,
    ) -> Result<(Tensor, usize)>;
    /// The epoch's history row (validation included) and its selection score (higher is
    /// better; compared lexicographically), or `None` when this learner keeps the last epoch.
    fn end_epoch(
        &self,
        epoch: EpochStats,
        tally: Self::Tally,
        started: Instant,
    ) -> Result<(Self::Row, Option<Score>)>;
}

/// What the driver measures of every epoch, for the learner's history row.
#[derive(Debug, Clone, Copy)]
pub struct EpochStats {
    /// Epoch, 1-based.
    pub epoch: u32,
    /// Learning rate at the epoch's start.
    pub lr: f64,
    /// Mean training loss per example.
    pub loss: f64,
    /// Mean L2 norm of the gradient over the epoch's steps (all trained parameters).
    pub grad_norm: f64,
    /// Largest gradient norm of a step.
    pub grad_norm_max: f64,
    /// Examples trained on.
    pub examples: usize,
    /// Seconds of the training steps (validation excluded).
    pub train_seconds: f64,
}

/// Progress saved with every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(deserialize = "R: DeserializeOwned"))]
struct Progress<R> {
    epochs_done: u32,
    #[serde(default)]
    best_epoch: u32,
    #[serde(default)]
    best_score: Option<Score>,
    #[serde(default)]
    bad_epochs: u32,
    history: Vec<R>,
}

/// What a finished training reports.
#[derive(Debug, Clone, Serialize)]
pub struct Fitted<R> {
    /// Epoch whose weights are loaded: the best by the learner's score, or the last.
    pub best_epoch: u32,
    /// Epochs run (fewer than configured when early stopping fired).
    pub epochs_run: u32,
    /// Whether early stopping ended training.
    pub early_stopped: bool,
    /// Training examples per second (steps only).
    pub examples_per_s: f64,
    /// Per-epoch history.
    pub history: Vec<R>,
}

/// Train `learner`'s variables `vars` with `opt`, checkpointing into `ckpt`, stopping early
/// after `patience` epochs without a better score (0 = never). Returns the history; the
/// variables hold the best epoch's weights (the last epoch's when the learner keeps the last).
///
/// Errors: a non-finite loss (naming the epoch, step, learning rate and the key to lower), an
/// epoch that made no optimiser step, a checkpoint that cannot be read or written, an
/// interruption (the checkpoint lets the next run resume).
pub fn fit<L: Learner>(
    learner: &L,
    vars: &VarMap,
    opt: &mut Optimizer,
    dev: &Device,
    ckpt: &Checkpoint,
    patience: u32,
) -> Result<Fitted<L::Row>> {
    let mut prog = Progress::<L::Row> {
        epochs_done: 0,
        best_epoch: 0,
        best_score: None,
        bad_epochs: 0,
        history: vec![],
    };
    if let Some(p) = ckpt.resume::<Progress<L::Row>>(vars, opt, dev)? {
        tracing::info!(
            "resuming {} training after epoch {}",
            learner.stage(),
            p.epochs_done
        );
        prog = p;
    }
    let epochs = learner.epochs();
    let steps = learner.steps_per_epoch().max(1);
    let (mut seen, mut secs, mut early) = (0usize, 0.0, false);
    for epoch in prog.epochs_done..epochs {
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(learner.epoch_seed(epoch));
        let plan = learner.plan(epoch, &mut rng);
        let mut tally = L::Tally::default();
        let (mut loss_sum, mut n) = (0.0, 0usize);
        let (mut gsum, mut gmax, mut nsteps) = (0.0, 0.0f64, 0usize);
        let mut progress = crate::progress::Steps::new(
            format!("{} epoch {}/{epochs}", learner.stage(), epoch + 1),
            plan.len(),
        );
        loader::prefetched(
            plan.len(),
            |i| learner.build(&plan[i]),
            |i, batch| -> Result<()> {
                // An interrupted epoch is dropped: resuming starts it again from the checkpoint.
                crate::util::interrupt::check()?;
                let step = &plan[i];
                let pos = learner.position(step);
                opt.set_lr(learner.lr_at(epoch as f64 + pos as f64 / steps as f64));
                let (loss, k) = learner.loss(step, batch?, dev, &mut tally)?;
                let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !lv.is_finite() {
                    return Err(Error::stage(
                        learner.stage(),
                        format!(
                            "the loss became {lv} at epoch {} batch {} (lr {:.2e}); lower {} \
                             or use a warm-up",
                            epoch + 1,
                            pos + 1,
                            opt.lr(),
                            learner.lr_key()
                        ),
                    ));
                }
                let grads = loss.backward()?;
                let g = opt.grad_norm(&grads)?;
                gsum += g;
                gmax = gmax.max(g);
                nsteps += 1;
                opt.step(&grads)?;
                loss_sum += lv * k as f64;
                n += k;
                progress.step(k);
                Ok(())
            },
        )?;
        progress.finish();
        let train_seconds = t0.elapsed().as_secs_f64();
        secs += train_seconds;
        if n == 0 {
            let (items, bs) = learner.examples();
            return Err(no_step(learner.stage(), epoch + 1, items, bs));
        }
        seen += n;
        let stats = EpochStats {
            epoch: epoch + 1,
            lr: learner.lr_at(epoch as f64),
            loss: loss_sum / n as f64,
            grad_norm: gsum / nsteps.max(1) as f64,
            grad_norm_max: gmax,
            examples: n,
            train_seconds,
        };
        let (row, score) = learner.end_epoch(stats, tally, t0)?;
        let best_now = match score {
            Some(s) => prog.best_score.is_none_or(|b| s > b),
            None => true,
        };
        if best_now {
            prog.best_score = score;
            prog.best_epoch = epoch + 1;
            prog.bad_epochs = 0;
        } else {
            prog.bad_epochs += 1;
        }
        prog.history.push(row);
        prog.epochs_done = epoch + 1;
        // Weights, optimiser, progress and best weights are committed as one checkpoint.
        ckpt.save(vars, opt, &prog, epoch + 1, best_now)?;
        crate::util::interrupt::check()?;
        if patience > 0 && prog.bad_epochs >= patience {
            tracing::info!(
                "{}: early stopping, no improvement for {patience} epochs",
                learner.stage()
            );
            early = true;
            break;
        }
    }
    if prog.best_epoch != prog.epochs_done {
        if let Some(best) = ckpt.best() {
            weights::load_all(vars, &best)?;
        }
    }
    Ok(Fitted {
        best_epoch: prog.best_epoch,
        epochs_run: prog.epochs_done,
        early_stopped: early || prog.epochs_done < epochs,
        examples_per_s: if secs > 0.0 { seen as f64 / secs } else { 0.0 },
        history: prog.history,
    })
}

/// The error of a training epoch that made no optimiser step: a model that trained nothing
/// must never be scored as a result.
pub fn no_step(stage: &str, epoch: u32, items: usize, batch_size: usize) -> Error {
    Error::stage(
        stage,
        format!(
            "epoch {epoch} made no optimiser step: {items} training example(s) in batches of \
             {batch_size}, and a last batch of one is dropped (batch norm); add training \
             images or lower the batch size"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed training's history is read back from the checkpoint's JSON, and must equal
    /// the uninterrupted one bit for bit. serde_json's default float parser is off by one ulp
    /// on some values (this one, a segmenter history's foreground share, came back as
    /// ...669); the `float_roundtrip` feature makes it exact.
    #[test]
    fn progress_reads_back_bit_exact() {
        let v = [
            0.106_363_932_291_666_67_f64,
            0.1,
            1.0 / 3.0,
            6.02e23,
            5e-324,
        ];
        let p = Progress {
            epochs_done: 1,
            best_epoch: 1,
            best_score: Some((v[0], -v[2])),
            bad_epochs: 0,
            history: v.to_vec(),
        };
        let back: Progress<f64> = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
        for (a, b) in back.history.iter().zip(&v) {
            assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
        }
        assert_eq!(back.best_score, p.best_score);
    }
}
