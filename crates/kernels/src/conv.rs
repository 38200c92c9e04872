//! 2-D convolution (NCHW, f32, groups = 1; any stride, padding and dilation) as matrix
//! products over the patch matrix `cols (K × L)`, `K = C·kh·kw` rows ordered `(c, ky, kx)` — the
//! order of `weight.reshape(O, K)` — and `L = H_out·W_out` positions:
//!
//! - forward `y = W · cols`, written straight into NCHW, then bias (+ ReLU) in one pass;
//! - weight gradient `∂W += ∂y · colsᵀ`, bias gradient `∂b += Σ ∂y`;
//! - input gradient `∂x = col2im(Wᵀ · ∂y)` (skipped when the input needs none).
//!
//! `cols` is never stored: [`Patches`] packs the GEMM's right operand straight from the image
//! (implicit `im2col`), for the forward and for the weight gradient. Only `Wᵀ · ∂y` is
//! materialised, in bands of output rows of bounded size, and scattered back by `col2im`.
//! 1×1 stride-1 unpadded convs use the image itself as `cols`. With at least as many images
//! as threads, images run in parallel (one single-threaded GEMM each); otherwise each GEMM is
//! split across the threads. Weight gradients are summed over fixed groups of images and then
//! in group order, so results do not depend on the number of threads.
//!
//! 3×3 stride-1 padding-1 convolutions with enough channels ([`crate::winograd::suits`]) take
//! Winograd's F(2×2, 3×3) instead, forward and both gradients.
//!
//! Kernel taps that read only zero padding for every output position are dropped first
//! ([`Geom::dead_taps`]): an atrous conv whose rate is at least the map's side — DeepLab V3+'s
//! rate-18 ASPP branch on the 16×16 map of a 256² crop at output stride 16 — is then the 1×1
//! conv it computes. The dropped terms are exact zeros, so the results are the same bits.

use rayon::prelude::*;

use crate::elementwise::bias_act;
use crate::sgemm::{sgemm, PackB, Strided, NR, PACK_ROWS};
use crate::threads;
use crate::winograd;

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geom {
    /// Batch.
    pub b: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (both axes, both sides).
    pub pad: usize,
    /// Dilation (both axes).
    pub dil: usize,
    /// Bytes of one band of `Wᵀ · ∂y` in the input-gradient pass ([`BAND_BYTES`]).
    pub band_bytes: usize,
}

/// Default bytes of one band of `Wᵀ · ∂y` (per thread): bounded whatever the image size.
pub const BAND_BYTES: usize = 16 << 20;

impl Geom {
    /// A 3×3 stride-1 convolution with padding 1 (output as large as the input, the shape
    /// Winograd's path takes) of `b` maps `h × w`, `c → o` channels, default bands.
    pub fn same_3x3(b: usize, c: usize, (h, w): (usize, usize), o: usize) -> Self {
        Self {
            b,
            c,
            h,
            w,
            o,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
            dil: 1,
            band_bytes: BAND_BYTES,
        }
    }

    /// Output height and width.
    pub fn out(&self) -> (usize, usize) {
        let o = |n: usize, k: usize| (n + 2 * self.pad - self.dil * (k - 1) - 1) / self.stride + 1;
        (o(self.h, self.kh), o(self.w, self.kw))
    }
    /// Whether the output is at least 1×1 and the settings are usable.
    pub fn valid(&self) -> bool {
        self.stride > 0
            && self.dil > 0
            && self.kh > 0
            && self.kw > 0
            && self.h + 2 * self.pad > self.dil * (self.kh - 1)
            && self.w + 2 * self.pad > self.dil * (self.kw - 1)
    }
    fn ck(&self) -> usize {
        self.c * self.kh * self.kw
    }
    fn plane(&self) -> usize {
        self.h * self.w
    }
    fn l(&self) -> usize {
        let (ho, wo) = self.out();
        ho * wo
    }
    /// Taps `t` at each edge of the kernel (rows and columns `t < k0` and `t ≥ k − k0`) that
    /// read only zero padding for every output position, trimmed symmetrically and alike on
    /// both axes so the rest is a conv of this kind again: kernel `kh − 2·k0 × kw − 2·k0`,
    /// padding `pad − k0·dil`, the same output. 0 when every edge tap reads the image somewhere.
    pub fn dead_taps(&self) -> usize {
        let (ho, wo) = self.out();
        // Tap t of an axis of n pixels reads t·dil − pad + o·stride for outputs o < n_out.
        let dead = |t: usize, n: usize, n_out: usize| {
            let lo = (t * self.dil) as isize - self.pad as isize;
            let hi = lo + ((n_out.max(1) - 1) * self.stride) as isize;
            hi < 0 || lo >= n as isize
        };
        let mut k0 = 0;
        loop {
            let k = k0 + 1;
            if !self.valid()
                || self.kh < 2 * k + 1
                || self.kw < 2 * k + 1
                || k * self.dil > self.pad
            {
                return k0;
            }
            let t = k - 1;
            let gone = dead(t, self.h, ho)
                && dead(self.kh - 1 - t, self.h, ho)
                && dead(t, self.w, wo)
                && dead(self.kw - 1 - t, self.w, wo);
            if !gone {
                return k0;
            }
            k0 = k;
        }
    }

