//! Depthwise 2-D convolution (NCHW, f32, `groups = channels`, one `k × k` filter per channel,
//! no bias): forward, input gradient and weight gradient, each one multi-threaded pass.
//!
//! Depthwise convs are the 3×3/5×5 layers of MobileNet-style networks (EfficientNet-Lite's
//! MBConv blocks). They do `k²` multiply-adds per output element, far too little work for a
//! GEMM to pay off, so they are direct loops: for every output row and every kernel tap the
//! contributing output columns are computed once ([`valid_range`]) and the inner loop is a
//! contiguous (stride 1) or strided slice operation the compiler vectorises.
//!
//! Padding is given per side (`pad_t`, `pad_l`, output size explicit), so TensorFlow's
//! asymmetric "SAME" padding of the EfficientNet checkpoints needs no padded copy.
//! Planes (image × channel) run in parallel for the forward and `∂x`; `∂W` runs channels in
//! parallel, each summing its images in order, so results do not depend on the thread count.

use rayon::prelude::*;

use crate::conv::valid_range;

/// Geometry of one depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwGeom {
    /// Batch.
    pub b: usize,
    /// Channels (= output channels = groups).
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel size (square).
    pub k: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Dilation (both axes).
    pub dil: usize,
    /// Zero rows above the image.
    pub pad_t: usize,
    /// Zero columns left of the image.
    pub pad_l: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

impl DwGeom {
    /// Symmetric padding `pad` on every side (PyTorch's `Conv2d(padding=pad, groups=C)`).
    #[allow(clippy::too_many_arguments)]
    pub fn symmetric(
        (b, c, h, w): (usize, usize, usize, usize),
        k: usize,
        stride: usize,
        dil: usize,
        pad: usize,
    ) -> Self {
        let span = dil * (k.max(1) - 1) + 1;
        let o = |n: usize| (n + 2 * pad).saturating_sub(span) / stride.max(1) + 1;
        Self {
            b,
            c,
            h,
            w,
            k,
            stride,
            dil,
            pad_t: pad,
            pad_l: pad,
            ho: o(h),
            wo: o(w),
        }
    }

    /// TensorFlow's "SAME" padding: output `⌈n / stride⌉`, total padding
    /// `max((out − 1)·stride + dil·(k − 1) + 1 − n, 0)` split with the extra row/column at the
    /// bottom/right (as the EfficientNet-Lite reference's `Conv2dStaticSamePadding`).
    pub fn same(
        (b, c, h, w): (usize, usize, usize, usize),
        k: usize,
        stride: usize,
        dil: usize,
    ) -> Self {
        let (ph, ho) = same_padding(h, k, stride, dil);
        let (pw, wo) = same_padding(w, k, stride, dil);
        Self {
            b,
            c,
            h,
            w,
            k,
            stride,
            dil,
            pad_t: ph / 2,
            pad_l: pw / 2,
            ho,
            wo,
        }
    }

    /// Whether the settings are usable: positive stride, dilation and kernel size (taps
    /// that fall in the padding read zeros, so any padding and output size are defined).
    pub fn valid(&self) -> bool {
        self.stride > 0 && self.dil > 0 && self.k > 0
    }

    fn plane_in(&self) -> usize {
        self.h * self.w
    }
    fn plane_out(&self) -> usize {
        self.ho * self.wo
    }
}

/// TensorFlow "SAME" padding of one axis of size `n`: `(total padding, output size)`.
pub fn same_padding(n: usize, k: usize, stride: usize, dil: usize) -> (usize, usize) {
    let out = n.div_ceil(stride.max(1));
    let need = (out.max(1) - 1) * stride + dil * (k.max(1) - 1) + 1;
    (need.saturating_sub(n), out)
}

/// The taps of output row `oy`: `(ky, input row)` for the kernel rows that land in the image.
fn rows(g: &DwGeom, oy: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    (0..g.k).filter_map(move |ky| {
        let iy = (oy * g.stride + ky * g.dil) as isize - g.pad_t as isize;
        (iy >= 0 && (iy as usize) < g.h).then_some((ky, iy as usize))
    })
}

/// Column offset of tap `kx` and the output columns it reaches inside the image.
fn cols(g: &DwGeom, kx: usize) -> (isize, usize, usize) {
    let off = (kx * g.dil) as isize - g.pad_l as isize;
    let (a, b) = valid_range(off, g.stride, g.w, g.wo);
    (off, a, b)
}

/// `y[ox] += wv · x[ox·s + off]` for `ox` in `[a, b)`.
#[inline(always)]
fn axpy_strided(y: &mut [f32], x: &[f32], wv: f32, s: usize, off: isize, (a, b): (usize, usize)) {
    if a >= b {
        return;
    }
    let start = (a as isize * s as isize + off) as usize;
    if s == 1 {
        for (yv, xv) in y[a..b].iter_mut().zip(&x[start..start + (b - a)]) {
            *yv += wv * xv;
        }
    } else {
        for (yv, xv) in y[a..b].iter_mut().zip(x[start..].iter().step_by(s)) {
            *yv += wv * xv;
        }
    }
}

/// `x[ox·s + off] += wv · y[ox]` for `ox` in `[a, b)` (the adjoint of [`axpy_strided`]).
#[inline(always)]
fn scatter_strided(
    x: &mut [f32],
    y: &[f32],
    wv: f32,
    s: usize,
    off: isize,
    (a, b): (usize, usize),
) {
    if a >= b {
        return;
    }
    let start = (a as isize * s as isize + off) as usize;
    if s == 1 {
        for (xv, yv) in x[start..start + (b - a)].iter_mut().zip(&y[a..b]) {
            *xv += wv * yv;
        }
    } else {
        for (xv, yv) in x[start..].iter_mut().step_by(s).zip(&y[a..b]) {
            *xv += wv * yv;
        }
    }
}

