//! A 2-D convolution whose forward and both backward products run as large GEMMs on the CPU.
//!
//! candle's CPU conv backward computes the input gradient with a direct transposed-conv loop
//! and the weight gradient as a conv with a 9-column GEMM, ~10× the forward's time. Here a
//! conv is `im2col` (a custom op with its exact adjoint `col2im` as backward) followed by a
//! matrix product, so autograd differentiates the product with two big GEMMs
//! (`∂cols = ∂out · W`, `∂W = ∂outᵀ · cols`) and `col2im` scatters `∂cols` back, in parallel
//! over channel planes. Layout: `cols` is `(B, C·kh·kw, L)` with rows `(c, ky, kx)` — the
//! order of `weight.reshape(O, C·kh·kw)` — and `L = H_out·W_out` positions, so each row is
//! filled by contiguous copies (stride 1) and `W · cols` comes out in NCHW without a transpose.
//! Tensors that need no gradient (the input image) never get a `col2im`.
//!
//! Used for `f32` on the CPU with `groups = 1`; other cases (CUDA, f16, grouped) use candle's
//! conv, so the GPU path keeps cuDNN.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::Conv2dConfig;
use rayon::prelude::*;

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geom {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    dil: usize,
}

impl Geom {
    fn out(&self) -> (usize, usize) {
        let o = |n: usize, k: usize| (n + 2 * self.pad - self.dil * (k - 1) - 1) / self.stride + 1;
        (o(self.h, self.kh), o(self.w, self.kw))
    }
    fn ck(&self) -> usize {
        self.c * self.kh * self.kw
    }
}

struct Im2Col(Geom);
struct Col2Im(Geom);

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("im2col/col2im need a contiguous input"),
    }
}

