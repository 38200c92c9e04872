//! The resolved experiment configuration: what a variant runs with, is saved as, and is hashed.
//!
//! These types are produced only by [`crate::config::load`] after every source has passed the
//! schema checks, so code downstream never re-validates. They serialise back to a manifest that
//! `wsss` accepts as-is (the `config.toml` in every run directory reproduces the run).

use serde::{Deserialize, Deserializer, Serialize};

/// One fully resolved experiment variant (no `sweep`, no `extends`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Experiment name; names the folder under the work directory.
    pub name: String,
    /// Free text shown in plans and reports.
    pub description: String,
    /// Dataset name, looked up in `datasets.toml`.
    pub dataset: String,
    /// How the classifier's labels are derived (image-level, or patch-level from masks).
    /// Left out of the saved config (and so of every hash) while it is the default, so runs
    /// made before this section existed keep their cache keys.
    #[serde(skip_serializing_if = "LabelsConfig::is_default")]
    pub labels: LabelsConfig,
    /// Stain normalisation of every image (left out of the saved config while it is the
    /// default, so earlier runs keep their cache keys).
    #[serde(skip_serializing_if = "StainConfig::is_default")]
    pub stain: StainConfig,
    /// `cpu`, `cuda:N` or `auto`.
    pub device: String,
    /// Arithmetic of the GPU's convolutions and matrix products (left out of the saved config
    /// while `auto`, so earlier runs keep their hashes).
    #[serde(skip_serializing_if = "Precision::is_auto")]
    pub precision: Precision,
    /// Patient-level split.
    pub split: SplitConfig,
    /// Classifier backbone.
    pub backbone: BackboneConfig,
    /// CAM method and pseudo-label rule.
    pub cam: CamConfig,
    /// Classification loss variant.
    pub loss: LossConfig,
    /// Segmentation network and its training.
    pub segmentation: SegmentationConfig,
    /// Classifier training.
    pub train: TrainConfig,
    /// Settings of the scores (boundary tolerances); left out of the saved config while it is
    /// the default, so earlier runs keep their cache keys.
    #[serde(skip_serializing_if = "MetricsConfig::is_default")]
    pub metrics: MetricsConfig,
    /// `[launcher.slurm]`: how `wsss run --launcher slurm` submits the variants. Not part of
    /// a variant (never saved with it, never in a hash, cannot be swept): where a result was
    /// computed does not change it.
    #[serde(skip_serializing)]
    pub launcher: LauncherConfig,
}

/// `[launcher]`: settings of the launchers (command-line options override them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LauncherConfig {
    /// `[launcher.slurm]`.
    pub slurm: SlurmConfig,
}

/// `[launcher.slurm]`: `sbatch` settings of every job (unset: the cluster's defaults).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlurmConfig {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--gpus-per-task` of the upstream and variant tasks.
    pub gpus_per_task: Option<u32>,
    /// `--cpus-per-task`.
    pub cpus_per_task: Option<u32>,
    /// `--mem`, e.g. `16G`.
    pub mem: Option<String>,
    /// `--time`, e.g. `04:00:00`.
    pub time: Option<String>,
    /// At most this many tasks of an array at once.
    pub array_parallelism: Option<u32>,
    /// `--account`.
    pub account: Option<String>,
    /// Further `#SBATCH` lines, verbatim (e.g. `"--qos=long"`).
    pub extra_sbatch: Vec<String>,
}

/// `[metrics]`: how predictions are scored (not what is computed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Boundary F-score match distance as a fraction of the image diagonal (the DAVIS
    /// benchmark's 0.008: 8 px on a 775×522 GlaS tile, 2 px on a 128² tile).
    pub boundary_f_tolerance: f64,
    /// Boundary IoU band width as a fraction of the image diagonal (Cheng et al. 2021's 0.02:
    /// 19 px on a GlaS tile, 4 px on a 128² tile).
    pub boundary_iou_width: f64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            boundary_f_tolerance: 0.008,
            boundary_iou_width: 0.02,
        }
    }
}

