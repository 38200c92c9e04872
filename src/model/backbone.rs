//! The classifier network: a feature extractor (VGG-16, ResNet-18/50 or EfficientNet-Lite0/1/2)
//! under one interface,
//! with a global-average-pool → dropout → linear head (`head.*`).
//!
//! The head is linear in the pooled features, so the Class Activation Map — the head's class
//! weights applied at every position of the last feature map — averages exactly to the logits.
//! Every CAM method and the segmenter's encoder go through this type, so none of them needs to
//! know which architecture it reads.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

use super::efficientnet::{EfficientNet, EfficientNetConfig, Variant};
use super::resnet::{Depth, ResNet, ResNetConfig};
use super::vgg::{block_prefixes, Vgg, VggConfig};
use crate::config::Arch;

/// Number of feature blocks every backbone exposes (VGG: the five conv blocks; ResNet: the
/// stem and `layer1`…`layer4`; EfficientNet: see [`super::efficientnet`]).
pub const BLOCKS: usize = 5;

/// Backbone settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackboneSpec {
    /// Architecture.
    pub arch: Arch,
    /// Batch norm after every conv (VGG only; ResNet and EfficientNet always have it).
    pub batch_norm: bool,
    /// Channel width multiplier.
    pub width: f64,
    /// Output stride 8 instead of 16 (segmentation encoders).
    pub output_stride_8: bool,
}

/// A feature extractor.
#[derive(Debug, Clone)]
pub enum Features {
    /// VGG-16.
    Vgg(Vgg),
    /// ResNet-18 / ResNet-50.
    ResNet(ResNet),
    /// EfficientNet-Lite0/1/2.
    EfficientNet(Box<EfficientNet>),
}

impl Features {
    /// Build the feature extractor of `spec` under the model root `vb`.
    pub fn new(spec: BackboneSpec, vb: VarBuilder) -> Result<Self> {
        Ok(match spec.arch {
            Arch::Vgg16 => Features::Vgg(Vgg::new(
                VggConfig {
                    batch_norm: spec.batch_norm,
                    width: spec.width,
                    output_stride_8: spec.output_stride_8,
                },
                vb,
            )?),
            Arch::Resnet18 | Arch::Resnet50 => Features::ResNet(ResNet::new(
                ResNetConfig {
                    depth: if spec.arch == Arch::Resnet18 {
                        Depth::R18
                    } else {
                        Depth::R50
                    },
                    width: spec.width,
                    output_stride_8: spec.output_stride_8,
                },
                vb,
            )?),
            Arch::EfficientnetLite0 | Arch::EfficientnetLite1 | Arch::EfficientnetLite2 => {
                Features::EfficientNet(Box::new(EfficientNet::new(
                    EfficientNetConfig {
                        variant: match spec.arch {
                            Arch::EfficientnetLite0 => Variant::Lite0,
                            Arch::EfficientnetLite1 => Variant::Lite1,
                            _ => Variant::Lite2,
                        },
                        width: spec.width,
                        output_stride: if spec.output_stride_8 { 8 } else { 16 },
                    },
                    vb,
                )?))
            }
        })
    }

    /// Channels of block `b` (0-based).
    pub fn block_channels(&self, b: usize) -> usize {
        match self {
            Features::Vgg(v) => v.config().block_channels(b),
            Features::ResNet(r) => {
                if b == 0 {
                    r.config().stem_channels()
                } else {
                    r.config().layer_channels(b.min(4))
                }
            }
            Features::EfficientNet(e) => e.config().block_channels(b),
        }
    }

    /// Outputs of blocks `start..BLOCKS`, starting from the output of block `start − 1`
    /// (the image when `start` is 0).
    pub fn blocks_from(&self, x: &Tensor, start: usize, train: bool) -> Result<Vec<Tensor>> {
        match self {
            Features::Vgg(v) => v.blocks_from(x, start, train),
            Features::ResNet(r) => r.blocks_from(x, start, train),
            Features::EfficientNet(e) => e.blocks_from(x, start, train),
        }
    }

    /// Outputs of all blocks.
    pub fn blocks(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.blocks_from(x, 0, train)
    }

    /// Prefixes of the parameters of the first `n` blocks (for freezing).
    pub fn block_prefixes(&self, n: usize) -> Vec<String> {
        match self {
            Features::Vgg(v) => block_prefixes(v.config().batch_norm, n),
            Features::ResNet(_) => {
                let mut out = Vec::new();
                if n >= 1 {
                    out.push("conv1.".to_string());
                    out.push("bn1.".to_string());
                }
                for l in 1..n.min(BLOCKS) {
                    out.push(format!("layer{l}."));
                }
                out
            }
            Features::EfficientNet(e) => e.block_prefixes(n),
        }
    }