/// Output positions `ox` whose input column `ox·stride + off` lies in `[0, w)`.
fn valid_range(off: isize, stride: usize, w: usize, wo: usize) -> (usize, usize) {
    let s = stride as isize;
    // smallest ox with ox·s + off ≥ 0, and first ox with ox·s + off ≥ w
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    let hi = if (w as isize) - off <= 0 {
        0
    } else {
        ((w as isize - off) + s - 1) / s
    };
    let lo = (lo.max(0) as usize).min(wo);
    (lo, (hi.max(0) as usize).min(wo).max(lo))
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = contiguous_f32(s, l)?;
        let (ho, wo) = g.out();
        let l_out = ho * wo;
        let kk = g.kh * g.kw;
        let mut cols = vec![0f32; g.b * g.ck() * l_out];
        // One (b, c) per task: its kh·kw rows of L values are contiguous in `cols`.
        cols.par_chunks_mut(kk * l_out)
            .enumerate()
            .for_each(|(bc, out)| {
                let plane = &x[bc * g.h * g.w..(bc + 1) * g.h * g.w];
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let row = &mut out[(ky * g.kw + kx) * l_out..][..l_out];
                        let xoff = (kx * g.dil) as isize - g.pad as isize;
                        let (lo, hi) = valid_range(xoff, g.stride, g.w, wo);
                        for oy in 0..ho {
                            let iy = (oy * g.stride + ky * g.dil) as isize - g.pad as isize;
                            if iy < 0 || iy as usize >= g.h || lo >= hi {
                                continue; // stays zero
                            }
                            let src = &plane[iy as usize * g.w..][..g.w];
                            let dst = &mut row[oy * wo..][..wo];
                            if g.stride == 1 {
                                let i0 = (lo as isize + xoff) as usize;
                                dst[lo..hi].copy_from_slice(&src[i0..i0 + (hi - lo)]);
                            } else {
                                for ox in lo..hi {
                                    dst[ox] =
                                        src[(ox as isize * g.stride as isize + xoff) as usize];
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(cols), Shape::from((g.b, g.ck(), l_out))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let cols = contiguous_f32(s, l)?;
        let (ho, wo) = g.out();
        let l_out = ho * wo;
        let kk = g.kh * g.kw;
        let mut x = vec![0f32; g.b * g.c * g.h * g.w];
        // One (b, c) plane per task, reading its own kh·kw rows of `cols`.
        x.par_chunks_mut(g.h * g.w)
            .enumerate()
            .for_each(|(bc, plane)| {
                let rows = &cols[bc * kk * l_out..][..kk * l_out];
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let row = &rows[(ky * g.kw + kx) * l_out..][..l_out];
                        let xoff = (kx * g.dil) as isize - g.pad as isize;
                        let (lo, hi) = valid_range(xoff, g.stride, g.w, wo);
                        for oy in 0..ho {
                            let iy = (oy * g.stride + ky * g.dil) as isize - g.pad as isize;
                            if iy < 0 || iy as usize >= g.h || lo >= hi {
                                continue;
                            }
                            let dst = &mut plane[iy as usize * g.w..][..g.w];
                            let src = &row[oy * wo..][..wo];
                            if g.stride == 1 {
                                let i0 = (lo as isize + xoff) as usize;
                                for (d, v) in dst[i0..i0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                                    *d += v;
                                }
                            } else {
                                for ox in lo..hi {
                                    dst[(ox as isize * g.stride as isize + xoff) as usize] +=
                                        src[ox];
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(x), Shape::from((g.b, g.c, g.h, g.w))))
    }
}

/// `conv2d(x, weight) + bias` through im2col + GEMM (CPU, f32, groups = 1).
pub fn conv2d_gemm(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, ci, kh, kw) = weight.dims4()?;
    if ci != c {
        candle_core::bail!("conv2d: input has {c} channels, weight expects {ci}");
    }
    let g = Geom {
        b,
        c,
        h,
        w,
        kh,
        kw,
        stride,
        pad: padding,
        dil: dilation,
    };
    let (ho, wo) = g.out();
    let x = x.contiguous()?;
    let cols = if x.track_op() {
        x.apply_op1(Im2Col(g))?
    } else {
        x.apply_op1_no_bwd(&Im2Col(g))?
    }; // (B, CK, L)
    let wm = weight
        .reshape((1, o, g.ck()))?
        .broadcast_as((b, o, g.ck()))?;
    let mut y = wm.matmul(&cols)?; // (B, O, L): already NCHW
    if let Some(bias) = bias {
        y = y.broadcast_add(&bias.reshape((1, o, 1))?)?;
    }
    y.reshape((b, o, ho, wo))
}

/// A conv layer: candle-nn's `Conv2d` interface, with the GEMM path on the CPU.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
}

impl Conv2d {
    /// A conv from its weight `(O, C, kh, kw)`, optional bias `(O)` and settings.
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv2dConfig) -> Self {
        Self { weight, bias, cfg }
    }
    /// The weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

/// Largest `im2col` buffer (bytes) the GEMM path builds for one layer. The buffer is kept for
/// the backward pass, so this bounds the extra training memory per layer; larger layers (a
/// full-width VGG-16's first blocks at 224² with a big batch) use candle's direct conv.
pub const GEMM_MAX_COLS_BYTES: usize = 384 << 20;

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, ci, h, w) = x.dims4()?;
        let (_, _, kh, kw) = self.weight.dims4()?;
        let out = |n: usize, k: usize| {
            (n + 2 * c.padding).saturating_sub(c.dilation * (k - 1) + 1) / c.stride + 1
        };
        let cols_bytes = b * ci * kh * kw * out(h, kh) * out(w, kw) * 4;
        if x.device().is_cpu()
            && x.dtype() == DType::F32
            && c.groups == 1
            && cols_bytes <= GEMM_MAX_COLS_BYTES
        {
            return conv2d_gemm(
                x,
                &self.weight,
                self.bias.as_ref(),
                c.stride,
                c.padding,
                c.dilation,
            );
        }
        let y = x.conv2d(&self.weight, c.padding, c.stride, c.dilation, c.groups)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn rand_t(rng: &mut rand_chacha::ChaCha8Rng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let m = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        d / m.max(1e-6)
    }

    /// Output and both gradients equal candle's reference conv2d over many random shapes,
    /// strides, paddings, dilations and batch sizes.
    #[test]
    fn gemm_conv_matches_candle_conv_and_its_gradients() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut checked = 0;
        for case in 0..60 {
            let b: usize = rng.random_range(1..4);
            let c = rng.random_range(1..6);
            let o = rng.random_range(1..7);
            let k: usize = [1, 2, 3, 5][rng.random_range(0..4)];
            let stride: usize = rng.random_range(1..4);
            let dil: usize = rng.random_range(1..4);
            let pad = rng.random_range(0..(dil * (k / 2) + 2));
            let min = dil * (k - 1) + 1;
            let h = rng.random_range(min.saturating_sub(2 * pad).max(1)..min + 9);
            let w = rng.random_range(min.saturating_sub(2 * pad).max(1)..min + 9);
            if h + 2 * pad < min || w + 2 * pad < min {
                continue;
            }
            let x = Var::from_tensor(&rand_t(&mut rng, &[b, c, h, w])).unwrap();
            let wt = Var::from_tensor(&rand_t(&mut rng, &[o, c, k, k])).unwrap();
            let bias = Var::from_tensor(&rand_t(&mut rng, &[o])).unwrap();
            let probe = |y: &Tensor, seed: u64| {
                // A random linear functional of the output, so every output element's
                // gradient path is exercised with a different weight.
                let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let p = rand_t(&mut r, y.dims());
                (y * p).unwrap().sum_all().unwrap()
            };
            let ours = conv2d_gemm(
                x.as_tensor(),
                wt.as_tensor(),
                Some(bias.as_tensor()),
                stride,
                pad,
                dil,
            )
            .unwrap();
            // Reference: candle's stride-1 conv, subsampled (candle's own strided backward
            // fails on some shapes), plus bias.
            let full = x
                .as_tensor()
                .conv2d(wt.as_tensor(), pad, 1, dil, 1)
                .unwrap();
            let (_, _, h1, w1) = full.dims4().unwrap();
            let pick = |n: usize| {
                let idx: Vec<u32> = (0..n).step_by(stride).map(|i| i as u32).collect();
                Tensor::new(idx, &Device::Cpu).unwrap()
            };
            let reference = full
                .index_select(&pick(h1), 2)
                .unwrap()
                .index_select(&pick(w1), 3)
                .unwrap()
                .broadcast_add(&bias.as_tensor().reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), reference.dims(), "case {case}");
            assert!(rel_err(&ours, &reference) < 1e-4, "case {case}: forward");
            let g1 = probe(&ours, case).backward().unwrap();
            let g2 = probe(&reference, case).backward().unwrap();
            for (name, v) in [("input", &x), ("weight", &wt), ("bias", &bias)] {
                let a = g1.get(v.as_tensor()).unwrap();
                let r = g2.get(v.as_tensor()).unwrap();
                assert!(
                    rel_err(a, r) < 1e-4,
                    "case {case} (b{b} c{c} o{o} k{k} s{stride} p{pad} d{dil} {h}x{w}): {name} gradient"
                );
            }
            checked += 1;
        }
        assert!(checked >= 40, "only {checked} shapes checked");
    }

    #[test]
    fn no_input_gradient_for_constants() {
        let x = Tensor::ones((1, 2, 5, 5), DType::F32, &Device::Cpu).unwrap();
        let w = Var::from_tensor(&Tensor::ones((3, 2, 3, 3), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let y = conv2d_gemm(&x, w.as_tensor(), None, 1, 1, 1).unwrap();
        // Centre pixel sees 2 channels × 9 ones.
        assert_eq!(
            y.get(0)
                .unwrap()
                .get(0)
                .unwrap()
                .get(2)
                .unwrap()
                .get(2)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            18.0
        );
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_none());
        assert!(g.get(w.as_tensor()).is_some());
    }
}