impl MetricsConfig {
    /// Whether these are the defaults.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            description: String::new(),
            dataset: "synthetic".into(),
            labels: LabelsConfig::default(),
            stain: StainConfig::default(),
            device: "cpu".into(),
            precision: Precision::Auto,
            split: SplitConfig::default(),
            backbone: BackboneConfig::default(),
            cam: CamConfig::default(),
            loss: LossConfig::default(),
            segmentation: SegmentationConfig::default(),
            train: TrainConfig::default(),
            metrics: MetricsConfig::default(),
            launcher: LauncherConfig::default(),
        }
    }
}

/// Stain normalisation methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StainNorm {
    /// Images as they are.
    #[default]
    None,
    /// Reinhard colour transfer in L*a*b* onto the training images' statistics
    /// (`data::stain`).
    Reinhard,
}

/// `precision`: the arithmetic of the GPU's convolutions and matrix products (the CPU always
/// computes in fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// What PyTorch does by default: TF32 in cuDNN's convolutions where the GPU has it
    /// (`torch.backends.cudnn.allow_tf32 = True`), fp32 matrix products
    /// (`torch.backends.cuda.matmul.allow_tf32 = False`).
    #[default]
    Auto,
    /// fp32 everywhere (cuDNN's FMA-only math, no TF32 in cuBLAS).
    Fp32,
    /// TF32 tensor cores for convolutions and matrix products (10-bit mantissa products,
    /// fp32 accumulation; Ampere and later).
    Tf32,
}

impl Precision {
    /// Whether this is the default.
    pub fn is_auto(&self) -> bool {
        *self == Precision::Auto
    }
}

/// `[stain]`: colour normalisation applied to every image every stage reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StainConfig {
    /// Method; its target is fitted on the training split only.
    pub normalize: StainNorm,
}

impl StainConfig {
    /// Whether this is the default (no normalisation).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Stain augmentation of training views (`segmentation.stain_augment`, `train.stain_augment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StainAugment {
    /// Each RGB channel scaled by `U(1 − strength, 1 + strength)`: a tint (the default, and
    /// what every run did before this key existed).
    #[default]
    Channel,
    /// Tellez et al.'s HED jitter (Medical Image Analysis 2019; `data::hed`): per view and
    /// stain, the haematoxylin / eosin / DAB optical density scaled by `U(1 − σ, 1 + σ)` and
    /// shifted by `U(−σ, σ)`, σ = strength ("HED-light" 0.05, "HED-strong" 0.2).
    Hed,
    /// No stain jitter.
    None,
}

impl StainAugment {
    /// Whether this is the default (then left out of cache keys, which predate it).
    pub fn is_channel(&self) -> bool {
        *self == StainAugment::Channel
    }
}

/// Default `stain_augment_strength`.
pub const STAIN_AUGMENT_STRENGTH: f64 = 0.05;

impl StainAugment {
    /// The strength a training stage reads: the default under `none` (which reads none), so a
    /// sweep over the strength with `none` trains one network, not several fake replicates
    /// (the evaluate stage, which keys the whole `[segmentation]` table, still scores each).
    pub fn effective_strength(&self, strength: f64) -> f64 {
        match self {
            StainAugment::None => STAIN_AUGMENT_STRENGTH,
            StainAugment::Channel | StainAugment::Hed => strength,
        }
    }
}

/// Serde helper: a strength at its default is left out of cache keys (which predate it).
fn is_default_strength(v: &f64) -> bool {
    *v == STAIN_AUGMENT_STRENGTH
}

/// How patients are assigned to train / valid / test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitMethod {
    /// Explicit patient lists.
    Patients,
    /// K-fold over patients, stratified by each patient's majority class.
    Kfold,
    /// A seeded fraction of the patients of each class.
    Fraction,
}

