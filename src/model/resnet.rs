//! ResNet-18 and ResNet-50 as in torchvision (v1.5: the stride of a bottleneck sits on its
//! 3×3 conv), with a channel-width multiplier and a GAP → dropout → linear head for CAM.
//!
//! Parameter names follow torchvision (`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.0`,
//! …) so a torchvision checkpoint converted to safetensors loads without remapping; the head is
//! `head.*` (torchvision's `fc.*` is not loaded). As in WSSS practice and torchvision's
//! `replace_stride_with_dilation=[False, False, True]`, `layer4` keeps stride 1 and dilates its
//! 3×3 convs by 2, so the CAM features have stride 16 like the VGG backbone's.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Conv2dConfig, Init, VarBuilder};

use super::conv::{relu, Conv2d};
use super::norm::BatchNorm;

/// Which ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// ResNet-18: basic blocks [2, 2, 2, 2].
    R18,
    /// ResNet-50: bottleneck blocks [3, 4, 6, 3].
    R50,
}

impl Depth {
    fn blocks(self) -> [usize; 4] {
        match self {
            Depth::R18 => [2, 2, 2, 2],
            Depth::R50 => [3, 4, 6, 3],
        }
    }
    fn expansion(self) -> usize {
        match self {
            Depth::R18 => 1,
            Depth::R50 => 4,
        }
    }
}

/// ResNet settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResNetConfig {
    /// Depth.
    pub depth: Depth,
    /// Channel width multiplier (1.0 = torchvision).
    pub width: f64,
    /// Dilate `layer3` too (output stride 8, for segmentation encoders).
    pub output_stride_8: bool,
}

impl ResNetConfig {
    fn ch(&self, c: usize) -> usize {
        ((c as f64 * self.width).round() as usize).max(1)
    }
    /// Channels of the output of `layer<i>` (1-based).
    pub fn layer_channels(&self, i: usize) -> usize {
        self.ch(64 << (i - 1)) * self.depth.expansion()
    }
    /// Channels of the stem (`conv1`).
    pub fn stem_channels(&self) -> usize {
        self.ch(64)
    }
}

/// A conv with torchvision's Kaiming-normal (fan-out) init and no bias.
pub(crate) fn conv(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    dilation: usize,
) -> Result<Conv2d> {
    let fan_out = (cout * k * k) as f64;
    let w = vb.get_with_hints(
        (cout, cin, k, k),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: (2.0 / fan_out).sqrt(),
        },
    )?;
    Ok(Conv2d::new(
        w,
        None,
        Conv2dConfig {
            padding: dilation * (k / 2),
            stride,
            dilation,
            groups: 1,
            cudnn_fwd_algo: None,
        },
    ))
}

pub(crate) fn bn(vb: VarBuilder, c: usize) -> Result<BatchNorm> {
    super::norm::batch_norm(c, 1e-5, vb)
}

#[derive(Debug, Clone)]
struct Block {
    convs: Vec<(Conv2d, BatchNorm)>,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vb: VarBuilder,
        depth: Depth,
        cin: usize,
        planes: usize,
        stride: usize,
        dilation: usize,
        needs_down: bool,
    ) -> Result<Self> {
        let e = depth.expansion();
        let convs = match depth {
            Depth::R18 => vec![
                (
                    conv(vb.pp("conv1"), cin, planes, 3, stride, dilation)?,
                    bn(vb.pp("bn1"), planes)?,
                ),
                (
                    conv(vb.pp("conv2"), planes, planes, 3, 1, dilation)?,
                    bn(vb.pp("bn2"), planes)?,
                ),
            ],
            Depth::R50 => vec![
                (
                    conv(vb.pp("conv1"), cin, planes, 1, 1, 1)?,
                    bn(vb.pp("bn1"), planes)?,
                ),
                (
                    conv(vb.pp("conv2"), planes, planes, 3, stride, dilation)?,
                    bn(vb.pp("bn2"), planes)?,
                ),
                (
                    conv(vb.pp("conv3"), planes, planes * e, 1, 1, 1)?,
                    bn(vb.pp("bn3"), planes * e)?,
                ),
            ],
        };
        let downsample = if needs_down {
            Some((
                conv(vb.pp("downsample.0"), cin, planes * e, 1, stride, 1)?,
                bn(vb.pp("downsample.1"), planes * e)?,
            ))
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        let n = self.convs.len();
        for (i, (c, b)) in self.convs.iter().enumerate() {
            y = b.forward_t(&c.forward(&y)?, train)?;
            if i + 1 < n {
                y = relu(&y)?;
            }
        }
        let id = match &self.downsample {
            Some((c, b)) => b.forward_t(&c.forward(x)?, train)?,
            None => x.clone(),
        };
        relu(&(y + id)?)
    }
}

