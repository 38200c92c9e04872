//! Per-epoch checkpoints that let an interrupted training resume where it stopped: the model's
//! variables, the optimiser state and the loop's progress record, in a stage's scratch folder
//! (which survives an interrupted run and is removed once the stage's output is committed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{de::DeserializeOwned, Serialize};

use super::optim::Optimizer;
use crate::error::{Error, Result};
use crate::model::weights;
use crate::util::fs::write_json;

/// The three files of a checkpoint, named by a prefix (`last`, `seg_last`, …).
pub struct Checkpoint {
    weights: PathBuf,
    optim: PathBuf,
    progress: PathBuf,
}

impl Checkpoint {
    /// Checkpoint files `<dir>/<prefix>.safetensors`, `<prefix>_optim.safetensors` and
    /// `<prefix>_progress.json`.
    pub fn new(dir: &Path, prefix: &str) -> Self {
        Self {
            weights: dir.join(format!("{prefix}.safetensors")),
            optim: dir.join(format!("{prefix}_optim.safetensors")),
            progress: dir.join(format!("{prefix}_progress.json")),
        }
    }

    /// Restore variables and optimiser state and return the saved progress, if a complete
    /// checkpoint exists (an unreadable progress file means starting over).
    pub fn resume<P: DeserializeOwned>(
        &self,
        vars: &VarMap,
        opt: &mut Optimizer,
        dev: &Device,
    ) -> Result<Option<P>> {
        let (Ok(bytes), true, true) = (
            std::fs::read(&self.progress),
            self.weights.is_file(),
            self.optim.is_file(),
        ) else {
            return Ok(None);
        };
        let Ok(p) = serde_json::from_slice::<P>(&bytes) else {
            return Ok(None);
        };
        weights::load_all(vars, &self.weights)?;
        let st: HashMap<String, Tensor> = candle_core::safetensors::load(&self.optim, dev)?;
        opt.load_state(&st)?;
        Ok(Some(p))
    }

    /// Save variables, optimiser state and progress, each atomically; progress last, so a
    /// progress file always describes weights that exist.
    pub fn save<P: Serialize>(&self, vars: &VarMap, opt: &Optimizer, progress: &P) -> Result<()> {
        weights::save(vars, &self.weights)?;
        let tmp = self.optim.with_extension("tmp.safetensors");
        candle_core::safetensors::save(&opt.state()?, &tmp)?;
        std::fs::rename(&tmp, &self.optim).map_err(|e| Error::io(&self.optim, e))?;
        write_json(&self.progress, progress)
    }
}