/// Patient-level split settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// Which strategy assigns patients to splits.
    pub method: SplitMethod,
    /// Seed of the patient shuffle (independent of `train.seed`, so seeds can be swept on a
    /// fixed split).
    pub seed: u64,
    /// `fraction`: share of each class's patients that go to `valid`.
    pub valid_fraction: f64,
    /// `fraction`: share of each class's patients that go to `test`.
    pub test_fraction: f64,
    /// `kfold`: number of folds.
    pub folds: u32,
    /// `kfold`: which fold is the validation fold (0-based).
    pub fold: u32,
    /// `patients`: training patients.
    #[serde(deserialize_with = "patient_ids")]
    pub train_patients: Vec<String>,
    /// `patients`: validation patients.
    #[serde(deserialize_with = "patient_ids")]
    pub valid_patients: Vec<String>,
    /// `patients`: test patients.
    #[serde(deserialize_with = "patient_ids")]
    pub test_patients: Vec<String>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            method: SplitMethod::Fraction,
            seed: 0,
            valid_fraction: 0.25,
            test_fraction: 0.0,
            folds: 5,
            fold: 0,
            train_patients: vec![],
            valid_patients: vec![],
            test_patients: vec![],
        }
    }
}

/// Patient ids are written as strings or integers in manifests; both mean the same id.
fn patient_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        I(i64),
    }
    let v = Vec::<Id>::deserialize(d)?;
    Ok(v.into_iter()
        .map(|x| match x {
            Id::S(s) => s,
            Id::I(i) => i.to_string(),
        })
        .collect())
}

/// Classifier architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// VGG-16 as in torchvision (13 conv, 5 max-pools).
    Vgg16,
    /// ResNet-18.
    Resnet18,
    /// ResNet-50.
    Resnet50,
    /// EfficientNet-Lite0 (MBConv blocks, depthwise convs, ReLU6).
    EfficientnetLite0,
    /// EfficientNet-Lite1.
    EfficientnetLite1,
    /// EfficientNet-Lite2.
    EfficientnetLite2,
}

/// Classifier backbone settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackboneConfig {
    /// Architecture.
    pub arch: Arch,
    /// Batch norm after every conv (VGG-16-BN).
    pub batch_norm: bool,
    /// Channel width multiplier (1.0 = torchvision's widths).
    pub width: f64,
    /// Optional local weights file (safetensors or PyTorch `.pth`/`.pt`) with the
    /// checkpoint's own parameter names (torchvision's, or the EfficientNet-Lite port's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
    /// Number of leading conv blocks kept frozen.
    pub freeze_blocks: u32,
    /// Which block the CAM reads (`last` or a block index).
    pub cam_layer: String,
}

impl Default for BackboneConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Vgg16,
            batch_norm: false,
            width: 1.0,
            pretrained: None,
            freeze_blocks: 0,
            cam_layer: "last".into(),
        }
    }
}

/// CAM methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CamMethod {
    /// Class Activation Map from the head's class weights.
    Cam,
    /// Gradient-weighted CAM.
    Gradcam,
    /// Grad-CAM++.
    #[serde(rename = "gradcam++")]
    GradcamPlusPlus,
    /// LayerCAM.
    Layercam,
}

/// CAM refinement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refine {
    /// No refinement.
    None,
    /// SLIC superpixel voting.
    Slic,
    /// Dense CRF (Krähenbühl & Koltun 2011) with the settings of `[cam.crf]`.
    Crf,
    /// Graph convolutional network over superpixels (Kipf & Welling 2017) trained on the
    /// confident CAM, with the settings of `[cam.gcn]`.
    Gcn,
    /// The CAM kept only where the Gaussian-smoothed haematoxylin channel is above its Otsu
    /// threshold (a nuclear-density prior: glands are sheets of epithelial nuclei), with the
    /// settings of `[cam.haematoxylin]`.
    Haematoxylin,
}