/// ResNet feature extractor: stem and four layers.
#[derive(Debug, Clone)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    layers: Vec<Vec<Block>>,
    cfg: ResNetConfig,
}

impl ResNet {
    /// Build (or load, depending on the `VarBuilder`'s backend) the feature extractor.
    pub fn new(cfg: ResNetConfig, vb: VarBuilder) -> Result<Self> {
        let stem = cfg.stem_channels();
        let conv1 = {
            let fan_out = (stem * 49) as f64;
            let w = vb.pp("conv1").get_with_hints(
                (stem, 3, 7, 7),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: (2.0 / fan_out).sqrt(),
                },
            )?;
            Conv2d::new(
                w,
                None,
                Conv2dConfig {
                    padding: 3,
                    stride: 2,
                    ..Default::default()
                },
            )
        };
        let bn1 = bn(vb.pp("bn1"), stem)?;
        let mut cin = stem;
        let mut layers = Vec::new();
        let mut dilation = 1;
        for (li, n) in cfg.depth.blocks().into_iter().enumerate() {
            let planes = cfg.ch(64 << li);
            let dilate = li == 3 || (li == 2 && cfg.output_stride_8);
            let mut stride = if li == 0 { 1 } else { 2 };
            let prev_dilation = dilation;
            if dilate {
                dilation *= stride;
                stride = 1;
            }
            let out = planes * cfg.depth.expansion();
            let mut blocks = Vec::with_capacity(n);
            let lvb = vb.pp(format!("layer{}", li + 1));
            for b in 0..n {
                let (s, d, down) = if b == 0 {
                    (stride, prev_dilation, stride != 1 || cin != out)
                } else {
                    (1, dilation, false)
                };
                blocks.push(Block::new(
                    lvb.pp(b.to_string()),
                    cfg.depth,
                    cin,
                    planes,
                    s,
                    d,
                    down,
                )?);
                cin = out;
            }
            layers.push(blocks);
        }
        Ok(Self {
            conv1,
            bn1,
            layers,
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// Outputs of the stem (stride 2) and of `layer1`…`layer4` (strides 4, 8, 16, 16).
    pub fn blocks(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.blocks_from(x, 0, train)
    }

    /// Run from the input of block `start` (0 = the image) and return the outputs of blocks
    /// `start..5`.
    pub fn blocks_from(&self, x: &Tensor, start: usize, train: bool) -> Result<Vec<Tensor>> {
        let mut outs = Vec::with_capacity(5 - start.min(5));
        let mut x = x.clone();
        for b in start..5 {
            x = if b == 0 {
                relu(&self.bn1.forward_t(&self.conv1.forward(&x)?, train)?)?
            } else {
                if b == 1 {
                    x = super::ops::max_pool_3x3_s2(&x)?;
                }
                let mut y = x;
                for blk in &self.layers[b - 1] {
                    y = blk.forward_t(&y, train)?;
                }
                y
            };
            outs.push(x.clone());
        }
        Ok(outs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn torchvision_names_and_strides() -> Result<()> {
        for (depth, n_tensors, feat) in [(Depth::R18, 100usize, 512usize), (Depth::R50, 265, 2048)]
        {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let cfg = ResNetConfig {
                depth,
                width: 1.0,
                output_stride_8: false,
            };
            let _ = ResNet::new(cfg, vb)?;
            let names: std::collections::BTreeSet<String> =
                vm.data().lock().unwrap().keys().cloned().collect();
            // torchvision's state_dict minus `fc.*` and `num_batches_tracked`: one weight per
            // conv (20 in ResNet-18, 53 in ResNet-50) and 4 tensors per batch norm (as many).
            assert_eq!(names.len(), n_tensors);
            for k in [
                "conv1.weight",
                "bn1.running_var",
                "layer1.0.conv1.weight",
                "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.running_mean",
                "layer4.1.bn2.bias",
            ] {
                assert!(names.contains(k), "{depth:?}: {k}");
            }
            assert_eq!(
                names.contains("layer1.0.downsample.0.weight"),
                depth == Depth::R50
            );
            assert_eq!(names.contains("layer3.5.conv3.weight"), depth == Depth::R50);
            assert_eq!(cfg.layer_channels(4), feat);
        }
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        for os8 in [false, true] {
            let cfg = ResNetConfig {
                depth: Depth::R18,
                width: 0.125,
                output_stride_8: os8,
            };
            let m = ResNet::new(cfg, vb.pp(if os8 { "a" } else { "b" }))?;
            let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
            let sizes: Vec<usize> = m.blocks(&x, false)?.iter().map(|t| t.dims()[2]).collect();
            let expect = if os8 {
                vec![32, 16, 8, 8, 8]
            } else {
                vec![32, 16, 8, 4, 4]
            };
            assert_eq!(sizes, expect);
        }
        Ok(())
    }
}
