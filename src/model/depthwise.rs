//! Depthwise convolution (`groups = channels`) as a layer: the CPU kernels of
//! `wsss_kernels::depthwise` wrapped as candle custom ops (forward, `∂x`, `∂W`), candle's
//! grouped conv elsewhere (CUDA, other dtypes).
//!
//! Why its own op: candle runs a grouped conv as one dense conv per group (`chunk` → conv →
//! `cat`), i.e. hundreds of tiny convs per MBConv block, and its backward through them.
//! Padding is TensorFlow's "SAME" (asymmetric, as the EfficientNet-Lite checkpoints were
//! trained) or symmetric (PyTorch's).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor};
use wsss_kernels::depthwise::{self, DwGeom};

use super::cpu_op::contiguous_f32;

/// How a depthwise layer pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// TensorFlow's "SAME": output `⌈n / stride⌉`, the odd padding row/column at the
    /// bottom/right.
    Same,
    /// The same number of zeros on every side.
    Symmetric(usize),
}

/// A depthwise conv layer: weight `(C, 1, k, k)`, no bias.
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    weight: Tensor,
    stride: usize,
    dilation: usize,
    padding: Padding,
}

impl DepthwiseConv2d {
    /// A layer from its weight `(C, 1, k, k)`.
    pub fn new(weight: Tensor, stride: usize, dilation: usize, padding: Padding) -> Self {
        Self {
            weight,
            stride,
            dilation,
            padding,
        }
    }

    /// The weight `(C, 1, k, k)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    fn geom(&self, x: &Tensor) -> Result<DwGeom> {
        let (b, c, h, w) = x.dims4()?;
        let (wc, one, kh, kw) = self.weight.dims4()?;
        if wc != c || one != 1 || kh != kw {
            candle_core::bail!(
                "depthwise conv: input has {c} channels, weight is {:?} (expected ({c}, 1, k, k))",
                self.weight.dims()
            );
        }
        let g = match self.padding {
            Padding::Same => DwGeom::same((b, c, h, w), kh, self.stride, self.dilation),
            Padding::Symmetric(p) => {
                DwGeom::symmetric((b, c, h, w), kh, self.stride, self.dilation, p)
            }
        };
        if !g.valid() || g.ho == 0 || g.wo == 0 {
            candle_core::bail!("depthwise conv: {h}×{w} input does not fit {g:?}");
        }
        Ok(g)
    }

    /// candle's grouped conv on an explicitly padded input (the reference and the GPU path).
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.geom(x)?;
        let span = self.dilation * (g.k - 1) + 1;
        let pad_b = ((g.ho - 1) * g.stride + span).saturating_sub(g.h + g.pad_t);
        let pad_r = ((g.wo - 1) * g.stride + span).saturating_sub(g.w + g.pad_l);
        let x = x
            .pad_with_zeros(2, g.pad_t, pad_b)?
            .pad_with_zeros(3, g.pad_l, pad_r)?;
        let y = x.conv2d(&self.weight, 0, self.stride, self.dilation, g.c)?;
        // Padding beyond what the last output needs is cropped by conv's floor division.
        y.narrow(2, 0, g.ho)?.narrow(3, 0, g.wo)
    }
}

impl Module for DepthwiseConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let cpu =
            x.device().is_cpu() && x.dtype() == DType::F32 && self.weight.dtype() == DType::F32;
        if !cpu {
            return self.forward_candle(x);
        }
        let g = self.geom(x)?;
        let (x, w) = (x.contiguous()?, self.weight.contiguous()?);
        if x.track_op() || w.track_op() {
            x.apply_op2(&w, Op(g, Pass::Forward))
        } else {
            x.apply_op2_no_bwd(&w, &Op(g, Pass::Forward))
        }
    }
}

/// Which of the three depthwise kernels an op runs.
#[derive(Clone, Copy)]
enum Pass {
    /// `y` from `(x, w)`.
    Forward,
    /// `∂x` from `(∂y, w)`.
    InputGrad,
    /// `∂W` from `(∂y, x)`.
    WeightGrad,
}

/// One depthwise kernel as a candle op; only [`Pass::Forward`] is differentiable.
struct Op(DwGeom, Pass);