/// `[cam.haematoxylin]`: the nuclear-density prior of `cam.refine = "haematoxylin"`. The
/// haematoxylin channel (colour deconvolution, Ruifrok & Johnston 2001: the channel of the Otsu
/// baseline) is smoothed by a Gaussian of standard deviation `sigma` and cut at its Otsu
/// threshold per image; the CAM is kept where the smoothed channel is above it, set to 0
/// elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaematoxylinConfig {
    /// Standard deviation of the Gaussian, in pixels of the image as stored (the scale at
    /// which nuclei merge into the glands they line: a few nucleus diameters).
    pub sigma: f64,
}

impl Default for HaematoxylinConfig {
    fn default() -> Self {
        Self { sigma: 8.0 }
    }
}

impl HaematoxylinConfig {
    /// Whether these are the defaults.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `[cam.crf]`: the dense CRF of `cam.refine = "crf"` — mean-field iterations, and the two
/// Gaussian kernels' standard deviations (pixels; colour in 8-bit units) and Potts weights.
/// Defaults are `pydensecrf`'s example settings, which WSSS pipelines reuse (Ahn & Kwak 2018).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrfConfig {
    /// Mean-field iterations.
    pub iterations: u32,
    /// Smoothness kernel: position standard deviation in pixels.
    pub gaussian_sxy: f64,
    /// Smoothness kernel weight.
    pub gaussian_weight: f64,
    /// Appearance kernel: position standard deviation in pixels.
    pub bilateral_sxy: f64,
    /// Appearance kernel: colour standard deviation (8-bit RGB units).
    pub bilateral_srgb: f64,
    /// Appearance kernel weight.
    pub bilateral_weight: f64,
}

impl Default for CrfConfig {
    fn default() -> Self {
        Self {
            iterations: 10,
            gaussian_sxy: 3.0,
            gaussian_weight: 3.0,
            bilateral_sxy: 80.0,
            bilateral_srgb: 13.0,
            bilateral_weight: 10.0,
        }
    }
}

impl CrfConfig {
    /// Whether these are the defaults.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `[cam.gcn]`: the graph convolutional pseudo labels of `cam.refine = "gcn"`. Nodes are the
/// SLIC superpixels of `cam.refine = "slic"`; the network and its training follow Kipf &
/// Welling (ICLR 2017): two layers, `hidden` units, Adam at `learning_rate` for `epochs`
/// full-batch steps, L2 `weight_decay` on the first layer (their values; no dropout, so the
/// labels are a pure function of the seed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcnConfig {
    /// Hidden units of the first layer.
    pub hidden: u32,
    /// Full-batch training steps per image.
    pub epochs: u32,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// L2 penalty on the first layer's weights.
    pub weight_decay: f64,
    /// Feature-space neighbours added to each node's superpixel neighbours.
    pub knn: u32,
    /// Nodes whose mean normalised CAM is below this are background seeds (foreground seeds:
    /// at or above `cam.threshold`); every other node is predicted by the network.
    pub background_seed: f64,
}

impl Default for GcnConfig {
    fn default() -> Self {
        Self {
            hidden: 16,
            epochs: 200,
            learning_rate: 0.01,
            weight_decay: 5e-4,
            knn: 8,
            background_seed: 0.3,
        }
    }
}

impl GcnConfig {
    /// Whether these are the defaults.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// CAM normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CamNorm {
    /// Per-image min-max to [0, 1].
    Minmax,
    /// Divide by the per-image maximum.
    Max,
}

