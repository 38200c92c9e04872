//! Per-epoch checkpoints that let an interrupted training resume where it stopped, committed
//! as one piece.
//!
//! A checkpoint is a folder `<prefix>.ckpt/epoch-NNNNN/` in a stage's scratch folder (which
//! survives an interrupted run and is removed once the stage's output is committed) holding the
//! model's variables, the optimiser state, the loop's progress record and the best weights so
//! far. It is written as `epoch-NNNNN.partial/`, renamed, and becomes *the* checkpoint only
//! when `<prefix>.ckpt/COMMITTED`, written atomically and last, names it. Whatever moment an
//! interruption hits (Ctrl-C, SLURM's SIGTERM, a killed process), resuming finds either the
//! previous complete checkpoint or the new one — never epoch k's weights with epoch k−1's
//! progress, which applied epoch k twice and silently changed every later number.
//!
//! Testing hook: `WSSS_CRASH_AT=checkpoint:<prefix>:<epoch>:<step>` aborts the process right
//! after `step` (`weights`, `optim`, `progress`, `best`, `rename`, `commit`) of that epoch's
//! checkpoint, so tests can interrupt every step and check that resuming gives bit-identical
//! results.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{de::DeserializeOwned, Serialize};

use super::optim::Optimizer;
use crate::error::{Error, Result};
use crate::model::weights;
use crate::util::fs::{atomic_write, mkdirs, write_json};

/// The file naming the committed checkpoint folder.
const COMMITTED: &str = "COMMITTED";
const WEIGHTS: &str = "weights.safetensors";
const OPTIM: &str = "optim.safetensors";
const PROGRESS: &str = "progress.json";
const BEST: &str = "best.safetensors";

/// The checkpoints of one training loop, named by a prefix (`last`, `seg_last`, …).
pub struct Checkpoint {
    root: PathBuf,
    prefix: String,
}

impl Checkpoint {
    /// Checkpoints under `<dir>/<prefix>.ckpt/`.
    pub fn new(dir: &Path, prefix: &str) -> Self {
        Self {
            root: dir.join(format!("{prefix}.ckpt")),
            prefix: prefix.to_string(),
        }
    }

    /// The committed checkpoint's folder, if there is one.
    fn committed(&self) -> Option<PathBuf> {
        let name = std::fs::read_to_string(self.root.join(COMMITTED)).ok()?;
        let name = name.trim();
        let dir = self.root.join(name);
        (!name.is_empty() && !name.contains('/') && dir.is_dir()).then_some(dir)
    }

    /// Restore variables and optimiser state and return the saved progress, if a checkpoint
    /// was committed. A committed checkpoint that cannot be read is an error naming the file.
    pub fn resume<P: DeserializeOwned>(
        &self,
        vars: &VarMap,
        opt: &mut Optimizer,
        dev: &Device,
    ) -> Result<Option<P>> {
        let Some(dir) = self.committed() else {
            return Ok(None);
        };
        let path = dir.join(PROGRESS);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let p = serde_json::from_slice::<P>(&bytes)
            .map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
        weights::load_all(vars, &dir.join(WEIGHTS))?;
        let path = dir.join(OPTIM);
        let st: HashMap<String, Tensor> = candle_core::safetensors::load(&path, dev)
            .map_err(|e| Error::io(&path, std::io::Error::other(e.to_string())))?;
        opt.load_state(&st)?;
        Ok(Some(p))
    }

    /// The best weights recorded by the committed checkpoint, if any.
    pub fn best(&self) -> Option<PathBuf> {
        self.committed()
            .map(|d| d.join(BEST))
            .filter(|p| p.is_file())
    }

