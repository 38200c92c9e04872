//! DeepLab V3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic
//! Image Segmentation", ECCV 2018), in candle-nn.
//!
//! - Encoder: any [`Features`] backbone at output stride 16 or 8 (dilation in the last
//!   block(s)); its parameters keep the classifier's names under `encoder.`, so the encoder can
//!   start from the trained classifier or from torchvision weights.
//! - ASPP: a 1×1 conv, three 3×3 atrous convs at rates 6/12/18 (OS16; doubled for OS8) and
//!   image pooling, each with batch norm and ReLU, concatenated and projected by a 1×1 conv.
//! - Decoder: the stride-4 low-level features projected to 48 channels by a 1×1 conv, fused
//!   with the bilinearly upsampled ASPP output, refined by two 3×3 convs, classified by a 1×1
//!   conv, and upsampled bilinearly to the input size.
//!
//! Channel counts (256 in ASPP and decoder, 48 for the low-level projection) scale with the
//! width multiplier like the encoder's, or with `aspp_channels / 256` when that is set (a
//! narrow head on a full-width pretrained encoder). Upsampling uses [`resize_bilinear`] (candle's bilinear
//! op has no backward pass).

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::backbone::{BackboneSpec, Features};
use super::conv::{relu, Conv2d};
use super::norm::BatchNorm;
use super::ops::resize_bilinear;
use super::resnet::{bn, conv};
use crate::config::Arch;

/// Prefix of the encoder's parameter names (`encoder.…`); the ASPP's and decoder's are not
/// under it.
pub const ENCODER_PREFIX: &str = "encoder.";

/// DeepLab V3+ settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeepLabConfig {
    /// Encoder.
    pub encoder: BackboneSpec,
    /// Number of classes.
    pub classes: usize,
    /// Channels of the ASPP and the decoder; `None` = `256 × encoder width`.
    pub aspp_channels: Option<usize>,
}

impl DeepLabConfig {
    /// `c` (a channel count of the paper's 256-channel head) scaled to this head's width.
    fn ch(&self, c: usize) -> usize {
        let scale = match self.aspp_channels {
            Some(a) => a as f64 / 256.0,
            None => self.encoder.width,
        };
        ((c as f64 * scale).round() as usize).max(8)
    }
    /// Atrous rates of the ASPP.
    pub fn rates(&self) -> [usize; 3] {
        if self.encoder.output_stride_8 {
            [12, 24, 36]
        } else {
            [6, 12, 18]
        }
    }
    /// Block of the encoder read as stride-4 low-level features.
    pub fn low_level_block(&self) -> usize {
        match self.encoder.arch {
            Arch::Vgg16 => 2,
            Arch::Resnet18 | Arch::Resnet50 => 1,
            Arch::EfficientnetLite0 | Arch::EfficientnetLite1 | Arch::EfficientnetLite2 => 1,
        }
    }
}

#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(vb: VarBuilder, cin: usize, cout: usize, k: usize, dilation: usize) -> Result<Self> {
        Ok(Self {
            conv: conv(vb.pp("conv"), cin, cout, k, 1, dilation)?,
            bn: bn(vb.pp("bn"), cout)?,
        })
    }
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        relu(&self.bn.forward_t(&self.conv.forward(x)?, train)?)
    }
}

/// The DeepLab V3+ network.
#[derive(Debug, Clone)]
pub struct DeepLab {
    /// The encoder (names under `encoder.`).
    pub encoder: Features,
    aspp: Vec<ConvBn>,
    pool: ConvBn,
    project: ConvBn,
    low: ConvBn,
    refine: [ConvBn; 2],
    classifier: Conv2d,
    cfg: DeepLabConfig,
}