/// CAM and pseudo-label settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CamConfig {
    /// CAM method.
    pub method: CamMethod,
    /// Confidence threshold: normalised CAM ≥ threshold is foreground (0.70 in the talk).
    pub threshold: f64,
    /// Below this the pixel is background; between it and `threshold` it is ignored (255).
    /// Absent = equal to `threshold` (no ignore band).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background_threshold: Option<f64>,
    /// Normalisation before thresholding.
    pub normalize: CamNorm,
    /// Refinement of the CAM before thresholding.
    pub refine: Refine,
    /// Average CAMs over flips and scales.
    pub tta: bool,
    /// Map the positive class's evidence *against* the other classes (its logit minus theirs)
    /// rather than its logit alone (left out of the saved config while `false`, so earlier runs
    /// keep their hashes).
    #[serde(skip_serializing_if = "is_false")]
    pub contrast: bool,
    /// Patch-level labels: recentre the stored margin map per run (left out of the saved
    /// config while `none`, so earlier runs keep their hashes).
    #[serde(skip_serializing_if = "CamBalance::is_none")]
    pub balance: CamBalance,
    /// Dense CRF settings (read only with `refine = "crf"`; left out of the saved config while
    /// they are the defaults).
    #[serde(skip_serializing_if = "CrfConfig::is_default")]
    pub crf: CrfConfig,
    /// GCN settings (read only with `refine = "gcn"`; left out of the saved config while they
    /// are the defaults).
    #[serde(skip_serializing_if = "GcnConfig::is_default")]
    pub gcn: GcnConfig,
    /// Nuclear-density prior settings (read only with `refine = "haematoxylin"`; left out of
    /// the saved config while they are the defaults).
    #[serde(skip_serializing_if = "HaematoxylinConfig::is_default")]
    pub haematoxylin: HaematoxylinConfig,
}

/// Serde helper: skip a `false` flag.
fn is_false(b: &bool) -> bool {
    !*b
}

/// Recentring of the patch-level margin map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CamBalance {
    /// The margin as stitched: 0.5 is the argmax of the two class maps.
    #[default]
    None,
    /// Shift the margin so the median pixel of the training images' two-label windows sits at
    /// 0.5 (uses window labels only, no pixel masks).
    Median,
}

impl CamBalance {
    /// Whether this is `None`.
    pub fn is_none(&self) -> bool {
        *self == Self::None
    }
}

impl Default for CamConfig {
    fn default() -> Self {
        Self {
            method: CamMethod::Cam,
            threshold: 0.7,
            background_threshold: None,
            normalize: CamNorm::Minmax,
            refine: Refine::None,
            tta: false,
            contrast: false,
            balance: CamBalance::None,
            crf: CrfConfig::default(),
            gcn: GcnConfig::default(),
            haematoxylin: HaematoxylinConfig::default(),
        }
    }
}

/// Classification loss variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossVariant {
    /// Softmax cross-entropy.
    Ce,
    /// Binary cross-entropy (sigmoid per class).
    Bce,
    /// Focal loss.
    Focal,
    /// Cross-entropy with label smoothing.
    LabelSmoothing,
    /// Cross-entropy plus a CAM equivariance term (SEAM-style).
    Equivariance,
    /// Cross-entropy plus a CAM area / sparsity regulariser.
    CamArea,
}

/// Loss settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Which loss.
    pub variant: LossVariant,
    /// Focal γ.
    pub focal_gamma: f64,
    /// Focal α (weight of the positive class).
    pub focal_alpha: f64,
    /// Label smoothing ε.
    pub label_smoothing: f64,
    /// Weight of the evidence (CAM) term of the evidence-aware variants.
    pub evidence_weight: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            variant: LossVariant::Ce,
            focal_gamma: 2.0,
            focal_alpha: 0.25,
            label_smoothing: 0.1,
            evidence_weight: 0.1,
        }
    }
}

/// What the segmenter learns from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Supervision {
    /// CAM pseudo labels (weak supervision).
    Pseudo,
    /// Ground-truth masks (the fully supervised upper bound).
    Full,
}

/// Segmentation losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegLoss {
    /// Per-pixel cross-entropy with ignore index 255.
    Ce,
    /// Online easy-example mining weighting (OEEM).
    Oeem,
    /// OEEM with the weights normalised within each pseudo-label class of an image, so each
    /// class keeps its share of the loss and easy examples are mined within classes.
    OeemBalanced,
    /// Class-balanced cross-entropy: the mean over the classes present in the batch of each
    /// class's mean pixel loss, so a minority class weighs as much as the majority.
    BalancedCe,
}

