//! Element-wise kernels around a conv, multi-threaded and single-pass: bias + ReLU (the conv's
//! epilogue), ReLU and its backward from the output, and the 2×2 stride-2 max-pool with its
//! backward (gradient to the first maximum of each window, PyTorch's rule).

use rayon::prelude::*;

/// Elements per task.
const CHUNK: usize = 1 << 16;

/// `y[c] ← relu?(y[c] + bias[c])` for each channel row `c` of `y` (rows of `len` elements).
pub fn bias_act(y: &mut [f32], bias: &[f32], len: usize, relu: bool, parallel: bool) {
    let f = |(row, &b): (&mut [f32], &f32)| {
        if relu {
            row.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
        } else {
            row.iter_mut().for_each(|v| *v += b);
        }
    };
    if parallel {
        y.par_chunks_mut(len).zip(bias.par_iter()).for_each(f);
    } else {
        y.chunks_mut(len).zip(bias.iter()).for_each(f);
    }
}

/// `max(x, 0)`.
pub fn relu(x: &[f32]) -> Vec<f32> {
    relu_capped(x, f32::INFINITY)
}

/// ReLU's backward from its output `y`: `grad · [y > 0]`.
pub fn relu_grad(grad: &[f32], y: &[f32]) -> Vec<f32> {
    relu_capped_grad(grad, y, f32::INFINITY)
}

/// `min(max(x, 0), cap)` (ReLU6 for `cap = 6`, MobileNet's and EfficientNet-Lite's).
pub fn relu_capped(x: &[f32], cap: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            o.iter_mut()
                .zip(x)
                .for_each(|(o, x)| *o = x.max(0.0).min(cap))
        });
    out
}

/// `y ← min(max(y, 0), cap)` in place.
pub fn clamp_in_place(y: &mut [f32], cap: f32) {
    y.par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0).min(cap)));
}

/// [`relu_capped`]'s backward from its output `y`: `grad · [0 < y < cap]` (PyTorch's
/// `hardtanh_backward`: no gradient where the output sits on either bound).
pub fn relu_capped_grad(grad: &[f32], y: &[f32], cap: f32) -> Vec<f32> {
    let mut out = vec![0f32; grad.len()];
    out.par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
        .for_each(|(o, (g, y))| {
            for ((o, g), y) in o.iter_mut().zip(g).zip(y) {
                *o = if *y > 0.0 && *y < cap { *g } else { 0.0 };
            }
        });
    out
}

/// 2×2 stride-2 max-pool of `planes` planes of `h × w` (odd last row/column dropped).
pub fn max_pool2(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    let mut out = vec![0f32; planes * ho * wo];
    if ho * wo == 0 {
        return out;
    }
    out.par_chunks_mut(ho * wo)
        .zip(x.par_chunks(h * w))
        .for_each(|(o, p)| {
            for oy in 0..ho {
                let (r0, r1) = (&p[2 * oy * w..][..w], &p[(2 * oy + 1) * w..][..w]);
                for (ox, v) in o[oy * wo..][..wo].iter_mut().enumerate() {
                    *v = r0[2 * ox]
                        .max(r0[2 * ox + 1])
                        .max(r1[2 * ox])
                        .max(r1[2 * ox + 1]);
                }
            }
        });
    out
}

/// Backward of [`max_pool2`]: each window's output gradient goes to its first maximum.
pub fn max_pool2_grad(grad: &[f32], x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    let mut dx = vec![0f32; planes * h * w];
    if ho * wo == 0 {
        return dx;
    }
    dx.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w).zip(grad.par_chunks(ho * wo)))
        .for_each(|(d, (p, gp))| {
            for oy in 0..ho {
                for ox in 0..wo {
                    let i = 2 * oy * w + 2 * ox;
                    let mut best = i;
                    for j in [i + 1, i + w, i + w + 1] {
                        if p[j] > p[best] {
                            best = j;
                        }
                    }
                    d[best] = gp[oy * wo + ox];
                }
            }
        });
    dx
}
