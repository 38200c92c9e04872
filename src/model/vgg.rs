//! VGG-16 as in torchvision (13 conv + ReLU, 5 max-pools; optionally batch norm after every
//! conv), with a channel-width multiplier, and a GAP → dropout → linear head for CAM.
//!
//! Parameter names follow torchvision's `features.<i>.*` numbering, where `<i>` counts the
//! modules of its `nn.Sequential` (conv, [bn], relu, …, pool), so a torchvision checkpoint
//! converted to safetensors loads without remapping. The head is `head.weight` / `head.bias`
//! (torchvision's three-layer `classifier.*` is not used: a GAP-linear head makes CAM exact).
//! The last max-pool is dropped so features keep stride 16, as WSSS methods do for finer CAMs.
//! Initialisation follows torchvision: Kaiming normal (fan-out, ReLU) for convs with zero
//! bias, N(0, 0.01) for the linear layer, BN weight 1 and bias 0.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Init, Linear, VarBuilder};

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
    /// Number of classes of the head.
    pub classes: usize,
    /// Dropout before the head.
    pub dropout: f32,
}

impl Default for VggConfig {
    fn default() -> Self {
        Self {
            batch_norm: false,
            width: 1.0,
            classes: 2,
            dropout: 0.5,
        }
    }
}

impl VggConfig {
    /// Channels of a conv after the width multiplier (at least 1).
    pub fn channels(&self, c: usize) -> usize {
        ((c as f64 * self.width).round() as usize).max(1)
    }

    /// Channels of the last conv block (the CAM features).
    pub fn feature_channels(&self) -> usize {
        self.channels(512)
    }
}

/// One layer of the feature extractor.
#[derive(Debug, Clone)]
enum Layer {
    Conv { conv: Conv2d, bn: Option<BatchNorm> },
    Pool,
}

/// VGG-16 backbone with a GAP-linear head.
#[derive(Debug, Clone)]
pub struct Vgg {
    layers: Vec<Layer>,
    head: Linear,
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

impl Vgg {
    /// Build (or load, depending on the `VarBuilder`'s backend) a VGG-16.
    pub fn new(cfg: VggConfig, vb: VarBuilder) -> Result<Self> {
        let fvb = vb.pp("features");
        let mut layers = Vec::new();
        let mut in_c = 3;
        let mut idx = 0;
        // The final pool is not applied (stride-16 features for CAM).
        for l in &VGG16[..VGG16.len() - 1] {
            match l {
                Some(c) => {
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
                            padding: 1,
                            ..Default::default()
                        },
                    );
                    let bn = if cfg.batch_norm {
                        Some(candle_nn::batch_norm(
                            out_c,
                            1e-5,
                            fvb.pp((idx + 1).to_string()),
                        )?)
                    } else {
                        None
                    };
                    layers.push(Layer::Conv { conv, bn });
                    idx += if cfg.batch_norm { 3 } else { 2 };
                    in_c = out_c;
                }
                None => {
                    layers.push(Layer::Pool);
                    idx += 1;
                }
            }
        }
        let hw = vb.pp("head").get_with_hints(
            (cfg.classes, in_c),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
        )?;
        let hb = vb
            .pp("head")
            .get_with_hints(cfg.classes, "bias", Init::Const(0.0))?;
        Ok(Self {
            layers,
            head: Linear::new(hw, Some(hb)),
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &VggConfig {
        &self.cfg
    }

    /// Outputs of the five conv blocks (after ReLU, before each block's pool); the last is the
    /// CAM feature map at stride 16.
    pub fn blocks(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut outs = Vec::with_capacity(5);
        let mut x = x.clone();
        for l in &self.layers {
            match l {
                Layer::Conv { conv, bn } => {
                    x = conv.forward(&x)?;
                    if let Some(bn) = bn {
                        x = bn.forward_t(&x, train)?;
                    }
                    x = x.relu()?;
                }
                Layer::Pool => {
                    outs.push(x.clone());
                    x = x.max_pool2d(2)?;
                }
            }
        }
        outs.push(x);
        Ok(outs)
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

    /// Logits of a feature map (GAP → linear, no dropout): what [`Vgg::cam`] decomposes.
    pub fn head_logits(&self, feats: &Tensor) -> Result<Tensor> {
        self.head.forward(&feats.mean((2, 3))?)
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
            .broadcast_as((b, self.cfg.classes, c))?
            .contiguous()?;
        let mut cam = wt.matmul(&flat)?;
        if let Some(bias) = self.head.bias() {
            cam = cam.broadcast_add(&bias.reshape((1, self.cfg.classes, 1))?)?;
        }
        cam.reshape((b, self.cfg.classes, h, w))
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
    fn shapes_names_and_cam_identity() -> Result<()> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = VggConfig {
            batch_norm: true,
            width: 0.125,
            classes: 2,
            dropout: 0.0,
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
        let (f, logits) = m.forward_t(&x, false, None)?;
        assert_eq!(logits.dims(), [2, 2]);
        // GAP of the CAM equals the logits (eval mode, no dropout).
        let cam_mean = m.cam(&f)?.mean((2, 3))?;
        let diff = (cam_mean - &logits)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{diff}");
        let names: std::collections::BTreeSet<String> =
            vm.data().lock().unwrap().keys().cloned().collect();
        assert!(names.contains("features.40.weight") && names.contains("features.41.running_var"));
        assert!(names.contains("head.weight"));
        Ok(())
    }
}