/// Which epoch's weights the segmenter keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegSelect {
    /// The last epoch.
    #[default]
    Last,
    /// The epoch whose predictions on the validation images agree best (mIoU) with those
    /// images' labels — their pseudo labels under weak supervision (no mask read), their masks
    /// under full supervision.
    LabelAgreement,
}

impl SegSelect {
    /// Whether this is the default (then left out of cache keys, which predate it).
    pub fn is_last(&self) -> bool {
        *self == SegSelect::Last
    }
}

/// How overlapping sliding-window predictions are combined at inference
/// (`segmentation.blend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegBlend {
    /// Every window's probabilities weigh the same (mmsegmentation's `slide` mode): where two
    /// windows that disagree meet, the map can jump at a window's edge.
    #[default]
    Mean,
    /// Each window's probabilities weighted by a Gaussian centred on it (σ = ⅛ of the window
    /// side, as nnU-Net; Isensee et al., Nature Methods 2021): a pixel is decided by the
    /// windows that see it nearest their centre, and no seam is left at window edges.
    Gaussian,
}

impl SegBlend {
    /// Whether this is the default (then left out of cache keys, which predate it).
    pub fn is_mean(&self) -> bool {
        *self == SegBlend::Mean
    }
}

/// Segmentation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentationConfig {
    /// Encoder architecture.
    pub encoder: Arch,
    /// Output stride (8 or 16).
    pub output_stride: u32,
    /// Pseudo labels or ground truth.
    pub supervision: Supervision,
    /// Loss.
    pub loss: SegLoss,
    /// Epochs.
    pub epochs: u32,
    /// Batch size.
    pub batch_size: u32,
    /// Learning rate.
    pub lr: f64,
    /// Training crop size in pixels (also the sliding-window size at inference).
    pub crop_size: u32,
    /// Encoder channel width multiplier.
    pub width: f64,
    /// Channels of the ASPP and the decoder (DeepLab V3+'s 256); absent = `256 × width`.
    /// Lets a full-width pretrained encoder run with a narrow head on a CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aspp_channels: Option<u32>,
    /// Where the encoder's weights start.
    pub init: SegInit,
    /// Which epoch's weights are kept.
    #[serde(skip_serializing_if = "SegSelect::is_last")]
    pub select: SegSelect,
    /// Flip test-time augmentation at inference.
    pub tta: bool,
    /// How overlapping sliding windows are combined at inference.
    #[serde(skip_serializing_if = "SegBlend::is_mean")]
    pub blend: SegBlend,
    /// Resize factor applied to images before training and inference (predictions are
    /// resized back to the image's size before scoring).
    pub scale: f64,
    /// Linear learning-rate warm-up from `lr / 10` over this many epochs, then the poly
    /// schedule over the rest (0 = none).
    #[serde(skip_serializing_if = "is_zero")]
    pub warmup_epochs: u32,
    /// Learning-rate multiplier of the encoder's parameters (the ASPP and decoder train at
    /// `lr`): below 1 keeps a trained encoder (`init = "classifier"`, pretrained weights) from
    /// being overwritten while the freshly initialised head is still random — the "10× lr for
    /// the head" of DeepLab fine-tuning (mmsegmentation's `lr_mult`). 1 = one rate for all.
    #[serde(skip_serializing_if = "is_one")]
    pub encoder_lr_mult: f64,
    /// Local weights file the encoder starts from when `init = "pretrained"` (relative to the
    /// manifest; ignored otherwise): ImageNet weights for a segmenter whose encoder is not the
    /// classifier's architecture, as DeepLab V3+ is trained in its paper (Chen et al. 2018).
    /// Tensors are matched by name and shape (torchvision / EfficientNet-Lite names, or a wsss
    /// classifier's weights file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
    /// Where training crops are taken.
    #[serde(skip_serializing_if = "CropSampling::is_uniform")]
    pub crop_sampling: CropSampling,
    /// Stain augmentation of the training crops.
    #[serde(skip_serializing_if = "StainAugment::is_channel")]
    pub stain_augment: StainAugment,
    /// Its strength (the channel scale's amplitude, or the HED jitter's σ; not read by
    /// `none`).
    #[serde(skip_serializing_if = "is_default_strength")]
    pub stain_augment_strength: f64,
    /// Rounds of self-training after the first (weak supervision only; 0 = none): the
    /// segmenter's predictions on the training images become the next round's labels, and a
    /// fresh segmenter is trained on them (`train::self_training`).
    #[serde(skip_serializing_if = "is_zero")]
    pub self_training_rounds: u32,
    /// What each self-training round relabels ([`Relabel`]; read only when
    /// `self_training_rounds > 0`).
    #[serde(skip_serializing_if = "Relabel::is_default")]
    pub self_training_relabel: Relabel,
}

