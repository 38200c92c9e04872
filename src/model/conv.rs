//! Convolution, ReLU and 2×2 max-pool for the CPU as candle custom ops over the kernels of
//! `wsss-kernels` (`crates/kernels`), so the models use them transparently through autograd.
//!
//! Why: candle's CPU conv backward computes the input gradient with a direct transposed-conv
//! loop and the weight gradient as a conv with a 9-column GEMM (~10× the forward's time), and
//! its ReLU and max-pool backward make several single-threaded passes (its max-pool gradient is
//! also scaled by ¼ when a window has one maximum). Here a conv layer is one op whose forward
//! is `W · cols` with bias (and ReLU) fused, and whose backward is the ReLU mask, `∂y · colsᵀ`
//! and `col2im(Wᵀ · ∂y)` — large GEMMs, the patch matrix `cols` read straight from the image
//! and never stored (see `wsss_kernels::conv`). Inputs that need no gradient (the image) get
//! no `∂x`.
//!
//! Used for `f32` on the CPU with `groups = 1`. On CUDA with the `cudnn` feature the same layer
//! runs through cuDNN's forward and backward algorithms ([`super::cudnn`]); other cases (f16,
//! grouped convolutions, CUDA without `cudnn`) use candle's ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::Conv2dConfig;
use wsss_kernels::conv::{Geom, BAND_BYTES};
use wsss_kernels::elementwise;

use super::cpu_op::{apply3, contiguous_f32, split, Kernel3};

/// The conv layer `relu?(conv(x, w) + bias)`, arguments `(x, w, bias)`.
struct ConvOp {
    g: Geom,
    relu: bool,
}

impl Kernel3 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn run(&self, [x, w, b]: [&[f32]; 3], _: [&Layout; 3]) -> Result<(Vec<f32>, Shape)> {
        let g = self.g;
        let (ho, wo) = g.out();
        let y = wsss_kernels::conv::forward(&g, self.relu, x, w, b);
        Ok((y, Shape::from((g.b, g.o, ho, wo))))
    }

    fn grads(
        &self,
        [x, w, bias]: [&Tensor; 3],
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let g = self.g;
        let grad = if self.relu {
            grad.contiguous()?.apply_op2_no_bwd(res, &RELU_GRAD)?
        } else {
            grad.clone()
        };
        let (need_x, need_w) = (x.track_op(), w.track_op());
        let packed = apply3(ConvBwd { g, need_x, need_w }, [&grad, x, w], false)?;
        let [dx, dw, db] = split(
            &packed,
            [
                need_x.then_some(&[g.b, g.c, g.h, g.w][..]),
                need_w.then_some(&[g.o, g.c, g.kh, g.kw][..]),
                Some(&[g.o][..]),
            ],
        )?;
        Ok([dx, dw, db.filter(|_| bias.track_op())])
    }
}

/// The conv's backward, arguments `(∂y before ReLU, x, w)`; output `[∂x | ∂W | ∂b]` flattened
/// (`∂x`, `∂W` only where needed), one op so the three come from one pass over the images.
struct ConvBwd {
    g: Geom,
    need_x: bool,
    need_w: bool,
}

impl Kernel3 for ConvBwd {
    fn name(&self) -> &'static str {
        "conv2d-gemm-backward"
    }

    fn run(&self, [gr, x, w]: [&[f32]; 3], _: [&Layout; 3]) -> Result<(Vec<f32>, Shape)> {
        let gr = wsss_kernels::conv::backward(&self.g, (self.need_x, self.need_w), gr, x, w);
        let mut out = gr.dx;
        out.extend_from_slice(&gr.dw);
        out.extend_from_slice(&gr.db);
        let n = out.len();
        Ok((out, Shape::from(n)))
    }
}

/// `grad · [0 < res < cap]`, arguments `(grad, res)`: (capped) ReLU's backward from its
/// output.
struct ReluGrad(f32);

/// The plain ReLU's backward.
const RELU_GRAD: ReluGrad = ReluGrad(f32::INFINITY);

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gr, y) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let out = elementwise::relu_capped_grad(gr, y, self.0);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `min(max(x, 0), cap)`, multi-threaded, with a one-pass backward.
struct Relu(f32);

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu-par"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = elementwise::relu_capped(contiguous_f32(s, l)?, self.0);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op2_no_bwd(res, &ReluGrad(self.0))?,
        ))
    }
}

