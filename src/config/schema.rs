//! The manifest schema as data: every key a manifest may set, its type, its allowed values and
//! a one-line description.
//!
//! One table drives the unknown-key check (with "did you mean"), the type and range checks of
//! every source (files, environment, `--set`, sweep values), `wsss schema`, and the manifest
//! reference in the README. A unit test keeps it in lock-step with [`super::ExperimentConfig`].

use toml::Value;

/// Values users may expect that are refused until they are implemented, with the reason.
const NOT_YET: &[(&str, &str)] = &[];

/// The type and allowed values of one key.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Any string; `non_empty` rejects "".
    Str {
        /// Reject the empty string.
        non_empty: bool,
    },
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    /// A number in a range (integers are accepted).
    Float {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
        /// Whether `min` itself is excluded.
        min_open: bool,
    },
    /// An integer in `[min, max]`.
    Int {
        /// Lower bound.
        min: i64,
        /// Upper bound.
        max: i64,
    },
    /// One of a fixed set of integers.
    IntChoice(&'static [i64]),
    /// `true` or `false`.
    Bool,
    /// A list of patient ids (strings or integers).
    PatientList,
    /// A list of strings.
    StrList,
    /// `cpu`, `auto` or `cuda:N`.
    Device,
    /// `last` or a block index.
    Layer,
}

/// One manifest key.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Dotted key, e.g. `cam.threshold`.
    pub key: &'static str,
    /// Type and allowed values.
    pub kind: Kind,
    /// One-line meaning, shown by `wsss schema`.
    pub doc: &'static str,
}

const fn f(key: &'static str, kind: Kind, doc: &'static str) -> Field {
    Field { key, kind, doc }
}

const PROB: Kind = Kind::Float {
    min: 0.0,
    max: 1.0,
    min_open: false,
};
const POS: Kind = Kind::Float {
    min: 0.0,
    max: f64::INFINITY,
    min_open: true,
};
const NONNEG: Kind = Kind::Float {
    min: 0.0,
    max: f64::INFINITY,
    min_open: false,
};
/// `segmentation.stain_augment`, `train.stain_augment`.
const STAIN_AUGMENT: Kind = Kind::Choice(&["channel", "hed", "none"]);
const STAIN_STRENGTH_DOC: &str = "channel: scale amplitude; hed: sigma of the H/E/DAB optical \
    density scale and shift (HED-light 0.05, HED-strong 0.2)";
/// A distance as a fraction of the image diagonal.
const DIAGONAL_FRACTION: Kind = Kind::Float {
    min: 0.0,
    max: 0.5,
    min_open: true,
};
const ARCHS: &[&str] = &[
    "vgg16",
    "resnet18",
    "resnet50",
    "efficientnet-lite0",
    "efficientnet-lite1",
    "efficientnet-lite2",
];