impl SegmentationConfig {
    /// The same settings with the values that cannot matter put at their defaults, so they
    /// leave cache keys alone: the stain jitter's strength under `stain_augment = "none"`, and
    /// self-training under full supervision (masks are not relabelled).
    pub fn normalised(&self) -> Self {
        let rounds = match self.supervision {
            Supervision::Pseudo => self.self_training_rounds,
            Supervision::Full => 0,
        };
        Self {
            stain_augment_strength: self
                .stain_augment
                .effective_strength(self.stain_augment_strength),
            self_training_rounds: rounds,
            self_training_relabel: if rounds == 0 {
                Relabel::default()
            } else {
                self.self_training_relabel
            },
            ..self.clone()
        }
    }
}

/// Serde helper: a key at its default 0 is left out of cache keys (which predate it).
fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Serde helper: a multiplier at its default 1 is left out of cache keys (which predate it).
fn is_one(v: &f64) -> bool {
    *v == 1.0
}

/// Where the segmenter's training crops are taken (`segmentation.crop_sampling`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CropSampling {
    /// Uniformly at random over the image.
    #[default]
    Uniform,
    /// The one of [`RATIO_CANDIDATES`] uniform draws whose labelled foreground share is
    /// nearest the whole image's: each crop keeps its image's gland/background ratio, so a
    /// batch's class balance does not swing with where crops happen to fall.
    LabelRatio,
}

/// What a self-training round relabels (`segmentation.self_training_relabel`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Relabel {
    /// Every training label map with a foreground pixel becomes the segmenter's prediction;
    /// maps without foreground (image-level negatives) are kept.
    #[default]
    PositiveImages,
    /// Only the pixels the pseudo labels leave ignored (255, the CAM's ignore band) take the
    /// segmenter's prediction; every labelled pixel keeps its pseudo label in every round.
    /// Needs an ignore band (`cam.background_threshold` < `cam.threshold`).
    IgnoredPixels,
}

impl Relabel {
    /// Whether this is the default (then left out of cache keys, which predate it).
    pub fn is_default(&self) -> bool {
        *self == Relabel::PositiveImages
    }

    /// The manifest's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Relabel::PositiveImages => "positive-images",
            Relabel::IgnoredPixels => "ignored-pixels",
        }
    }
}

/// Uniform crop positions drawn per `label-ratio` crop.
pub const RATIO_CANDIDATES: usize = 4;

impl CropSampling {
    /// Whether this is the default (then left out of cache keys, which predate it).
    pub fn is_uniform(&self) -> bool {
        *self == CropSampling::Uniform
    }
}

/// Where the segmenter's encoder starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegInit {
    /// Seeded Kaiming initialisation (or `backbone.pretrained` when the architectures match).
    Scratch,
    /// The trained classifier's feature extractor (same architecture and width required).
    Classifier,
    /// `segmentation.pretrained` (e.g. ImageNet weights), independent of the classifier.
    Pretrained,
}