    /// Prefixes that a checkpoint shares with this extractor (what pretrained loading reads):
    /// `features.` for VGG, everything but the classifier (`fc.*`, `_fc.*`) for ResNet and
    /// EfficientNet.
    pub fn pretrained_prefixes(&self) -> Vec<&'static str> {
        match self {
            Features::Vgg(_) => vec!["features."],
            Features::ResNet(_) => {
                vec!["conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."]
            }
            Features::EfficientNet(_) => {
                vec!["_conv_stem.", "_bn0.", "_blocks.", "_conv_head.", "_bn1."]
            }
        }
    }
}

/// How a backbone wants its input normalised, for the run's record. Every backbone takes the
/// data loader's ImageNet-normalised images; EfficientNet-Lite converts them to what its
/// checkpoints were trained on.
pub fn input_normalisation(arch: Arch) -> &'static str {
    match arch {
        Arch::Vgg16 | Arch::Resnet18 | Arch::Resnet50 => {
            "ImageNet mean/std (torchvision): (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]"
        }
        Arch::EfficientnetLite0 | Arch::EfficientnetLite1 | Arch::EfficientnetLite2 => {
            "EfficientNet-Lite (TensorFlow): (pixel - 127) / 128, converted from the loader's ImageNet normalisation"
        }
    }
}

/// Feature extractor + GAP-linear head.
#[derive(Debug, Clone)]
pub struct Backbone {
    /// The feature extractor.
    pub features: Features,
    head: Linear,
    classes: usize,
}

impl Backbone {
    /// Build (or load, depending on the `VarBuilder`'s backend) a classifier.
    pub fn new(spec: BackboneSpec, classes: usize, vb: VarBuilder) -> Result<Self> {
        let features = Features::new(spec, vb.clone())?;
        let c = features.block_channels(BLOCKS - 1);
        let hw = vb.pp("head").get_with_hints(
            (classes, c),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
        )?;
        let hb = vb
            .pp("head")
            .get_with_hints(classes, "bias", Init::Const(0.0))?;
        Ok(Self {
            features,
            head: Linear::new(hw, Some(hb)),
            classes,
        })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Channels of the CAM feature map (the last block).
    pub fn feature_channels(&self) -> usize {
        self.features.block_channels(BLOCKS - 1)
    }

    /// Feature map `(B, C, h, w)` and logits `(B, classes)`. `train` puts batch norm in
    /// training mode; `dropout_mask` (`(B, C)`, already scaled by `1/(1−p)`) is applied to the
    /// pooled features — the caller draws it from its seeded generator, as candle's CPU
    /// generator cannot be seeded.
    pub fn forward_t(
        &self,
        x: &Tensor,
        train: bool,
        dropout_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let feats = self
            .features
            .blocks(x, train)?
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("no blocks".into()))?;
        let mut pooled = feats.mean((2, 3))?;
        if let Some(m) = dropout_mask {
            pooled = (pooled * m)?;
        }
        let logits = self.head.forward(&pooled)?;
        Ok((feats, logits))
    }

    /// Logits of a last-block feature map (GAP → linear, no dropout).
    pub fn head_logits(&self, feats: &Tensor) -> Result<Tensor> {
        self.head.forward(&feats.mean((2, 3))?)
    }

    /// The head's class weights `(classes, C)`.
    pub fn head_weight(&self) -> &Tensor {
        self.head.weight()
    }

    /// Class activation maps `(B, classes, h, w)`: the head's class weights applied at every
    /// position of the feature map (plus bias), so that their spatial mean equals the logits.
    pub fn cam(&self, feats: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = feats.dims4()?;
        let flat = feats.reshape((b, c, h * w))?;
        let wt = self
            .head
            .weight()
            .unsqueeze(0)?
            .broadcast_as((b, self.classes, c))?
            .contiguous()?;
        let mut cam = wt.matmul(&flat)?;
        if let Some(bias) = self.head.bias() {
            cam = cam.broadcast_add(&bias.reshape((1, self.classes, 1))?)?;
        }
        cam.reshape((b, self.classes, h, w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn gap_of_cam_is_the_logits_for_every_arch() -> Result<()> {
        for arch in [
            Arch::Vgg16,
            Arch::Resnet18,
            Arch::Resnet50,
            Arch::EfficientnetLite0,
            Arch::EfficientnetLite2,
        ] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let spec = BackboneSpec {
                arch,
                batch_norm: true,
                width: 0.125,
                output_stride_8: false,
            };
            let m = Backbone::new(spec, 2, vb)?;
            let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu)?;
            let (f, logits) = m.forward_t(&x, false, None)?;
            assert_eq!(logits.dims(), [2, 2]);
            assert_eq!(f.dims()[1], m.feature_channels(), "{arch:?}");
            assert_eq!(f.dims()[2], 4, "{arch:?}: stride 16");
            let cam_mean = m.cam(&f)?.mean((2, 3))?;
            let diff = (cam_mean - &logits)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{arch:?}: {diff}");
            let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
            assert!(names.iter().any(|n| n == "head.weight"));
            // Freezing prefixes cover real parameters.
            for p in m.features.block_prefixes(2) {
                assert!(names.iter().any(|n| n.starts_with(&p)), "{arch:?}: {p}");
            }
        }
        Ok(())
    }
}