/// `Σ y[ox] · x[ox·s + off]` for `ox` in `[a, b)`.
#[inline(always)]
fn dot_strided(y: &[f32], x: &[f32], s: usize, off: isize, (a, b): (usize, usize)) -> f32 {
    if a >= b {
        return 0.0;
    }
    let start = (a as isize * s as isize + off) as usize;
    // Eight partial sums so the loop vectorises (floating-point addition is not reordered
    // by the compiler otherwise).
    let mut acc = [0f32; 8];
    if s == 1 {
        let (ys, xs) = (&y[a..b], &x[start..start + (b - a)]);
        let mut yc = ys.chunks_exact(8);
        let mut xc = xs.chunks_exact(8);
        for (yy, xx) in (&mut yc).zip(&mut xc) {
            for i in 0..8 {
                acc[i] += yy[i] * xx[i];
            }
        }
        for (yv, xv) in yc.remainder().iter().zip(xc.remainder()) {
            acc[0] += yv * xv;
        }
    } else {
        for (i, (yv, xv)) in y[a..b].iter().zip(x[start..].iter().step_by(s)).enumerate() {
            acc[i % 8] += yv * xv;
        }
    }
    acc.iter().sum()
}

fn check(g: &DwGeom, x: usize, w: usize) {
    assert!(g.valid(), "depthwise conv: bad geometry {g:?}");
    assert_eq!(x, g.b * g.c * g.plane_in(), "depthwise conv: input size");
    assert_eq!(w, g.c * g.k * g.k, "depthwise conv: weight size");
}

/// Forward: `x` is `B × C × H × W`, `w` is `C × 1 × k × k`; returns `B × C × ho × wo`.
pub fn forward(g: &DwGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    check(g, x.len(), w.len());
    let (pi, po, kk) = (g.plane_in(), g.plane_out(), g.k * g.k);
    let mut y = vec![0f32; g.b * g.c * po];
    if po == 0 {
        return y;
    }
    let taps: Vec<(isize, usize, usize)> = (0..g.k).map(|kx| cols(g, kx)).collect();
    y.par_chunks_mut(po)
        .zip(x.par_chunks(pi))
        .enumerate()
        .for_each(|(p, (yp, xp))| {
            let wc = &w[(p % g.c) * kk..(p % g.c + 1) * kk];
            for (oy, yrow) in yp.chunks_mut(g.wo).enumerate() {
                for (ky, iy) in rows(g, oy) {
                    let xrow = &xp[iy * g.w..(iy + 1) * g.w];
                    for (kx, &(off, a, b)) in taps.iter().enumerate() {
                        axpy_strided(yrow, xrow, wc[ky * g.k + kx], g.stride, off, (a, b));
                    }
                }
            }
        });
    y
}

/// Input gradient `∂x` (`B × C × H × W`) from the output gradient `gy` (`B × C × ho × wo`).
pub fn backward_input(g: &DwGeom, gy: &[f32], w: &[f32]) -> Vec<f32> {
    let (pi, po, kk) = (g.plane_in(), g.plane_out(), g.k * g.k);
    check(g, g.b * g.c * pi, w.len());
    assert_eq!(
        gy.len(),
        g.b * g.c * po,
        "depthwise conv: output gradient size"
    );
    let mut dx = vec![0f32; g.b * g.c * pi];
    if po == 0 {
        return dx;
    }
    let taps: Vec<(isize, usize, usize)> = (0..g.k).map(|kx| cols(g, kx)).collect();
    dx.par_chunks_mut(pi)
        .zip(gy.par_chunks(po))
        .enumerate()
        .for_each(|(p, (dxp, gp))| {
            let wc = &w[(p % g.c) * kk..(p % g.c + 1) * kk];
            for (oy, grow) in gp.chunks(g.wo).enumerate() {
                for (ky, iy) in rows(g, oy) {
                    let dxrow = &mut dxp[iy * g.w..(iy + 1) * g.w];
                    for (kx, &(off, a, b)) in taps.iter().enumerate() {
                        scatter_strided(dxrow, grow, wc[ky * g.k + kx], g.stride, off, (a, b));
                    }
                }
            }
        });
    dx
}

/// Weight gradient `∂W` (`C × 1 × k × k`) from the output gradient and the input.
pub fn backward_weight(g: &DwGeom, gy: &[f32], x: &[f32]) -> Vec<f32> {
    let (pi, po, kk) = (g.plane_in(), g.plane_out(), g.k * g.k);
    check(g, x.len(), g.c * kk);
    assert_eq!(
        gy.len(),
        g.b * g.c * po,
        "depthwise conv: output gradient size"
    );
    let mut dw = vec![0f32; g.c * kk];
    if po == 0 {
        return dw;
    }
    let taps: Vec<(isize, usize, usize)> = (0..g.k).map(|kx| cols(g, kx)).collect();
    dw.par_chunks_mut(kk).enumerate().for_each(|(c, dwc)| {
        for bi in 0..g.b {
            let p = bi * g.c + c;
            let (xp, gp) = (&x[p * pi..(p + 1) * pi], &gy[p * po..(p + 1) * po]);
            for (oy, grow) in gp.chunks(g.wo).enumerate() {
                for (ky, iy) in rows(g, oy) {
                    let xrow = &xp[iy * g.w..(iy + 1) * g.w];
                    for (kx, &(off, a, b)) in taps.iter().enumerate() {
                        dwc[ky * g.k + kx] += dot_strided(grow, xrow, g.stride, off, (a, b));
                    }
                }
            }
        }
    });
    dw
}