impl Default for SegmentationConfig {
    fn default() -> Self {
        Self {
            encoder: Arch::Resnet18,
            output_stride: 16,
            supervision: Supervision::Pseudo,
            loss: SegLoss::Ce,
            epochs: 20,
            batch_size: 8,
            lr: 0.01,
            crop_size: 256,
            width: 1.0,
            aspp_channels: None,
            init: SegInit::Scratch,
            select: SegSelect::Last,
            tta: false,
            blend: SegBlend::Mean,
            scale: 1.0,
            warmup_epochs: 0,
            encoder_lr_mult: 1.0,
            pretrained: None,
            crop_sampling: CropSampling::Uniform,
            stain_augment: StainAugment::Channel,
            stain_augment_strength: STAIN_AUGMENT_STRENGTH,
            self_training_rounds: 0,
            self_training_relabel: Relabel::PositiveImages,
        }
    }
}

/// Optimisers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    /// AdamW.
    Adamw,
    /// SGD with momentum.
    Sgd,
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Constant.
    Constant,
    /// Step decay.
    Step,
    /// Cosine annealing.
    Cosine,
    /// Polynomial decay.
    Poly,
}

/// Which labels the classifier learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelLevel {
    /// One class per image (the talk's protocol).
    Image,
    /// Multi-label windows cut from each image, labelled "contains background" / "contains
    /// foreground" from the mask (the OEEM protocol).
    Patch,
    /// Image-level labels learned on windows: each window carries its image's class (no masks
    /// are read). The CAM is then computed over the whole image at the windows' scale, so its
    /// evidence is local instead of a tile-wide blob.
    ImageWindows,
}

/// Label derivation (`[labels]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelsConfig {
    /// Image-level or patch-level labels, or image-level labels on windows.
    pub level: LabelLevel,
    /// `patch`, `image-windows`: window side in pixels of the image.
    pub patch_size: u32,
    /// `patch`, `image-windows`: window step in pixels.
    pub patch_stride: u32,
    /// `patch`: a class is present when it covers more than this share of the window's
    /// labelled pixels.
    pub min_fraction: f64,
}

impl Default for LabelsConfig {
    fn default() -> Self {
        Self {
            level: LabelLevel::Image,
            patch_size: 128,
            patch_stride: 64,
            min_fraction: 0.0,
        }
    }
}

impl LabelsConfig {
    /// Whether this is the default (image-level) setting.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
    /// Whether the classifier learns patch-level labels.
    pub fn patch(&self) -> bool {
        self.level == LabelLevel::Patch
    }
    /// Whether labels are one per image (no window setting is read).
    pub fn is_image_level(&self) -> bool {
        self.level == LabelLevel::Image
    }
    /// Whether the classifier learns from windows (patch labels, or image labels on windows).
    pub fn windows(&self) -> bool {
        self.level != LabelLevel::Image
    }
}

/// Classifier training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: u32,
    /// Batch size.
    pub batch_size: u32,
    /// Learning rate.
    pub lr: f64,
    /// Optimiser.
    pub optimizer: Optimizer,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Linear warm-up epochs.
    pub warmup_epochs: u32,
    /// Square input size in pixels.
    pub image_size: u32,
    /// Seed of initialisation, sampling and augmentation.
    pub seed: u64,
    /// Sample classes with equal probability.
    pub balanced_sampling: bool,
    /// Stop after this many epochs without a better validation score (0 = never).
    pub patience: u32,
    /// Stain augmentation of the classifier's training views.
    #[serde(skip_serializing_if = "StainAugment::is_channel")]
    pub stain_augment: StainAugment,
    /// Its strength (the channel scale's amplitude, or the HED jitter's σ; not read by
    /// `none`).
    #[serde(skip_serializing_if = "is_default_strength")]
    pub stain_augment_strength: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 8,
            lr: 1e-3,
            optimizer: Optimizer::Adamw,
            momentum: 0.9,
            weight_decay: 1e-4,
            schedule: Schedule::Cosine,
            warmup_epochs: 0,
            image_size: 224,
            seed: 0,
            balanced_sampling: false,
            patience: 0,
            stain_augment: StainAugment::Channel,
            stain_augment_strength: STAIN_AUGMENT_STRENGTH,
        }
    }
}