/// Every key a manifest may set (besides `extends` and the `[sweep]` table).
pub static FIELDS: &[Field] = &[
    f(
        "name",
        Kind::Str { non_empty: true },
        "experiment name (required); names the folder under the work directory",
    ),
    f(
        "description",
        Kind::Str { non_empty: false },
        "free text shown in plans and reports",
    ),
    f(
        "dataset",
        Kind::Str { non_empty: true },
        "dataset name registered in datasets.toml",
    ),
    f(
        "device",
        Kind::Device,
        "`cpu`, `cuda:N` or `auto` (CUDA needs the `cuda` cargo feature)",
    ),
    f(
        "precision",
        Kind::Choice(&["auto", "fp32", "tf32"]),
        "GPU arithmetic: auto = PyTorch's default (TF32 convs, fp32 matmuls), fp32, or tf32 \
         (both; needs CUDA); the CPU computes fp32",
    ),
    f(
        "labels.level",
        Kind::Choice(&["image", "patch", "image-windows"]),
        "classifier labels: one class per image, multi-label windows derived from the masks (OEEM), or windows that carry their image's class",
    ),
    f(
        "labels.patch_size",
        Kind::Int { min: 16, max: 8192 },
        "patch, image-windows: window side in image pixels (the classifier sees it resized to train.image_size)",
    ),
    f(
        "labels.patch_stride",
        Kind::Int { min: 1, max: 8192 },
        "patch, image-windows: window step in image pixels",
    ),
    f(
        "labels.min_fraction",
        PROB,
        "patch: a class is present when it covers more than this share of the window",
    ),
    f(
        "split.method",
        Kind::Choice(&["fraction", "kfold", "patients"]),
        "how patients are assigned to train / valid / test",
    ),
    f(
        "split.seed",
        Kind::Int {
            min: 0,
            max: i64::MAX,
        },
        "seed of the patient shuffle (independent of train.seed)",
    ),
    f(
        "split.valid_fraction",
        PROB,
        "fraction: share of each class's patients in valid",
    ),
    f(
        "split.test_fraction",
        PROB,
        "fraction: share of each class's patients in test",
    ),
    f(
        "split.folds",
        Kind::Int { min: 2, max: 1000 },
        "kfold: number of folds",
    ),
    f(
        "split.fold",
        Kind::Int { min: 0, max: 999 },
        "kfold: the validation fold, 0-based",
    ),
    f(
        "split.train_patients",
        Kind::PatientList,
        "patients: training patient ids",
    ),
    f(
        "split.valid_patients",
        Kind::PatientList,
        "patients: validation patient ids",
    ),
    f(
        "split.test_patients",
        Kind::PatientList,
        "patients: test patient ids",
    ),
    f(
        "backbone.arch",
        Kind::Choice(ARCHS),
        "classifier architecture",
    ),
    f(
        "backbone.batch_norm",
        Kind::Bool,
        "batch norm after every conv (VGG-16-BN; ResNet and EfficientNet always have it)",
    ),
    f(
        "backbone.width",
        Kind::Float {
            min: 0.0,
            max: 4.0,
            min_open: true,
        },
        "channel width multiplier (1.0 = torchvision)",
    ),
    f(
        "backbone.pretrained",
        Kind::Str { non_empty: true },
        "local weights file: safetensors or PyTorch .pth/.pt (torchvision or EfficientNet-Lite names)",
    ),
    f(
        "backbone.freeze_blocks",
        Kind::Int { min: 0, max: 5 },
        "leading conv blocks kept frozen",
    ),
    f(
        "backbone.cam_layer",
        Kind::Layer,
        "block the CAM reads: `last` or a block index",
    ),
    f(
        "cam.method",
        Kind::Choice(&["cam", "gradcam", "gradcam++", "layercam"]),
        "CAM method",
    ),
    f(
        "cam.threshold",
        PROB,
        "confidence threshold on the normalised CAM (foreground if ≥)",
    ),
    f(
        "cam.background_threshold",
        PROB,
        "background below this; between it and threshold = ignore (255)",
    ),
    f(
        "cam.normalize",
        Kind::Choice(&["minmax", "max"]),
        "per-image CAM normalisation",
    ),
    f(
        "cam.refine",
        Kind::Choice(&["none", "slic", "crf", "gcn", "haematoxylin"]),
        "refinement of the CAM before thresholding: SLIC superpixel voting, a dense CRF, a graph convolutional network over superpixels, or a nuclear-density prior (the CAM kept where the smoothed haematoxylin channel is above its Otsu threshold)",
    ),
    f(
        "cam.crf.iterations",
        Kind::Int { min: 1, max: 100 },
        "dense CRF: mean-field iterations",
    ),
    f(
        "cam.crf.gaussian_sxy",
        POS,
        "dense CRF: smoothness kernel's position std (pixels)",
    ),
    f(
        "cam.crf.gaussian_weight",
        NONNEG,
        "dense CRF: smoothness kernel's Potts weight",
    ),
    f(
        "cam.crf.bilateral_sxy",
        POS,
        "dense CRF: appearance kernel's position std (pixels)",
    ),
    f(
        "cam.crf.bilateral_srgb",
        POS,
        "dense CRF: appearance kernel's colour std (8-bit RGB units)",
    ),
    f(
        "cam.crf.bilateral_weight",
        NONNEG,
        "dense CRF: appearance kernel's Potts weight",
    ),
    f(
        "cam.gcn.hidden",
        Kind::Int { min: 1, max: 1024 },
        "GCN pseudo labels: hidden units of the first layer",
    ),
    f(
        "cam.gcn.epochs",
        Kind::Int { min: 1, max: 10000 },
        "GCN pseudo labels: full-batch training steps per image",
    ),
    f(
        "cam.gcn.learning_rate",
        POS,
        "GCN pseudo labels: Adam learning rate",
    ),
    f(
        "cam.gcn.weight_decay",
        NONNEG,
        "GCN pseudo labels: L2 penalty on the first layer's weights",
    ),
    f(
        "cam.gcn.knn",
        Kind::Int { min: 0, max: 64 },
        "GCN pseudo labels: feature-space neighbours added to each superpixel's adjacent ones",
    ),
    f(
        "cam.gcn.background_seed",
        PROB,
        "GCN pseudo labels: superpixels whose mean CAM is below this are background seeds",
    ),
    f(
        "cam.haematoxylin.sigma",
        Kind::Float {
            min: 0.5,
            max: 100.0,
            min_open: false,
        },
        "nuclear-density prior: std of the Gaussian smoothing the haematoxylin channel (pixels of the image as stored)",
    ),
    f("cam.tta", Kind::Bool, "average CAMs over flips and scales"),
    f(
        "cam.contrast",
        Kind::Bool,
        "map the positive class's logit minus the other classes' (evidence that tells the classes apart) instead of its logit alone",
    ),
    f(
        "cam.balance",
        Kind::Choice(&["none", "median"]),
        "patch labels: recentre the margin map at the median pixel of the training images' two-label windows",
    ),
    f(
        "loss.variant",
        Kind::Choice(&[
            "ce",
            "bce",
            "focal",
            "label-smoothing",
            "equivariance",
            "cam-area",
        ]),
        "classification loss",
    ),
    f("loss.focal_gamma", NONNEG, "focal loss γ"),
    f("loss.focal_alpha", PROB, "focal loss α"),
    f(
        "loss.label_smoothing",
        Kind::Float {
            min: 0.0,
            max: 0.5,
            min_open: false,
        },
        "label smoothing ε",
    ),
    f(
        "loss.evidence_weight",
        NONNEG,
        "weight of the CAM term of evidence-aware losses",
    ),
    f(
        "stain.normalize",
        Kind::Choice(&["none", "reinhard"]),
        "stain normalisation of every image, fitted on the training split (Reinhard: L*a*b* \
         colour transfer)",
    ),
    f(
        "metrics.boundary_f_tolerance",
        DIAGONAL_FRACTION,
        "boundary F-score match distance, fraction of the image diagonal (DAVIS: 0.008)",
    ),
    f(
        "metrics.boundary_iou_width",
        DIAGONAL_FRACTION,
        "Boundary IoU band width, fraction of the image diagonal (Cheng et al. 2021: 0.02)",
    ),
    f(
        "segmentation.encoder",
        Kind::Choice(ARCHS),
        "DeepLab V3+ encoder",
    ),
    f(
        "segmentation.output_stride",
        Kind::IntChoice(&[8, 16]),
        "encoder output stride",
    ),
    f(
        "segmentation.supervision",
        Kind::Choice(&["pseudo", "full"]),
        "train on pseudo labels or on ground truth",
    ),
    f(
        "segmentation.loss",
        Kind::Choice(&["ce", "oeem", "oeem-balanced", "balanced-ce"]),
        "segmentation loss",
    ),
    f(
        "segmentation.epochs",
        Kind::Int {
            min: 1,
            max: 100_000,
        },
        "segmentation epochs",
    ),
    f(
        "segmentation.batch_size",
        Kind::Int { min: 1, max: 4096 },
        "segmentation batch size",
    ),
    f("segmentation.lr", POS, "segmentation learning rate"),
    f(
        "segmentation.width",
        Kind::Float {
            min: 0.0,
            max: 4.0,
            min_open: true,
        },
        "encoder channel width multiplier (1.0 = torchvision)",
    ),
    f(
        "segmentation.aspp_channels",
        Kind::Int { min: 8, max: 4096 },
        "channels of the ASPP and decoder (DeepLab V3+: 256); unset = 256 × width",
    ),
    f(
        "segmentation.init",
        Kind::Choice(&["scratch", "classifier", "pretrained"]),
        "encoder start: seeded init, the trained classifier's weights, or segmentation.pretrained",
    ),
    f(
        "segmentation.pretrained",
        Kind::Str { non_empty: true },
        "init = pretrained: local weights file of the encoder (e.g. ImageNet EfficientNet-Lite), \
         relative to the manifest",
    ),
    f(
        "segmentation.select",
        Kind::Choice(&["last", "label-agreement"]),
        "epoch kept: the last, or the best agreement with the validation images' labels \
         (pseudo labels when weak)",
    ),
    f(
        "segmentation.scale",
        Kind::Float {
            min: 0.0,
            max: 4.0,
            min_open: true,
        },
        "resize factor for images before training and inference",
    ),
    f(
        "segmentation.tta",
        Kind::Bool,
        "average predictions over a horizontal flip at inference",
    ),
    f(
        "segmentation.blend",
        Kind::Choice(&["mean", "gaussian"]),
        "how overlapping sliding windows combine at inference: equal weights, or a Gaussian \
         centred on each window (no seams at window edges)",
    ),
    f(
        "segmentation.warmup_epochs",
        Kind::Int {
            min: 0,
            max: 100_000,
        },
        "segmenter linear learning-rate warm-up epochs (from lr/10)",
    ),
    f(
        "segmentation.encoder_lr_mult",
        Kind::Float {
            min: 0.0,
            max: 1.0,
            min_open: true,
        },
        "learning-rate multiplier of the encoder (the head trains at lr)",
    ),
    f(
        "segmentation.crop_size",
        Kind::Int { min: 16, max: 8192 },
        "training crop size (pixels)",
    ),
    f(
        "segmentation.crop_sampling",
        Kind::Choice(&["uniform", "label-ratio"]),
        "where training crops are taken: uniformly, or the one of 4 uniform draws whose labelled \
         foreground share is nearest the image's (keeps the gland/background ratio)",
    ),
    f(
        "segmentation.stain_augment",
        STAIN_AUGMENT,
        "stain jitter of the segmenter's training crops: per-RGB-channel scale, HED jitter (Tellez et al. 2019), or none",
    ),
    f("segmentation.stain_augment_strength", PROB, STAIN_STRENGTH_DOC),
    f(
        "segmentation.self_training_rounds",
        Kind::Int { min: 0, max: 5 },
        "self-training rounds (weak supervision): the segmenter's predictions relabel the \
         training images with foreground, and a fresh segmenter trains on them",
    ),
    f(
        "segmentation.self_training_relabel",
        Kind::Choice(&["positive-images", "ignored-pixels"]),
        "what a self-training round relabels: every label map with foreground, or only the \
         pixels the pseudo labels leave ignored (needs an ignore band; labelled pixels keep \
         their pseudo labels)",
    ),
    f(
        "train.epochs",
        Kind::Int {
            min: 1,
            max: 100_000,
        },
        "classifier epochs",
    ),
    f(
        "train.batch_size",
        Kind::Int { min: 1, max: 4096 },
        "classifier batch size",
    ),
    f("train.lr", POS, "classifier learning rate"),
    f(
        "train.optimizer",
        Kind::Choice(&["adamw", "sgd"]),
        "optimiser",
    ),
    f(
        "train.momentum",
        Kind::Float {
            min: 0.0,
            max: 1.0,
            min_open: false,
        },
        "SGD momentum",
    ),
    f("train.weight_decay", NONNEG, "weight decay"),
    f(
        "train.schedule",
        Kind::Choice(&["constant", "step", "cosine", "poly"]),
        "learning-rate schedule",
    ),
    f(
        "train.warmup_epochs",
        Kind::Int {
            min: 0,
            max: 100_000,
        },
        "linear warm-up epochs",
    ),
    f(
        "train.image_size",
        Kind::Int { min: 16, max: 8192 },
        "square classifier input size (pixels)",
    ),
    f(
        "train.seed",
        Kind::Int {
            min: 0,
            max: i64::MAX,
        },
        "seed of initialisation, sampling and augmentation",
    ),
    f(
        "train.balanced_sampling",
        Kind::Bool,
        "sample classes with equal probability",
    ),
    f(
        "train.patience",
        Kind::Int {
            min: 0,
            max: 100_000,
        },
        "early stopping: epochs without improvement (0 = off)",
    ),
    f(
        "train.stain_augment",
        STAIN_AUGMENT,
        "stain jitter of the classifier's training views: per-RGB-channel scale, HED jitter (Tellez et al. 2019), or none",
    ),
    f("train.stain_augment_strength", PROB, STAIN_STRENGTH_DOC),
    f(
        "launcher.slurm.partition",
        Kind::Str { non_empty: true },
        "SLURM: --partition of every job (not part of a variant; --partition overrides)",
    ),
    f(
        "launcher.slurm.gpus_per_task",
        Kind::Int { min: 0, max: 64 },
        "SLURM: --gpus-per-task of the upstream and variant tasks",
    ),
    f(
        "launcher.slurm.cpus_per_task",
        Kind::Int { min: 1, max: 4096 },
        "SLURM: --cpus-per-task",
    ),
    f(
        "launcher.slurm.mem",
        Kind::Str { non_empty: true },
        "SLURM: --mem, e.g. 16G",
    ),
    f(
        "launcher.slurm.time",
        Kind::Str { non_empty: true },
        "SLURM: --time, e.g. 04:00:00",
    ),
    f(
        "launcher.slurm.array_parallelism",
        Kind::Int { min: 1, max: 100000 },
        "SLURM: at most this many array tasks at once",
    ),
    f(
        "launcher.slurm.account",
        Kind::Str { non_empty: true },
        "SLURM: --account",
    ),
    f(
        "launcher.slurm.extra_sbatch",
        Kind::StrList,
        "SLURM: further #SBATCH lines, verbatim (e.g. [\"--qos=long\"])",
    ),
];