impl DeepLab {
    /// Build (or load) a DeepLab V3+.
    pub fn new(cfg: DeepLabConfig, vb: VarBuilder) -> Result<Self> {
        let encoder = Features::new(cfg.encoder, vb.pp(ENCODER_PREFIX.trim_end_matches('.')))?;
        let high = encoder.block_channels(4);
        let low_c = encoder.block_channels(cfg.low_level_block());
        let a = cfg.ch(256);
        let avb = vb.pp("aspp");
        let mut aspp = vec![ConvBn::new(avb.pp("0"), high, a, 1, 1)?];
        for (i, r) in cfg.rates().into_iter().enumerate() {
            aspp.push(ConvBn::new(avb.pp((i + 1).to_string()), high, a, 3, r)?);
        }
        let pool = ConvBn::new(avb.pp("pool"), high, a, 1, 1)?;
        let project = ConvBn::new(avb.pp("project"), 5 * a, a, 1, 1)?;
        let l = cfg.ch(48);
        let dvb = vb.pp("decoder");
        let low = ConvBn::new(dvb.pp("low"), low_c, l, 1, 1)?;
        let refine = [
            ConvBn::new(dvb.pp("refine.0"), a + l, a, 3, 1)?,
            ConvBn::new(dvb.pp("refine.1"), a, a, 3, 1)?,
        ];
        let w = dvb.pp("classifier").get_with_hints(
            (cfg.classes, a, 1, 1),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
        )?;
        let b = dvb
            .pp("classifier")
            .get_with_hints(cfg.classes, "bias", Init::Const(0.0))?;
        Ok(Self {
            encoder,
            aspp,
            pool,
            project,
            low,
            refine,
            classifier: Conv2d::new(w, Some(b), Default::default()),
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &DeepLabConfig {
        &self.cfg
    }

    /// Logits `(B, classes, H, W)` at the input's size.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let blocks = self.encoder.blocks(x, train)?;
        let high = &blocks[4];
        let low = &blocks[self.cfg.low_level_block()];
        let (_, _, hh, hw) = high.dims4()?;
        let mut branches = Vec::with_capacity(5);
        for b in &self.aspp {
            branches.push(b.forward_t(high, train)?);
        }
        let pooled = high.mean_keepdim(3)?.mean_keepdim(2)?;
        // Image pooling: batch norm over a 1×1 map needs more than one image to train on.
        let p = self.pool.conv.forward(&pooled)?;
        let p = relu(&self.pool.bn.forward_t(&p, train && x.dim(0)? > 1)?)?;
        branches.push(
            p.broadcast_as((p.dim(0)?, p.dim(1)?, hh, hw))?
                .contiguous()?,
        );
        let y = self.project.forward_t(&Tensor::cat(&branches, 1)?, train)?;
        let l = self.low.forward_t(low, train)?;
        let (_, _, lh, lw) = l.dims4()?;
        let y = resize_bilinear(&y, lh, lw)?;
        let mut y = Tensor::cat(&[y, l], 1)?;
        for r in &self.refine {
            y = r.forward_t(&y, train)?;
        }
        resize_bilinear(&self.classifier.forward(&y)?, h, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn spec(arch: Arch, os8: bool) -> BackboneSpec {
        BackboneSpec {
            arch,
            batch_norm: true,
            width: 0.0625,
            output_stride_8: os8,
        }
    }

    #[test]
    fn output_is_input_sized_at_os16_and_os8() -> Result<()> {
        for arch in [
            Arch::Vgg16,
            Arch::Resnet18,
            Arch::Resnet50,
            Arch::EfficientnetLite0,
        ] {
            for os8 in [false, true] {
                let vm = VarMap::new();
                let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
                let m = DeepLab::new(
                    DeepLabConfig {
                        encoder: spec(arch, os8),
                        classes: 2,
                        aspp_channels: None,
                    },
                    vb,
                )?;
                for (h, w) in [(64, 64), (96, 80), (50, 70)] {
                    let x = Tensor::zeros((2, 3, h, w), DType::F32, &Device::Cpu)?;
                    let blocks = m.encoder.blocks(&x, false)?;
                    let stride = if os8 { 8 } else { 16 };
                    // VGG's pools floor, ResNet's padded and EfficientNet's "SAME" strides ceil.
                    let side = blocks[4].dim(2)?;
                    assert!(
                        (h / stride..=h.div_ceil(stride)).contains(&side),
                        "{arch:?} os8={os8} {h}: {side}"
                    );
                    let y = m.forward_t(&x, false)?;
                    assert_eq!(y.dims(), [2, 2, h, w], "{arch:?} os8={os8}");
                }
                let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
                assert!(names.iter().any(|n| n.starts_with("encoder.")));
                // The head is 256 × width wide unless `aspp_channels` says otherwise.
                let d = vm.data().lock().unwrap();
                assert_eq!(d["aspp.project.conv.weight"].dims()[0], 16, "{arch:?}");
                drop(d);
                let vm2 = VarMap::new();
                let narrow = DeepLab::new(
                    DeepLabConfig {
                        encoder: spec(arch, os8),
                        classes: 2,
                        aspp_channels: Some(64),
                    },
                    VarBuilder::from_varmap(&vm2, DType::F32, &Device::Cpu),
                )?;
                let d = vm2.data().lock().unwrap();
                assert_eq!(d["aspp.project.conv.weight"].dims(), [64, 320, 1, 1]);
                assert_eq!(d["decoder.low.conv.weight"].dims()[0], 12);
                drop(d);
                let y = narrow.forward_t(
                    &Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?,
                    false,
                )?;
                assert_eq!(y.dims(), [1, 2, 64, 64]);
                assert!(names.iter().any(|n| n == "decoder.classifier.weight"));
            }
        }
        Ok(())
    }
}