    /// The conv without its `k0` dead taps at each edge ([`Geom::dead_taps`]).
    fn trimmed(&self, k0: usize) -> Self {
        Self {
            kh: self.kh - 2 * k0,
            kw: self.kw - 2 * k0,
            pad: self.pad - k0 * self.dil,
            ..*self
        }
    }

    /// A 1×1 stride-1 unpadded conv: the input is its own `cols` matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// Output-row bands `[oy0, oy1)` whose `K × band` buffer fits in `band_bytes`.
    fn bands(&self) -> Vec<(usize, usize)> {
        let (ho, wo) = self.out();
        let rows = (self.band_bytes / (4 * self.ck() * wo).max(1)).clamp(1, ho);
        (0..ho)
            .step_by(rows)
            .map(|a| (a, (a + rows).min(ho)))
            .collect()
    }
}

/// Output positions `ox` whose input column `ox·stride + off` lies in `[0, w)`.
pub(crate) fn valid_range(off: isize, stride: usize, w: usize, wo: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    let hi = if (w as isize) - off <= 0 {
        0
    } else {
        ((w as isize - off) + s - 1) / s
    };
    let lo = (lo.max(0) as usize).min(wo);
    (lo, (hi.max(0) as usize).min(wo).max(lo))
}

/// Adds the `kh·kw` rows of one channel (output rows `[oy0, oy1)`) back into its plane: the
/// adjoint of reading the patch matrix.
fn col2im_plane(g: &Geom, rows: &[f32], (oy0, oy1): (usize, usize), plane: &mut [f32]) {
    let (_, wo) = g.out();
    let lb = (oy1 - oy0) * wo;
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let row = &rows[(ky * g.kw + kx) * lb..][..lb];
            let xoff = (kx * g.dil) as isize - g.pad as isize;
            let (lo, hi) = valid_range(xoff, g.stride, g.w, wo);
            for oy in oy0..oy1 {
                let iy = (oy * g.stride + ky * g.dil) as isize - g.pad as isize;
                if iy < 0 || iy as usize >= g.h || lo >= hi {
                    continue;
                }
                let dst = &mut plane[iy as usize * g.w..][..g.w];
                let src = &row[(oy - oy0) * wo..][..wo];
                if g.stride == 1 {
                    let i0 = (lo as isize + xoff) as usize;
                    for (d, v) in dst[i0..i0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                        *d += v;
                    }
                } else {
                    for (ox, v) in src.iter().enumerate().take(hi).skip(lo) {
                        dst[(ox as isize * g.stride as isize + xoff) as usize] += v;
                    }
                }
            }
        }
    }
}

fn col2im_band(g: &Geom, cols: &[f32], band: (usize, usize), dxi: &mut [f32], parallel: bool) {
    let chunk = g.kh * g.kw * (band.1 - band.0) * g.out().1;
    let cols = &cols[..g.c * chunk];
    if parallel {
        dxi.par_chunks_mut(g.plane())
            .zip(cols.par_chunks(chunk))
            .for_each(|(plane, rows)| col2im_plane(g, rows, band, plane));
    } else {
        for (plane, rows) in dxi.chunks_mut(g.plane()).zip(cols.chunks(chunk)) {
            col2im_plane(g, rows, band, plane);
        }
    }
}