impl CustomOp2 for Op {
    fn name(&self) -> &'static str {
        match self.1 {
            Pass::Forward => "depthwise-conv2d",
            Pass::InputGrad => "depthwise-conv2d-input-grad",
            Pass::WeightGrad => "depthwise-conv2d-weight-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (a, b) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let (out, shape) = match self.1 {
            Pass::Forward => (depthwise::forward(&g, a, b), (g.b, g.c, g.ho, g.wo)),
            Pass::InputGrad => (depthwise::backward_input(&g, a, b), (g.b, g.c, g.h, g.w)),
            Pass::WeightGrad => (depthwise::backward_weight(&g, a, b), (g.c, 1, g.k, g.k)),
        };
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !matches!(self.1, Pass::Forward) {
            candle_core::bail!("{}: no backward", self.name());
        }
        let grad = grad.contiguous()?;
        let dx = match x.track_op() {
            true => Some(grad.apply_op2_no_bwd(w, &Op(self.0, Pass::InputGrad))?),
            false => None,
        };
        let dw = match w.track_op() {
            true => Some(grad.apply_op2_no_bwd(x, &Op(self.0, Pass::WeightGrad))?),
            false => None,
        };
        Ok((dx, dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{rand_t, rel_err};
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    /// Output and both gradients equal candle's grouped conv (on the explicitly padded
    /// input, at stride 1 then subsampled — candle's strided conv backward fails on some
    /// shapes) over random shapes, kernels 3/5, strides 1–2, dilations 1–3, both paddings.
    #[test]
    fn depthwise_matches_candles_grouped_conv_and_its_gradients() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        for case in 0..60 {
            let b: usize = rng.random_range(1..4);
            let c: usize = rng.random_range(1..7);
            let k: usize = [3, 5][rng.random_range(0..2)];
            let stride: usize = rng.random_range(1..3);
            let dil: usize = rng.random_range(1..4);
            let padding = if case % 2 == 0 {
                Padding::Same
            } else {
                Padding::Symmetric(rng.random_range(0..=dil * (k / 2)))
            };
            let min = dil * (k - 1) + 1;
            let h = rng.random_range(min..min + 9);
            let w = rng.random_range(min..min + 9);
            let x = Var::from_tensor(&rand_t(&mut rng, &[b, c, h, w])).unwrap();
            let wt = Var::from_tensor(&rand_t(&mut rng, &[c, 1, k, k])).unwrap();
            let ours_layer = DepthwiseConv2d::new(wt.as_tensor().clone(), stride, dil, padding);
            let ours = ours_layer.forward(x.as_tensor()).unwrap();
            // Reference: candle's grouped conv at stride 1 on the padded input, subsampled.
            let dense = DepthwiseConv2d::new(wt.as_tensor().clone(), 1, dil, Padding::Symmetric(0));
            let g = ours_layer.geom(x.as_tensor()).unwrap();
            let span = dil * (k - 1) + 1;
            let pb = ((g.ho - 1) * stride + span).saturating_sub(h + g.pad_t);
            let pr = ((g.wo - 1) * stride + span).saturating_sub(w + g.pad_l);
            let xp = x
                .as_tensor()
                .pad_with_zeros(2, g.pad_t, pb)
                .unwrap()
                .pad_with_zeros(3, g.pad_l, pr)
                .unwrap();
            let full = dense.forward_candle(&xp).unwrap();
            let pick = |n: usize| {
                let idx: Vec<u32> = (0..n).map(|i| (i * stride) as u32).collect();
                Tensor::new(idx, &Device::Cpu).unwrap()
            };
            let reference = full
                .index_select(&pick(g.ho), 2)
                .unwrap()
                .index_select(&pick(g.wo), 3)
                .unwrap();
            assert_eq!(ours.dims(), reference.dims(), "case {case}: {g:?}");
            assert!(rel_err(&ours, &reference) < 1e-5, "case {case}: forward");
            // The GPU path (candle's grouped conv with stride) agrees too.
            let candle_path = ours_layer.forward_candle(x.as_tensor()).unwrap();
            assert!(
                rel_err(&candle_path, &reference) < 1e-5,
                "case {case}: candle path"
            );
            let p = rand_t(&mut rng, ours.dims());
            let g1 = (&ours * &p).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&reference * &p)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("input", &x), ("weight", &wt)] {
                let (a, r) = (
                    g1.get(v.as_tensor()).unwrap(),
                    g2.get(v.as_tensor()).unwrap(),
                );
                assert!(rel_err(a, r) < 1e-4, "case {case} {g:?}: {name} gradient");
            }
        }
    }

    /// A constant input and all-ones 3×3 weight: interior outputs are 9, "SAME" stride-2
    /// corners count the taps inside the image (worked out by hand for a 4×4 input: output
    /// 2×2, padding 0 above/left and 1 below/right, so the last row and column see 2×3 and
    /// 2×2 taps).
    #[test]
    fn same_padding_counts_taps_by_hand() {
        let x = Tensor::ones((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let y = DepthwiseConv2d::new(w, 2, 1, Padding::Same)
            .forward(&x)
            .unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![9.0, 6.0, 6.0, 4.0]
        );
    }
}
