//! Tensor operations candle lacks a backward pass for, written from differentiable pieces:
//! bilinear resizing (as two interpolation matrices, PyTorch's `align_corners=False`
//! convention) and the ResNet stem's 3×3 stride-2 max-pool with padding 1.

use candle_core::{DType, Device, Result, Tensor};

/// The `(out, in)` matrix of 1-D linear interpolation, PyTorch `align_corners=False`:
/// source index `(o + 0.5)·in/out − 0.5`, clamped at 0, neighbours `⌊s⌋` and `min(⌊s⌋+1, in−1)`.
pub fn interp_matrix(out: usize, inp: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * inp];
    let scale = inp as f64 / out as f64;
    for o in 0..out {
        let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        let l = (s - i0 as f64) as f32;
        m[o * inp + i0] += 1.0 - l;
        m[o * inp + i1] += l;
    }
    m
}

fn matrix(out: usize, inp: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(interp_matrix(out, inp), (out, inp), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)
}

/// Bilinear resize of `(B, C, H, W)` to `(B, C, h, w)`, differentiable.
pub fn resize_bilinear(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, ih, iw) = x.dims4()?;
    if (ih, iw) == (h, w) {
        return Ok(x.clone());
    }
    let aw = matrix(w, iw, x.dtype(), x.device())?.t()?.contiguous()?;
    let ah = matrix(h, ih, x.dtype(), x.device())?;
    let y = x.contiguous()?.broadcast_matmul(&aw)?; // (B, C, H, w)
    ah.broadcast_matmul(&y)
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