/// The patch matrix of one image, read straight from the image by the GEMM's packers.
pub struct Patches<'a> {
    g: &'a Geom,
    x: &'a [f32],
}

impl<'a> Patches<'a> {
    /// The patch matrix of image `x` (`C × H × W`).
    pub fn new(g: &'a Geom, x: &'a [f32]) -> Self {
        Self { g, x }
    }

    /// Writes `cols[k][l0 .. l0+len]` to `dst[t·step]`, `t < len`.
    pub fn run(&self, k: usize, l0: usize, len: usize, dst: &mut [f32], step: usize) {
        let g = self.g;
        let (_, wo) = g.out();
        let (c, ky, kx) = (k / (g.kh * g.kw), (k / g.kw) % g.kh, k % g.kw);
        let plane = &self.x[c * g.plane()..][..g.plane()];
        let xoff = (kx * g.dil) as isize - g.pad as isize;
        let (lo, hi) = valid_range(xoff, g.stride, g.w, wo);
        let (mut l, mut t) = (l0, 0);
        while t < len {
            let (oy, ox) = (l / wo, l % wo);
            let n = (wo - ox).min(len - t);
            let iy = (oy * g.stride + ky * g.dil) as isize - g.pad as isize;
            // Positions ox..ox+n of this output row; a..b of them read inside the image.
            let (a, b) = if iy < 0 || iy as usize >= g.h {
                (ox, ox)
            } else {
                (lo.clamp(ox, ox + n), hi.clamp(ox, ox + n))
            };
            for u in (0..a - ox).chain(b - ox..n) {
                dst[(t + u) * step] = 0.0;
            }
            if a < b {
                let src = &plane[iy as usize * g.w..][..g.w];
                if g.stride == 1 && step == 1 && b - a == NR {
                    // The common case, a whole panel row inside the image: a fixed-size copy.
                    let i0 = (a as isize + xoff) as usize;
                    let s: &[f32; NR] = src[i0..i0 + NR].try_into().expect("NR");
                    let d: &mut [f32; NR] =
                        (&mut dst[t + a - ox..t + b - ox]).try_into().expect("NR");
                    *d = *s;
                } else if g.stride == 1 && step == 1 {
                    let i0 = (a as isize + xoff) as usize;
                    dst[t + a - ox..t + b - ox].copy_from_slice(&src[i0..i0 + (b - a)]);
                } else {
                    for q in a..b {
                        dst[(t + q - ox) * step] =
                            src[(q as isize * g.stride as isize + xoff) as usize];
                    }
                }
            }
            l += n;
            t += n;
        }
    }
}

impl PackB for Patches<'_> {
    /// `B = cols`: depth is the patch row `k`, columns are positions `l`. [`PACK_ROWS`]
    /// depths at a time, each depth's `nc` positions are read in one [`Patches::run`] (whole
    /// output rows at a time) into a small buffer, then dealt out to the panels.
    fn pack(&self, p0: usize, j0: usize, kc: usize, nc: usize, buf: &mut [f32]) {
        thread_local! {
            static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        ROW.with(|rows| {
            let rows = &mut *rows.borrow_mut();
            let width = nc.div_ceil(NR) * NR;
            rows.resize(PACK_ROWS * width, 0.0);
            for q in (0..kc).step_by(PACK_ROWS) {
                let depth = PACK_ROWS.min(kc - q);
                for (r, row) in rows.chunks_exact_mut(width).take(depth).enumerate() {
                    self.run(p0 + q + r, j0, nc, row, 1);
                    row[nc..].fill(0.0);
                }
                for (s, panel) in buf.chunks_mut(NR * kc).take(width / NR).enumerate() {
                    for r in 0..depth {
                        let p = q + r;
                        let dst: &mut [f32; NR] =
                            (&mut panel[p * NR..(p + 1) * NR]).try_into().expect("NR");
                        *dst = rows[r * width + s * NR..][..NR].try_into().expect("NR");
                    }
                }
            }
        });
    }
}