    /// Save the state after `epoch` (1-based) as one checkpoint: variables, optimiser state,
    /// progress, and the best weights — these variables when `best_now`, else the previous
    /// checkpoint's best (linked, not copied, where the file system allows). Older checkpoints
    /// are removed once the new one is committed.
    pub fn save<P: Serialize>(
        &self,
        vars: &VarMap,
        opt: &Optimizer,
        progress: &P,
        epoch: u32,
        best_now: bool,
    ) -> Result<()> {
        let name = format!("epoch-{epoch:05}");
        let part = self.root.join(format!("{name}.partial"));
        if part.exists() {
            std::fs::remove_dir_all(&part).map_err(|e| Error::io(&part, e))?;
        }
        mkdirs(&part)?;
        weights::save(vars, &part.join(WEIGHTS))?;
        self.crash_point(epoch, "weights");
        let optim = part.join(OPTIM);
        let tmp = part.join("optim.tmp.safetensors");
        candle_core::safetensors::save(&opt.state()?, &tmp)
            .map_err(|e| Error::io(&tmp, std::io::Error::other(e.to_string())))?;
        std::fs::rename(&tmp, &optim).map_err(|e| Error::io(&optim, e))?;
        self.crash_point(epoch, "optim");
        write_json(&part.join(PROGRESS), progress)?;
        self.crash_point(epoch, "progress");
        let best_src = if best_now {
            Some(part.join(WEIGHTS))
        } else {
            self.best()
        };
        if let Some(src) = best_src {
            let dst = part.join(BEST);
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(|e| Error::io(&dst, e))?;
            }
        }
        self.crash_point(epoch, "best");
        let fin = self.root.join(&name);
        if fin.exists() {
            std::fs::remove_dir_all(&fin).map_err(|e| Error::io(&fin, e))?;
        }
        std::fs::rename(&part, &fin).map_err(|e| Error::io(&fin, e))?;
        self.crash_point(epoch, "rename");
        atomic_write(&self.root.join(COMMITTED), name.as_bytes())?;
        self.crash_point(epoch, "commit");
        // Older (and abandoned partial) checkpoints are no longer needed.
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                if e.path().is_dir() && e.file_name().to_string_lossy() != name {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }

    /// The testing hook of the module docs.
    fn crash_point(&self, epoch: u32, step: &str) {
        let Ok(at) = std::env::var("WSSS_CRASH_AT") else {
            return;
        };
        if at == format!("checkpoint:{}:{epoch}:{step}", self.prefix) {
            eprintln!("WSSS_CRASH_AT={at}: aborting in the middle of a checkpoint");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn setup(dev: &Device) -> (VarMap, Optimizer) {
        let vars = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vars, DType::F32, dev);
        let _ = vb.get_with_hints(3, "w", candle_nn::init::Init::Const(1.0));
        let named: Vec<(String, candle_core::Var)> = vars
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let opt = Optimizer::new(crate::config::Optimizer::Adamw, named, 0.1, 0.0, 0.9).unwrap();
        (vars, opt)
    }

    fn value(vars: &VarMap) -> Vec<f32> {
        vars.data().lock().unwrap()["w"]
            .as_tensor()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn a_checkpoint_is_committed_whole_and_the_best_follows_it() {
        let d = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let (vars, mut opt) = setup(&dev);
        let ck = Checkpoint::new(d.path(), "t");
        assert!(ck.resume::<u32>(&vars, &mut opt, &dev).unwrap().is_none());
        ck.save(&vars, &opt, &1u32, 1, true).unwrap();
        vars.data().lock().unwrap()["w"]
            .set(&Tensor::new(&[2f32, 2., 2.], &dev).unwrap())
            .unwrap();
        ck.save(&vars, &opt, &2u32, 2, false).unwrap();
        // A partial third checkpoint (interrupted before its commit) is not resumed from.
        let part = d.path().join("t.ckpt/epoch-00003.partial");
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(part.join(PROGRESS), "3").unwrap();
        let (v2, mut o2) = setup(&dev);
        assert_eq!(ck.resume::<u32>(&v2, &mut o2, &dev).unwrap(), Some(2));
        assert_eq!(value(&v2), [2., 2., 2.]);
        // The best weights are epoch 1's, carried into epoch 2's checkpoint.
        let best = ck.best().unwrap();
        assert!(best.starts_with(d.path().join("t.ckpt/epoch-00002")));
        weights::load_all(&v2, &best).unwrap();
        assert_eq!(value(&v2), [1., 1., 1.]);
        // Only the committed checkpoint is kept once the next one commits.
        ck.save(&vars, &opt, &4u32, 4, false).unwrap();
        let dirs: Vec<String> = std::fs::read_dir(d.path().join("t.ckpt"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(dirs, ["epoch-00004"]);
    }
}