fn fast_path(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// ReLU: the multi-threaded kernel on the CPU in f32, candle's elsewhere.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !fast_path(x) {
        return x.relu();
    }
    relu_op(x, f32::INFINITY)
}

/// ReLU6, `min(max(x, 0), 6)`: one multi-threaded pass each way on the CPU in f32 (candle's
/// `clamp` is two ops and a masked backward of several passes), candle's `clamp` elsewhere.
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    if !fast_path(x) {
        return x.clamp(0f32, 6f32);
    }
    relu_op(x, 6.0)
}

/// `grad · [0 < y < cap]` from an activation's output `y` (no autograd: for backward passes).
pub(crate) fn relu_grad_from_output(grad: &Tensor, y: &Tensor, cap: f32) -> Result<Tensor> {
    grad.contiguous()?
        .apply_op2_no_bwd(&y.contiguous()?, &ReluGrad(cap))
}

fn relu_op(x: &Tensor, cap: f32) -> Result<Tensor> {
    let x = x.contiguous()?;
    if x.track_op() {
        x.apply_op1(Relu(cap))
    } else {
        x.apply_op1_no_bwd(&Relu(cap))
    }
}

/// 2×2 stride-2 max-pool (odd trailing rows/columns dropped, like candle's and PyTorch's
/// default); the gradient goes to the first maximum of each window (PyTorch's rule).
struct MaxPool2;

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let out = elementwise::max_pool2(contiguous_f32(s, l)?, b * c, h, w);
        Ok((CpuStorage::F32(out), Shape::from((b, c, h / 2, w / 2))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op2_no_bwd(&arg.contiguous()?, &MaxPool2Grad)?,
        ))
    }
}

/// Backward of [`MaxPool2`], arguments `(∂y, x)`.
struct MaxPool2Grad;

impl CustomOp2 for MaxPool2Grad {
    fn name(&self) -> &'static str {
        "max-pool-2x2-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l2.shape().dims4()?;
        let (gr, x) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let dx = elementwise::max_pool2_grad(gr, x, b * c, h, w);
        Ok((CpuStorage::F32(dx), l2.shape().clone()))
    }
}

/// 2×2 stride-2 max-pool: the multi-threaded kernel on the CPU in f32, candle's elsewhere.
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    if !fast_path(x) {
        return x.max_pool2d(2);
    }
    let (_, _, h, w) = x.dims4()?;
    if h < 2 || w < 2 {
        candle_core::bail!("max-pool 2×2: input {h}×{w} is smaller than the window");
    }
    let x = x.contiguous()?;
    if x.track_op() {
        x.apply_op1(MaxPool2)
    } else {
        x.apply_op1_no_bwd(&MaxPool2)
    }
}

/// `conv2d(x, weight) + bias` through the GEMM kernels (CPU, f32, groups = 1).
pub fn conv2d_gemm(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    conv2d_banded(
        x,
        weight,
        bias,
        (stride, padding, dilation),
        false,
        BAND_BYTES,
    )
}

fn conv2d_banded(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    (stride, padding, dilation): (usize, usize, usize),
    relu: bool,
    band_bytes: usize,
) -> Result<Tensor> {
    let g = geom(x, weight, (stride, padding, dilation), band_bytes)?;
    let bias = match bias {
        Some(b) => b.clone(),
        None => Tensor::zeros(g.o, DType::F32, x.device())?,
    };
    apply3(ConvOp { g, relu }, [x, weight, &bias], true)
}