/// `B = colsᵀ` (the weight gradient's right operand): depth is the position `l`.
pub struct PatchesT<'a>(
    /// The patch matrix it transposes.
    pub Patches<'a>,
);

impl PackB for PatchesT<'_> {
    fn pack(&self, p0: usize, j0: usize, kc: usize, nc: usize, buf: &mut [f32]) {
        for (s, panel) in buf.chunks_mut(NR * kc).take(nc.div_ceil(NR)).enumerate() {
            let cols = (nc - s * NR).min(NR);
            if cols < NR {
                panel.fill(0.0);
            }
            for j in 0..cols {
                self.0.run(j0 + s * NR + j, p0, kc, &mut panel[j..], NR);
            }
        }
    }
}

/// Run images in parallel (one single-threaded GEMM each) when there are enough of them.
fn images_in_parallel(b: usize) -> bool {
    let t = threads();
    t > 1 && b >= t
}

/// Forward of one image: `yi (O × L) = relu?(W · cols(xi) + bias)`.
#[allow(clippy::too_many_arguments)]
fn forward_image(
    g: &Geom,
    relu: bool,
    xi: &[f32],
    w: &[f32],
    bias: &[f32],
    yi: &mut [f32],
    inner: bool,
) {
    let (l, k, o) = (g.l(), g.ck(), g.o);
    let threads = if inner { threads() } else { 1 };
    let wm = Strided::rows(w, k);
    if g.pointwise() {
        let b = Strided::rows(xi, l);
        sgemm((o, l, k), yi, l, false, &wm, &b, threads);
    } else {
        sgemm((o, l, k), yi, l, false, &wm, &Patches::new(g, xi), threads);
    }
    bias_act(yi, bias, l, relu, inner);
}

/// `relu?(conv(x, w) + bias)`: `x` is `B × C × H × W`, `w` is `O × C × kh × kw`, `bias` has `O`
/// elements; returns `B × O × H_out × W_out`. 3×3 stride-1 convolutions of the shapes
/// [`winograd::suits`] names run on Winograd's F(2×2, 3×3), the others on the GEMM path
/// ([`forward_gemm`]).
///
/// # Panics
/// A bad geometry or a slice of the wrong size.
pub fn forward(g: &Geom, relu: bool, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    let k0 = g.dead_taps();
    if k0 > 0 {
        assert_eq!(w.len(), g.o * g.ck(), "conv: weight size");
        let t = g.trimmed(k0);
        return forward(&t, relu, x, &trim_weights(g, k0, w), bias);
    }
    if winograd::suits(g) {
        assert_eq!(x.len(), g.b * g.c * g.plane(), "conv: input size");
        return winograd::forward(g, relu, x, w, bias);
    }
    forward_gemm(g, relu, x, w, bias)
}

/// [`forward`] on the GEMM path whatever the shape (implicit `im2col`).
///
/// # Panics
/// As [`forward`].
pub fn forward_gemm(g: &Geom, relu: bool, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    assert!(g.valid(), "conv: bad geometry {g:?}");
    assert_eq!(x.len(), g.b * g.c * g.plane(), "conv: input size");
    assert_eq!(w.len(), g.o * g.ck(), "conv: weight size");
    assert_eq!(bias.len(), g.o, "conv: bias size");
    let ol = g.o * g.l();
    let mut y = vec![0f32; g.b * ol];
    if images_in_parallel(g.b) {
        y.par_chunks_mut(ol)
            .zip(x.par_chunks(g.c * g.plane()))
            .with_max_len(1)
            .for_each(|(yi, xi)| forward_image(g, relu, xi, w, bias, yi, false));
    } else {
        for (yi, xi) in y.chunks_mut(ol).zip(x.chunks(g.c * g.plane())) {
            forward_image(g, relu, xi, w, bias, yi, true);
        }
    }
    y
}

/// `w[:, :, k0 .. kh − k0, k0 .. kw − k0]` of an `O × C × kh × kw` weight.
fn trim_weights(g: &Geom, k0: usize, w: &[f32]) -> Vec<f32> {
    let (th, tw) = (g.kh - 2 * k0, g.kw - 2 * k0);
    let mut out = Vec::with_capacity(g.o * g.c * th * tw);
    for kernel in w.chunks(g.kh * g.kw) {
        for row in kernel.chunks(g.kw).skip(k0).take(th) {
            out.extend_from_slice(&row[k0..k0 + tw]);
        }
    }
    out
}

