//! Tensor operations candle lacks a backward pass for: bilinear resizing (PyTorch's
//! `align_corners=False` convention; on the CPU in f32 one op over `wsss_kernels::resize`'s
//! two-tap passes, elsewhere two interpolation matrices) and the ResNet stem's 3×3 stride-2
//! max-pool with padding 1, written from differentiable pieces.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

use super::cpu_op::contiguous_f32;

/// The `(out, in)` matrix of 1-D linear interpolation, PyTorch `align_corners=False`: row `o`
/// holds the two taps of `wsss_kernels::resize::taps` (source index `(o + 0.5)·in/out − 0.5`,
/// clamped at 0, neighbours `⌊s⌋` and `min(⌊s⌋+1, in−1)`), so both resize paths share weights.
pub fn interp_matrix(out: usize, inp: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * inp];
    for (o, (i0, i1, a, b)) in wsss_kernels::resize::taps(out, inp).into_iter().enumerate() {
        m[o * inp + i0] += a;
        m[o * inp + i1] += b;
    }
    m
}

fn matrix(out: usize, inp: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(interp_matrix(out, inp), (out, inp), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)
}

/// Bilinear resize of `(B, C, H, W)` to `(B, C, h, w)`, differentiable: on the CPU in f32 one
/// op whose forward and backward are the kernels' two-tap passes (DeepLab V3+'s upsampling of
/// the ASPP output and of the logits); elsewhere the product with the two interpolation
/// matrices ([`interp_matrix`]). Both follow PyTorch's `align_corners=False`; they agree to a
/// few ulps (the matrix product adds its terms in another order).
pub fn resize_bilinear(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, ih, iw) = x.dims4()?;
    if (ih, iw) == (h, w) {
        return Ok(x.clone());
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && h > 0 && w > 0 && ih > 0 && iw > 0 {
        let op = Resize {
            from: (ih, iw),
            to: (h, w),
        };
        let x = x.contiguous()?;
        return if x.track_op() {
            x.apply_op1(op)
        } else {
            x.apply_op1_no_bwd(&op)
        };
    }
    resize_by_matrices(x, h, w)
}

/// [`resize_bilinear`] as two interpolation-matrix products (every device and dtype).
pub fn resize_by_matrices(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, ih, iw) = x.dims4()?;
    let aw = matrix(w, iw, x.dtype(), x.device())?.t()?.contiguous()?;
    let ah = matrix(h, ih, x.dtype(), x.device())?;
    let y = x.contiguous()?.broadcast_matmul(&aw)?; // (B, C, H, w)
    ah.broadcast_matmul(&y)
}

/// Bilinear resize `from` → `to` of every plane (CPU, f32); its backward is [`ResizeGrad`].
struct Resize {
    from: (usize, usize),
    to: (usize, usize),
}