/// The geometry of `conv2d(x, weight)` (error if the shapes do not fit).
fn geom(
    x: &Tensor,
    weight: &Tensor,
    (stride, padding, dilation): (usize, usize, usize),
    band_bytes: usize,
) -> Result<Geom> {
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
        o,
        kh,
        kw,
        stride,
        pad: padding,
        dil: dilation,
        band_bytes,
    };
    if !g.valid() {
        candle_core::bail!(
            "conv2d: {h}×{w} input with padding {padding}, stride {stride}, dilation {dilation} \
             does not fit a {kh}×{kw} kernel"
        );
    }
    Ok(g)
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

    fn gemm_path(&self, x: &Tensor) -> bool {
        fast_path(x) && self.weight.dtype() == DType::F32 && self.cfg.groups == 1
    }

    /// cuDNN's forward and backward algorithms (feature `cudnn`): CUDA, f32, groups = 1.
    #[cfg(feature = "cudnn")]
    fn cudnn_path(&self, x: &Tensor) -> bool {
        x.device().is_cuda()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && self.cfg.groups == 1
    }

    #[cfg(not(feature = "cudnn"))]
    fn cudnn_path(&self, _x: &Tensor) -> bool {
        false
    }

    #[cfg(feature = "cudnn")]
    fn cudnn(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let g = geom(
            x,
            &self.weight,
            (c.stride, c.padding, c.dilation),
            BAND_BYTES,
        )?;
        self.add_bias(super::cudnn::conv2d(x, &self.weight, g)?)
    }

    #[cfg(not(feature = "cudnn"))]
    fn cudnn(&self, x: &Tensor) -> Result<Tensor> {
        self.candle_conv(x)
    }

    fn candle_conv(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        self.add_bias(x.conv2d(&self.weight, c.padding, c.stride, c.dilation, c.groups)?)
    }

    /// `y + bias` broadcast over `(B, ·, H, W)` (the paths whose conv has no bias of its own).
    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }

    fn gemm(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let c = &self.cfg;
        let settings = (c.stride, c.padding, c.dilation);
        conv2d_banded(
            x,
            &self.weight,
            self.bias.as_ref(),
            settings,
            relu,
            BAND_BYTES,
        )
    }

    /// `relu(conv(x))`, with bias and ReLU fused into the conv on the CPU path.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        if self.gemm_path(x) {
            self.gemm(x, true)
        } else if self.cudnn_path(x) {
            self.cudnn(x)?.relu()
        } else {
            self.candle_conv(x)?.relu()
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.gemm_path(x) {
            self.gemm(x, false)
        } else if self.cudnn_path(x) {
            self.cudnn(x)
        } else {
            self.candle_conv(x)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{rand_t, rel_err};
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    /// Output and both gradients equal candle's reference conv2d over many random shapes,
    /// strides, paddings, dilations and batch sizes.
    #[test]
    fn gemm_conv_matches_candle_conv_and_its_gradients() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut checked = 0;
        for case in 0..90 {
            let b: usize = rng.random_range(1..4);
            let c = rng.random_range(1..6);
            let o = rng.random_range(1..7);
            let k: usize = [1, 2, 3, 5][rng.random_range(0..4)];
            // Every fifth case a 1×1 stride-1 unpadded conv (the path without im2col).
            let pointwise = case % 5 == 0;
            let k = if pointwise { 1 } else { k };
            let stride: usize = if pointwise { 1 } else { rng.random_range(1..4) };
            let dil: usize = rng.random_range(1..4);
            let pad = if pointwise {
                0
            } else {
                rng.random_range(0..(dil * (k / 2) + 2))
            };
            // Fused ReLU on odd cases; bands of one row up to the whole image.
            let relu = case % 2 == 1;
            let band_bytes = [1, 200, 4096, BAND_BYTES][rng.random_range(0..4)];
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
            let ours = conv2d_banded(
                x.as_tensor(),
                wt.as_tensor(),
                Some(bias.as_tensor()),
                (stride, pad, dil),
                relu,
                band_bytes,
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
            let reference = if relu {
                reference.relu().unwrap()
            } else {
                reference
            };
            assert_eq!(ours.dims(), reference.dims(), "case {case}");
            assert!(rel_err(&ours, &reference) < 1e-4, "case {case}: forward");
            let g1 = probe(&ours, case).backward().unwrap();
            let g2 = probe(&reference, case).backward().unwrap();
            for (name, v) in [("input", &x), ("weight", &wt), ("bias", &bias)] {
                let a = g1.get(v.as_tensor()).unwrap();
                let r = g2.get(v.as_tensor()).unwrap();
                assert!(
                    rel_err(a, r) < 1e-4,
                    "case {case} (b{b} c{c} o{o} k{k} s{stride} p{pad} d{dil} {h}x{w} relu {relu} band {band_bytes}): {name} gradient"
                );
            }
            checked += 1;
        }
        assert!(checked >= 60, "only {checked} shapes checked");
    }

    /// The multi-threaded ReLU equals candle's (value and gradient) and the 2×2 max-pool equals
    /// candle's value and the gradient's formula (random inputs, so no ties), on even and odd
    /// sizes.
    #[test]
    fn relu_and_max_pool_match_candle() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (b, c, h, w) in [(1, 1, 2, 2), (2, 3, 7, 5), (3, 4, 16, 9), (1, 2, 3, 4)] {
            let x = Var::from_tensor(&rand_t(&mut rng, &[b, c, h, w])).unwrap();
            let p = rand_t(&mut rng, &[b, c, h, w]);
            let ours = relu(x.as_tensor()).unwrap();
            let theirs = x.as_tensor().relu().unwrap();
            assert!(rel_err(&ours, &theirs) < 1e-6);
            let g1 = (&ours * &p).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&theirs * &p)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert!(rel_err(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-6);

            let ours = max_pool2(x.as_tensor()).unwrap();
            let theirs = x.as_tensor().max_pool2d(2).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "{b}x{c}x{h}x{w}");
            assert!(rel_err(&ours, &theirs) < 1e-6);
            // Gradient by formula (candle's own max-pool backward scales it by 1/4): each
            // window's output gradient lands on its maximum; odd trailing rows/columns get 0.
            let (ho, wo) = (h / 2, w / 2);
            let q = rand_t(&mut rng, ours.dims());
            let g = (&ours * &q).unwrap().sum_all().unwrap().backward().unwrap();
            let crop = x
                .as_tensor()
                .narrow(2, 0, 2 * ho)
                .unwrap()
                .narrow(3, 0, 2 * wo)
                .unwrap();
            let up = |t: &Tensor| t.upsample_nearest2d(2 * ho, 2 * wo).unwrap();
            let mask = crop.eq(&up(&ours)).unwrap().to_dtype(DType::F32).unwrap();
            let expect = (up(&q) * mask)
                .unwrap()
                .pad_with_zeros(2, 0, h - 2 * ho)
                .unwrap()
                .pad_with_zeros(3, 0, w - 2 * wo)
                .unwrap();
            assert!(
                rel_err(g.get(&x).unwrap(), &expect) < 1e-6,
                "{b}x{c}x{h}x{w}"
            );
        }
    }

    /// ReLU6 equals candle's `clamp(0, 6)` in value; its gradient is the output gradient where
    /// `0 < x < 6` and zero elsewhere (PyTorch's `hardtanh_backward`), on inputs spread over
    /// both bounds.
    #[test]
    fn relu6_matches_clamp_and_hardtanhs_gradient() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let v: Vec<f32> = (0..2 * 3 * 7 * 5)
            .map(|_| rng.random_range(-9.0f32..9.0))
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(v.clone(), (2, 3, 7, 5), &Device::Cpu).unwrap())
            .unwrap();
        let p = rand_t(&mut rng, &[2, 3, 7, 5]);
        let y = relu6(x.as_tensor()).unwrap();
        let clamp = x.as_tensor().clamp(0f32, 6f32).unwrap();
        assert!(rel_err(&y, &clamp) < 1e-7);
        let g = (&y * &p).unwrap().sum_all().unwrap().backward().unwrap();
        let got = g
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let pv = p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut inside = 0;
        for ((xv, gv), pv) in v.iter().zip(&got).zip(&pv) {
            let want = if *xv > 0.0 && *xv < 6.0 { *pv } else { 0.0 };
            inside += usize::from(want != 0.0);
            assert_eq!(*gv, want, "x = {xv}");
        }
        assert!(inside > 50 && inside < 160, "{inside} of 210 inside (0, 6)");
    }

    /// A window of equal values sends its gradient to the first one only (PyTorch's rule),
    /// so the gradient's total is the output gradient's.
    #[test]
    fn max_pool_ties_go_to_the_first_maximum() {
        let x = Var::from_tensor(&Tensor::ones((1, 1, 2, 4), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let g = max_pool2(x.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d = g
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(d, vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
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