/// Top-level keys handled by the loader rather than the schema.
pub const LOADER_KEYS: &[&str] = &["extends", "sweep"];

/// Find a field by dotted key.
pub fn field(key: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.key == key)
}

/// Whether `prefix` names a section (a table) of the schema, e.g. `cam`.
pub fn is_section(prefix: &str) -> bool {
    FIELDS.iter().any(|f| {
        f.key.len() > prefix.len()
            && f.key.starts_with(prefix)
            && f.key.as_bytes()[prefix.len()] == b'.'
    })
}

/// Keys allowed directly under a section (`""` = top level), for messages.
pub fn children(prefix: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for f in FIELDS {
        let rest = if prefix.is_empty() {
            Some(f.key)
        } else {
            f.key.strip_prefix(prefix).and_then(|r| r.strip_prefix('.'))
        };
        if let Some(rest) = rest {
            let head = rest.split('.').next().unwrap_or(rest);
            if !out.contains(&head) {
                out.push(head);
            }
        }
    }
    if prefix.is_empty() {
        out.extend_from_slice(LOADER_KEYS);
    }
    out
}

/// A "did you mean" suggestion for an unknown key `name` under section `prefix`: a close
/// sibling, or a leaf with the same last segment elsewhere (`threshold` → `cam.threshold`).
pub fn suggest(prefix: &str, name: &str) -> Option<String> {
    let best = children(prefix)
        .into_iter()
        .map(|c| (strsim::jaro_winkler(c, name), c))
        .filter(|(s, _)| *s > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, c)) = best {
        return Some(join(prefix, c));
    }
    FIELDS
        .iter()
        .find(|f| f.key.rsplit('.').next() == Some(name))
        .map(|f| f.key.to_string())
}

