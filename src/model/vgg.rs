//! VGG-16's feature extractor as in torchvision (13 conv + ReLU, 5 max-pools; optionally batch
//! norm after every conv), with a channel-width multiplier.
//!
//! Parameter names follow torchvision's `features.<i>.*` numbering, where `<i>` counts the
//! modules of its `nn.Sequential` (conv, [bn], relu, …, pool), so a torchvision checkpoint
//! converted to safetensors loads without remapping (torchvision's three-layer `classifier.*`
//! is not used: [`super::backbone`] puts a GAP-linear head on top, which makes CAM exact).
//! The last max-pool is dropped so features keep stride 16, as WSSS methods do for finer CAMs.
//! Initialisation follows torchvision: Kaiming normal (fan-out, ReLU) for convs with zero
//! bias, BN weight 1 and bias 0.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Conv2dConfig, Init, VarBuilder};

use super::conv::{self, Conv2d};
use super::norm::BatchNorm;

/// torchvision's VGG-16 layout ("D"): channel counts, `None` = max-pool.
pub const VGG16: [Option<usize>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

/// VGG settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VggConfig {
    /// Batch norm after every conv (VGG-16-BN).
    pub batch_norm: bool,
    /// Channel width multiplier (1.0 = torchvision).
    pub width: f64,
    /// Output stride 8: skip the pool before the last block and dilate its convs by 2.
    pub output_stride_8: bool,
}

impl Default for VggConfig {
    fn default() -> Self {
        Self {
            batch_norm: false,
            width: 1.0,
            output_stride_8: false,
        }
    }
}

impl VggConfig {
    /// Channels of a conv after the width multiplier (at least 1).
    pub fn channels(&self, c: usize) -> usize {
        ((c as f64 * self.width).round() as usize).max(1)
    }

    /// Channels of the output of block `b` (0-based, 0..5).
    pub fn block_channels(&self, b: usize) -> usize {
        self.channels([64, 128, 256, 512, 512][b.min(4)])
    }

    /// Channels of the last conv block (the CAM features).
    pub fn feature_channels(&self) -> usize {
        self.channels(512)
    }
}

/// VGG-16 feature extractor (torchvision's `features`, without the last max-pool).
#[derive(Debug, Clone)]
pub struct Vgg {
    blocks: Vec<Vec<(Conv2d, Option<BatchNorm>)>>,
    cfg: VggConfig,
}

/// torchvision indices of the conv modules in `features` (and of their BN when present).
pub fn conv_indices(batch_norm: bool) -> Vec<usize> {
    let mut idx = 0;
    let mut out = Vec::new();
    for l in VGG16 {
        match l {
            Some(_) => {
                out.push(idx);
                idx += if batch_norm { 3 } else { 2 };
            }
            None => idx += 1,
        }
    }
    out
}

/// torchvision `features.<i>.` prefixes of the parameters of the first `n` blocks.
pub fn block_prefixes(batch_norm: bool, n: usize) -> Vec<String> {
    let idx = conv_indices(batch_norm);
    let mut out = Vec::new();
    let (mut conv, mut block) = (0, 0);
    for l in VGG16 {
        match l {
            Some(_) => {
                if block < n {
                    out.push(format!("features.{}.", idx[conv]));
                    if batch_norm {
                        out.push(format!("features.{}.", idx[conv] + 1));
                    }
                }
                conv += 1;
            }
            None => block += 1,
        }
    }
    out
}