/// The adjoint of [`trim_weights`]: a trimmed weight gradient back at full size, zeros at the
/// dead taps (whose gradient is exactly zero: they only ever multiplied padding).
fn untrim_weights(g: &Geom, k0: usize, dw: &[f32]) -> Vec<f32> {
    let (th, tw) = (g.kh - 2 * k0, g.kw - 2 * k0);
    let mut out = vec![0f32; g.o * g.c * g.kh * g.kw];
    for (kernel, small) in out.chunks_mut(g.kh * g.kw).zip(dw.chunks(th * tw)) {
        for (row, s) in kernel.chunks_mut(g.kw).skip(k0).zip(small.chunks(tw)) {
            row[k0..k0 + tw].copy_from_slice(s);
        }
    }
    out
}

/// Gradients of a conv.
pub struct Grads {
    /// `∂x` (`B × C × H × W`), empty unless asked for.
    pub dx: Vec<f32>,
    /// `∂W` (`O × C × kh × kw`), empty unless asked for.
    pub dw: Vec<f32>,
    /// `∂b` (`O`).
    pub db: Vec<f32>,
}

/// Per-thread scratch and partial sums of the backward pass.
struct Acc {
    dw: Vec<f32>,
    db: Vec<f32>,
    dcols: Vec<f32>,
}

/// Adds image `i`'s contribution to `acc` (∂W, ∂b) and writes its `∂x` into `dxi` (if any).
#[allow(clippy::too_many_arguments)]
fn backward_image(
    g: &Geom,
    (need_x, need_w): (bool, bool),
    gi: &[f32],
    xi: &[f32],
    w: &[f32],
    dxi: &mut [f32],
    acc: &mut Acc,
    inner: bool,
) {
    let (_, wo) = g.out();
    let (l, k, o) = (g.l(), g.ck(), g.o);
    let threads = if inner { threads() } else { 1 };
    for (db, row) in acc.db.iter_mut().zip(gi.chunks(l)) {
        *db += row.iter().sum::<f32>();
    }
    let gm = Strided::rows(gi, l);
    if need_w {
        // ∂W (O × K) += ∂y (O × L) · colsᵀ (L × K)
        if g.pointwise() {
            let xt = Strided {
                data: xi,
                rs: 1,
                cs: l,
            };
            sgemm((o, k, l), &mut acc.dw, k, true, &gm, &xt, threads);
        } else {
            let xt = PatchesT(Patches::new(g, xi));
            sgemm((o, k, l), &mut acc.dw, k, true, &gm, &xt, threads);
        }
    }
    if !need_x {
        return;
    }
    // Wᵀ: K × O
    let wt = Strided {
        data: w,
        rs: 1,
        cs: k,
    };
    if g.pointwise() {
        sgemm((k, l, o), dxi, l, false, &wt, &gm, threads);
        return;
    }
    dxi.fill(0.0);
    for band in g.bands() {
        let lb = (band.1 - band.0) * wo;
        let gb = Strided::rows(&gi[band.0 * wo..], l);
        acc.dcols.resize(k * lb, 0.0);
        sgemm((k, lb, o), &mut acc.dcols, lb, false, &wt, &gb, threads);
        col2im_band(g, &acc.dcols, band, dxi, inner);
    }
}