/// Closest allowed string for an unknown choice.
pub fn suggest_choice(choices: &[&str], got: &str) -> Option<String> {
    choices
        .iter()
        .map(|c| (strsim::jaro_winkler(c, got), *c))
        .filter(|(s, _)| *s > 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

/// Join a section prefix and a key.
pub fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

impl Kind {
    /// What this kind allows, in words.
    pub fn describe(&self) -> String {
        match self {
            Kind::Str { non_empty: true } => "a non-empty string".into(),
            Kind::Str { non_empty: false } => "a string".into(),
            Kind::Choice(c) => format!("one of {}", quote_list(c)),
            Kind::Float { min, max, min_open } => {
                let lo = if *min_open { "(" } else { "[" };
                if max.is_infinite() {
                    if *min_open {
                        format!("a number > {min}")
                    } else {
                        format!("a number ≥ {min}")
                    }
                } else {
                    format!("a number in {lo}{min}, {max}]")
                }
            }
            Kind::Int { min, max } => {
                if *max == i64::MAX {
                    format!("an integer ≥ {min}")
                } else {
                    format!("an integer in [{min}, {max}]")
                }
            }
            Kind::IntChoice(c) => format!(
                "one of {}",
                c.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Kind::Bool => "true or false".into(),
            Kind::PatientList => "a list of patient ids (strings or integers)".into(),
            Kind::StrList => "a list of strings".into(),
            Kind::Device => "`cpu`, `auto` or `cuda:N`".into(),
            Kind::Layer => "`last` or a block index".into(),
        }
    }

    /// Check one value; the error says what was expected and what was given.
    pub fn check(&self, v: &Value) -> Result<(), String> {
        let bad = || {
            Err(format!(
                "expected {}, got {} ({})",
                self.describe(),
                type_name(v),
                short(v)
            ))
        };
        match (self, v) {
            (Kind::Str { non_empty }, Value::String(s)) => {
                if *non_empty && s.trim().is_empty() {
                    Err(format!("expected {}, got an empty string", self.describe()))
                } else {
                    Ok(())
                }
            }
            (Kind::Choice(c), Value::String(s)) => {
                if c.contains(&s.as_str()) {
                    Ok(())
                } else {
                    let hint = match NOT_YET.iter().find(|(v, _)| v == s) {
                        Some((_, why)) => format!(" ({why})"),
                        None => suggest_choice(c, s)
                            .map(|h| format!(" (did you mean `{h}`?)"))
                            .unwrap_or_default(),
                    };
                    Err(format!(
                        "`{s}` is not allowed: expected {}{hint}",
                        self.describe()
                    ))
                }
            }
            (Kind::Float { min, max, min_open }, Value::Float(_) | Value::Integer(_)) => {
                let x = match v {
                    Value::Float(x) => *x,
                    Value::Integer(i) => *i as f64,
                    _ => unreachable!("matched above"),
                };
                let lo_ok = if *min_open { x > *min } else { x >= *min };
                if x.is_finite() && lo_ok && x <= *max {
                    Ok(())
                } else {
                    Err(format!("{x} is out of range: expected {}", self.describe()))
                }
            }
            (Kind::Int { min, max }, Value::Integer(i)) => {
                if i >= min && i <= max {
                    Ok(())
                } else {
                    Err(format!("{i} is out of range: expected {}", self.describe()))
                }
            }
            (Kind::IntChoice(c), Value::Integer(i)) => {
                if c.contains(i) {
                    Ok(())
                } else {
                    Err(format!("{i} is not allowed: expected {}", self.describe()))
                }
            }
            (Kind::Bool, Value::Boolean(_)) => Ok(()),
            (Kind::StrList, Value::Array(a)) => {
                match a.iter().position(|x| !matches!(x, Value::String(_))) {
                    Some(i) => Err(format!(
                        "element {i} is {}: expected {}",
                        type_name(&a[i]),
                        self.describe()
                    )),
                    None => Ok(()),
                }
            }
            (Kind::PatientList, Value::Array(a)) => {
                for (i, x) in a.iter().enumerate() {
                    if !matches!(x, Value::String(_) | Value::Integer(_)) {
                        return Err(format!(
                            "element {i} is {}: expected {}",
                            type_name(x),
                            self.describe()
                        ));
                    }
                }
                Ok(())
            }
            (Kind::Device, Value::String(s)) => {
                if parse_device(s).is_some() {
                    Ok(())
                } else {
                    Err(format!(
                        "`{s}` is not a device: expected {}",
                        self.describe()
                    ))
                }
            }
            (Kind::Layer, Value::String(s)) => {
                if s == "last" || s.parse::<u32>().is_ok() {
                    Ok(())
                } else {
                    Err(format!(
                        "`{s}` is not a layer: expected {}",
                        self.describe()
                    ))
                }
            }
            _ => bad(),
        }
    }
}

/// A parsed `device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA if compiled in and present, else the CPU.
    Auto,
    /// CUDA device N.
    Cuda(usize),
}

/// Parse `cpu`, `auto`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Option<DeviceSpec> {
    match s {
        "cpu" => Some(DeviceSpec::Cpu),
        "auto" => Some(DeviceSpec::Auto),
        "cuda" => Some(DeviceSpec::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::Cuda),
    }
}

fn quote_list(c: &[&str]) -> String {
    c.iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// Every key of a variant with its default, as a TOML table — including the keys a saved
/// config leaves out while they are at their default (so that cache keys predating them stay
/// valid). `name` is `"<required>"`; `[launcher]` is not part of a variant and is absent.
pub fn default_values() -> toml::Value {
    let d = super::ExperimentConfig {
        name: "<required>".into(),
        ..Default::default()
    };
    let mut v = toml::Value::try_from(&d).unwrap_or(toml::Value::Table(Default::default()));
    // `[labels]` is left out of saved configs while it is the default; show its defaults.
    if let (Some(t), Ok(l)) = (v.as_table_mut(), toml::Value::try_from(&d.labels)) {
        t.insert("labels".into(), l);
    }
    if let Some(cam) = v.get_mut("cam").and_then(|c| c.as_table_mut()) {
        cam.insert("balance".into(), "none".into());
        cam.insert("contrast".into(), false.into());
        if let Ok(crf) = toml::Value::try_from(d.cam.crf) {
            cam.insert("crf".into(), crf);
        }
        if let Ok(gcn) = toml::Value::try_from(d.cam.gcn) {
            cam.insert("gcn".into(), gcn);
        }
        if let Ok(h) = toml::Value::try_from(d.cam.haematoxylin) {
            cam.insert("haematoxylin".into(), h);
        }
    }
    // Likewise `precision`, `[stain]`, `segmentation.select`, `.blend`, `.warmup_epochs`,
    // `.encoder_lr_mult`, `.self_training_rounds`, `.self_training_relabel` and
    // both `stain_augment` keys
    // (left out of hashes while default).
    if let (Some(t), Ok(st)) = (v.as_table_mut(), toml::Value::try_from(d.stain)) {
        let mut st = st.as_table().cloned().unwrap_or_default();
        st.insert("normalize".into(), "none".into());
        t.insert("stain".into(), toml::Value::Table(st));
    }
    if let Some(t) = v.as_table_mut() {
        t.insert("precision".into(), "auto".into());
    }
    if let (Some(t), Ok(m)) = (v.as_table_mut(), toml::Value::try_from(d.metrics)) {
        t.insert("metrics".into(), m);
    }
    if let Some(seg) = v.get_mut("segmentation").and_then(|c| c.as_table_mut()) {
        seg.insert("select".into(), "last".into());
        seg.insert("blend".into(), "mean".into());
        seg.insert("warmup_epochs".into(), toml::Value::Integer(0));
        seg.insert("encoder_lr_mult".into(), toml::Value::Float(1.0));
        seg.insert("crop_sampling".into(), "uniform".into());
        seg.insert("self_training_rounds".into(), toml::Value::Integer(0));
        seg.insert("self_training_relabel".into(), "positive-images".into());
    }
    for section in ["segmentation", "train"] {
        if let Some(t) = v.get_mut(section).and_then(|c| c.as_table_mut()) {
            t.insert("stain_augment".into(), "channel".into());
            t.insert(
                "stain_augment_strength".into(),
                toml::Value::Float(super::STAIN_AUGMENT_STRENGTH),
            );
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExperimentConfig;

    fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    leaves(&join(prefix, k), x, out)
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn schema_lists_exactly_the_config_fields() {
        let mut cfg = ExperimentConfig::default();
        cfg.backbone.pretrained = Some("x".into());
        cfg.cam.background_threshold = Some(0.1);
        cfg.segmentation.aspp_channels = Some(64);
        cfg.labels.level = crate::config::LabelLevel::Patch; // the defaults are not serialised
        cfg.cam.balance = crate::config::CamBalance::Median;
        cfg.cam.contrast = true;
        cfg.segmentation.select = crate::config::SegSelect::LabelAgreement;
        cfg.segmentation.blend = crate::config::SegBlend::Gaussian;
        cfg.segmentation.warmup_epochs = 2;
        cfg.segmentation.encoder_lr_mult = 0.1;
        cfg.segmentation.pretrained = Some("x".into());
        cfg.segmentation.crop_sampling = crate::config::CropSampling::LabelRatio;
        cfg.segmentation.self_training_rounds = 1;
        cfg.segmentation.self_training_relabel = crate::config::Relabel::IgnoredPixels;
        cfg.segmentation.stain_augment = crate::config::StainAugment::Hed;
        cfg.segmentation.stain_augment_strength = 0.2;
        cfg.train.stain_augment = crate::config::StainAugment::Hed;
        cfg.train.stain_augment_strength = 0.2;
        cfg.precision = crate::config::Precision::Fp32;
        cfg.stain.normalize = crate::config::StainNorm::Reinhard;
        cfg.metrics.boundary_f_tolerance = 0.01;
        cfg.cam.crf.iterations = 5;
        cfg.cam.gcn.epochs = 50;
        cfg.cam.haematoxylin.sigma = 4.0;
        let mut got = vec![];
        leaves("", &serde_json::to_value(&cfg).unwrap(), &mut got);
        // `[launcher]` is never serialised with a variant (it is not part of one): its keys
        // are the fields of `LauncherConfig`.
        let mut l = crate::config::LauncherConfig::default();
        l.slurm.partition = Some("p".into());
        l.slurm.gpus_per_task = Some(1);
        l.slurm.cpus_per_task = Some(1);
        l.slurm.mem = Some("1G".into());
        l.slurm.time = Some("1:00".into());
        l.slurm.array_parallelism = Some(1);
        l.slurm.account = Some("a".into());
        l.slurm.extra_sbatch = vec!["x".into()];
        leaves("launcher", &serde_json::to_value(&l).unwrap(), &mut got);
        got.sort();
        let mut want: Vec<String> = FIELDS.iter().map(|f| f.key.to_string()).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn defaults_pass_their_own_schema() {
        let cfg = ExperimentConfig {
            name: "x".into(),
            ..Default::default()
        };
        let v = toml::Value::try_from(&cfg).unwrap();
        for f in FIELDS {
            let mut cur = &v;
            let mut found = true;
            for part in f.key.split('.') {
                match cur.get(part) {
                    Some(x) => cur = x,
                    None => found = false,
                }
            }
            if found {
                f.kind
                    .check(cur)
                    .unwrap_or_else(|e| panic!("{}: {e}", f.key));
            }
        }
    }

    #[test]
    fn every_choice_deserialises() {
        for f in FIELDS {
            if let Kind::Choice(cs) = f.kind {
                for c in cs {
                    let mut t = toml::Table::new();
                    let mut cur = &mut t;
                    let parts: Vec<&str> = f.key.split('.').collect();
                    for p in &parts[..parts.len() - 1] {
                        cur = cur
                            .entry(p.to_string())
                            .or_insert(Value::Table(Default::default()))
                            .as_table_mut()
                            .unwrap();
                    }
                    cur.insert(parts[parts.len() - 1].into(), Value::String(c.to_string()));
                    let r: Result<ExperimentConfig, _> = t.try_into();
                    assert!(r.is_ok(), "{} = {c}: {:?}", f.key, r.err());
                }
            }
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("cam", "treshold").as_deref(), Some("cam.threshold"));
        assert_eq!(suggest("", "threshold").as_deref(), Some("cam.threshold"));
        assert_eq!(suggest("", "datset").as_deref(), Some("dataset"));
        assert_eq!(
            suggest_choice(&["ce", "focal"], "focl").as_deref(),
            Some("focal")
        );
    }

    #[test]
    fn ranges() {
        assert!(PROB.check(&Value::Float(1.5)).is_err());
        assert!(PROB.check(&Value::Integer(1)).is_ok());
        assert!(POS.check(&Value::Float(0.0)).is_err());
        assert!(POS.check(&Value::Float(f64::NAN)).is_err());
        assert!(Kind::Device.check(&Value::String("cuda:1".into())).is_ok());
        assert!(Kind::Device.check(&Value::String("gpu".into())).is_err());
    }
}