impl Vgg {
    /// Build (or load, depending on the `VarBuilder`'s backend) a VGG-16 feature extractor;
    /// `vb` is the model root (parameters go under `features.`).
    pub fn new(cfg: VggConfig, vb: VarBuilder) -> Result<Self> {
        let fvb = vb.pp("features");
        let mut blocks = vec![Vec::new()];
        let mut in_c = 3;
        let mut idx = 0;
        // The final pool is not applied (stride-16 features for CAM).
        for l in &VGG16[..VGG16.len() - 1] {
            match l {
                Some(c) => {
                    let dilation = if cfg.output_stride_8 && blocks.len() == 5 {
                        2
                    } else {
                        1
                    };
                    let out_c = cfg.channels(*c);
                    let fan_out = (out_c * 9) as f64;
                    let w = fvb.pp(idx.to_string()).get_with_hints(
                        (out_c, in_c, 3, 3),
                        "weight",
                        Init::Randn {
                            mean: 0.0,
                            stdev: (2.0 / fan_out).sqrt(),
                        },
                    )?;
                    let b =
                        fvb.pp(idx.to_string())
                            .get_with_hints(out_c, "bias", Init::Const(0.0))?;
                    let conv = Conv2d::new(
                        w,
                        Some(b),
                        Conv2dConfig {
                            padding: dilation,
                            dilation,
                            ..Default::default()
                        },
                    );
                    let bn = if cfg.batch_norm {
                        Some(super::norm::batch_norm(
                            out_c,
                            1e-5,
                            fvb.pp((idx + 1).to_string()),
                        )?)
                    } else {
                        None
                    };
                    if let Some(last) = blocks.last_mut() {
                        last.push((conv, bn));
                    }
                    idx += if cfg.batch_norm { 3 } else { 2 };
                    in_c = out_c;
                }
                None => {
                    blocks.push(Vec::new());
                    idx += 1;
                }
            }
        }
        Ok(Self { blocks, cfg })
    }

    /// The settings.
    pub fn config(&self) -> &VggConfig {
        &self.cfg
    }

    /// Outputs of the five conv blocks (after ReLU, before each block's pool; strides 1, 2,
    /// 4, 8, 16); the last is the CAM feature map.
    pub fn blocks(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.blocks_from(x, 0, train)
    }

    /// Run from the output of block `start − 1` (the image when `start` is 0) and return the
    /// outputs of blocks `start..5`.
    pub fn blocks_from(&self, x: &Tensor, start: usize, train: bool) -> Result<Vec<Tensor>> {
        let mut outs = Vec::with_capacity(5);
        let mut x = x.clone();
        for (b, block) in self.blocks.iter().enumerate().skip(start) {
            if b > 0 && !(b == 4 && self.cfg.output_stride_8) {
                x = conv::max_pool2(&x)?;
            }
            for (layer, bn) in block {
                x = match bn {
                    Some(bn) => conv::relu(&bn.forward_t(&layer.forward(&x)?, train)?)?,
                    None => layer.forward_relu(&x)?,
                };
            }
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
    fn torchvision_conv_indices() {
        assert_eq!(
            conv_indices(false),
            [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
        );
        assert_eq!(
            conv_indices(true),
            [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
        );
    }

    #[test]
    fn shapes_names_and_resumable_blocks() -> Result<()> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = VggConfig {
            batch_norm: true,
            width: 0.125,
            output_stride_8: false,
        };
        let m = Vgg::new(cfg, vb)?;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu)?;
        let blocks = m.blocks(&x, false)?;
        let dims: Vec<Vec<usize>> = blocks.iter().map(|b| b.dims().to_vec()).collect();
        assert_eq!(
            dims,
            vec![
                vec![2, 8, 64, 64],
                vec![2, 16, 32, 32],
                vec![2, 32, 16, 16],
                vec![2, 64, 8, 8],
                vec![2, 64, 4, 4]
            ]
        );
        // Resuming from block 3's input gives the same last block.
        let rest = m.blocks_from(&blocks[2], 3, false)?;
        let diff = (&rest[1] - &blocks[4])?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let names: std::collections::BTreeSet<String> =
            vm.data().lock().unwrap().keys().cloned().collect();
        assert!(names.contains("features.40.weight") && names.contains("features.41.running_var"));
        assert_eq!(names.len(), 13 * 6);
        assert_eq!(
            block_prefixes(false, 2),
            ["features.0.", "features.2.", "features.5.", "features.7."]
        );
        Ok(())
    }
}