impl CustomOp1 for Resize {
    fn name(&self) -> &'static str {
        "resize-bilinear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, _, _) = l.shape().dims4()?;
        let y = wsss_kernels::resize::bilinear(contiguous_f32(s, l)?, b * c, self.from, self.to);
        Ok((
            CpuStorage::F32(y),
            Shape::from((b, c, self.to.0, self.to.1)),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = ResizeGrad {
            from: self.from,
            to: self.to,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// The adjoint of [`Resize`]: output gradient `(B, C, to)` → input gradient `(B, C, from)`.
struct ResizeGrad {
    from: (usize, usize),
    to: (usize, usize),
}

impl CustomOp1 for ResizeGrad {
    fn name(&self) -> &'static str {
        "resize-bilinear-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, _, _) = l.shape().dims4()?;
        let g = contiguous_f32(s, l)?;
        let dx = wsss_kernels::resize::bilinear_grad(g, b * c, self.from, self.to);
        Ok((
            CpuStorage::F32(dx),
            Shape::from((b, c, self.from.0, self.from.1)),
        ))
    }
}

/// 3×3 max-pool, stride 2, padding 1, of a non-negative (post-ReLU) map, differentiable
/// (candle's max-pool has no backward when kernel ≠ stride). Zero padding equals −∞ padding
/// because the input is ≥ 0.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    // Pad so that every window start 2·i + d (d < 3) and the stride-2 split below fit.
    let xp = x
        .pad_with_zeros(2, 1, 2 * ho + 2 - (h + 1))?
        .pad_with_zeros(3, 1, 2 * wo + 2 - (w + 1))?;
    let wp = xp.dim(3)?;
    let mut out: Option<Tensor> = None;
    for di in 0..3 {
        let rows = xp
            .narrow(2, di, 2 * ho)?
            .reshape((b, c, ho, 2, wp))?
            .narrow(3, 0, 1)?
            .squeeze(3)?;
        for dj in 0..3 {
            let v = rows
                .narrow(3, dj, 2 * wo)?
                .reshape((b, c, ho, wo, 2))?
                .narrow(4, 0, 1)?
                .squeeze(4)?;
            out = Some(match out {
                None => v,
                Some(o) => o.maximum(&v)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("empty pool".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn resize_matches_candles_forward_and_has_a_gradient() {
        let x = Tensor::arange(0f32, 2.0 * 5.0 * 7.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 5, 7))
            .unwrap()
            .sin()
            .unwrap();
        for (h, w) in [(10, 14), (13, 9), (3, 4), (5, 7)] {
            let ours = resize_bilinear(&x, h, w).unwrap();
            let theirs = x.upsample_bilinear2d(h, w, false).unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-5, "{h}x{w}");
        }
        // Each output pixel's weights sum to 1, so the gradient of the sum is the column sums.
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let g = resize_bilinear(v.as_tensor(), 10, 14)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let total = g.get(v.as_tensor()).unwrap().sum_all().unwrap();
        assert!((total.to_scalar::<f32>().unwrap() - 2.0 * 140.0).abs() < 1e-3);
    }

    /// The CPU op equals the interpolation-matrix products, forward and gradient (of a random
    /// linear functional), up- and downsampling, non-square, with a clamped edge.
    #[test]
    fn resize_op_equals_the_matrix_products_and_their_gradient() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 7, 5), &dev).unwrap();
        for (h, w) in [(16, 9), (3, 2), (7, 12), (1, 1), (29, 5)] {
            let v = candle_core::Var::from_tensor(&x).unwrap();
            let probe = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev).unwrap();
            let run = |f: &dyn Fn(&Tensor) -> Tensor| {
                let y = f(v.as_tensor());
                let g = (&y * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                (y, g.get(v.as_tensor()).unwrap().clone())
            };
            let (y1, g1) = run(&|t| resize_bilinear(t, h, w).unwrap());
            let (y2, g2) = run(&|t| resize_by_matrices(t, h, w).unwrap());
            assert_eq!(y1.dims(), [2, 3, h, w]);
            assert!(max_diff(&y1, &y2) < 1e-5, "{h}x{w} forward");
            assert!(max_diff(&g1, &g2) < 1e-4, "{h}x{w} gradient");
        }
    }

    #[test]
    fn stem_pool_by_hand() {
        // 5×5 input 0..25: windows centred on even positions, padding ignored.
        let x = Tensor::arange(0f32, 25.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 5, 5))
            .unwrap();
        let y = max_pool_3x3_s2(&x).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [6.0, 8.0, 9.0, 16.0, 18.0, 19.0, 21.0, 23.0, 24.0]
        );
        let x = Tensor::ones((1, 1, 4, 6), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(max_pool_3x3_s2(&x).unwrap().dims(), [1, 1, 2, 3]);
        let ramp = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4, 6))
            .unwrap();
        let v = candle_core::Var::from_tensor(&ramp).unwrap();
        let g = max_pool_3x3_s2(v.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // Gradient lands on the 6 window maxima, once each.
        let gv = g
            .get(v.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(gv, 6.0);
    }
}