/// Gradients of [`forward`] (before any ReLU: apply [`crate::elementwise::relu_grad`] first)
/// given the output gradient `grad` (`B × O × H_out × W_out`); `∂x` and `∂W` only where asked.
/// The shapes [`winograd::suits`] names take Winograd's path for both gradients
/// ([`winograd::backward_data`], [`winograd::backward_filter`]); the others run on the GEMM
/// path ([`backward_gemm`]).
///
/// # Panics
/// A bad geometry or a slice of the wrong size.
pub fn backward(
    g: &Geom,
    (need_x, need_w): (bool, bool),
    grad: &[f32],
    x: &[f32],
    w: &[f32],
) -> Grads {
    let k0 = g.dead_taps();
    if k0 > 0 {
        assert_eq!(w.len(), g.o * g.ck(), "conv: weight size");
        let t = g.trimmed(k0);
        let mut grads = backward(&t, (need_x, need_w), grad, x, &trim_weights(g, k0, w));
        if need_w {
            grads.dw = untrim_weights(g, k0, &grads.dw);
        }
        return grads;
    }
    if winograd::suits(g) {
        let ol = g.o * g.l();
        assert_eq!(grad.len(), g.b * ol, "conv: gradient size");
        assert_eq!(w.len(), g.o * g.ck(), "conv: weight size");
        // ∂b: each image's plane sums, added image by image (a fixed order).
        let mut db = vec![0f32; g.o];
        for gi in grad.chunks(ol) {
            for (d, plane) in db.iter_mut().zip(gi.chunks(g.l())) {
                *d += plane.iter().sum::<f32>();
            }
        }
        return Grads {
            dx: if need_x {
                winograd::backward_data(g, grad, w)
            } else {
                Vec::new()
            },
            dw: if need_w {
                winograd::backward_filter(g, grad, x)
            } else {
                Vec::new()
            },
            db,
        };
    }
    backward_gemm(g, (need_x, need_w), grad, x, w)
}

/// [`backward`] on the GEMM path whatever the shape: `∂W += ∂y · colsᵀ`, `∂x = col2im(Wᵀ · ∂y)`.
///
/// # Panics
/// As [`backward`].
pub fn backward_gemm(
    g: &Geom,
    (need_x, need_w): (bool, bool),
    grad: &[f32],
    x: &[f32],
    w: &[f32],
) -> Grads {
    assert!(g.valid(), "conv: bad geometry {g:?}");
    let (ol, chw) = (g.o * g.l(), g.c * g.plane());
    assert_eq!(grad.len(), g.b * ol, "conv: gradient size");
    assert_eq!(x.len(), g.b * chw, "conv: input size");
    assert_eq!(w.len(), g.o * g.ck(), "conv: weight size");
    // Images are summed in fixed groups whose partial sums are then added in order, so the
    // result is the same bit for bit whatever the number of threads (which only decides whether
    // groups run side by side or each GEMM is split across the threads).
    let per = 2.max(g.b.div_ceil(8));
    let groups = g.b.div_ceil(per);
    let mut dx = vec![0f32; if need_x { g.b * chw } else { 0 }];
    let mut slots: Vec<&mut [f32]> = if need_x {
        dx.chunks_mut(per * chw).collect()
    } else {
        (0..groups).map(|_| &mut [][..]).collect()
    };
    let need = (need_x, need_w);
    let new = || Acc {
        dw: vec![0.0; if need_w { g.o * g.ck() } else { 0 }],
        db: vec![0.0; g.o],
        dcols: Vec::new(),
    };
    let group = |gi: usize, dxg: &mut [f32], inner: bool| {
        let mut acc = new();
        for i in gi * per..((gi + 1) * per).min(g.b) {
            let (gr, xi) = (&grad[i * ol..][..ol], &x[i * chw..][..chw]);
            let dxi = if need_x {
                &mut dxg[(i - gi * per) * chw..][..chw]
            } else {
                &mut [][..]
            };
            backward_image(g, need, gr, xi, w, dxi, &mut acc, inner);
        }
        acc
    };
    let partials: Vec<Acc> = if images_in_parallel(groups) {
        slots
            .par_iter_mut()
            .enumerate()
            .map(|(gi, dxg)| group(gi, dxg, false))
            .collect()
    } else {
        slots
            .iter_mut()
            .enumerate()
            .map(|(gi, dxg)| group(gi, dxg, true))
            .collect()
    };
    let acc = partials
        .into_iter()
        .reduce(|mut a, b| {
            a.dw.iter_mut().zip(&b.dw).for_each(|(p, q)| *p += q);
            a.db.iter_mut().zip(&b.db).for_each(|(p, q)| *p += q);
            a
        })
        .unwrap_or_else(new);
    Grads {
        dx,
        dw: acc.dw,
        db: acc.db,
    }
}
