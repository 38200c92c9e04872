//! Bilinear resizing of planes (NCHW, f32) and its adjoint, with PyTorch's
//! `align_corners = False` convention: output index `o` samples the input at
//! `s = max((o + ½)·in/out − ½, 0)`, between `⌊s⌋` and `min(⌊s⌋ + 1, in − 1)` with weights
//! `1 − (s − ⌊s⌋)` and `s − ⌊s⌋`.
//!
//! Separable: along the width first, then along the height, each output a two-tap weighted
//! sum, one task per plane (no interpolation matrix, no zero products: a 16² → 64² resize of a
//! 256-channel batch is two passes over the output instead of two dense matrix products and
//! their transposes). The backward pass is the exact adjoint, accumulated in a fixed order per
//! plane, so results do not depend on the number of threads.

use rayon::prelude::*;

/// The two taps of 1-D linear interpolation from `inp` to `out` samples: for each output, the
/// input indices `(i0, i1)` and weights `(1 − l, l)` (`l` computed in f64, rounded to f32);
/// `wsss::model::ops::interp_matrix` builds the matrix of the GPU path from them.
pub fn taps(out: usize, inp: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = inp as f64 / out as f64;
    (0..out)
        .map(|o| {
            let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(inp - 1);
            let i1 = (i0 + 1).min(inp - 1);
            let l = (s - i0 as f64) as f32;
            (i0, i1, 1.0 - l, l)
        })
        .collect()
}

/// Resize `planes` planes of `h × w` (contiguous, plane after plane) to `ho × wo`.
///
/// # Panics
/// `x.len() != planes·h·w`, or a size is zero.
pub fn bilinear(
    x: &[f32],
    planes: usize,
    (h, w): (usize, usize),
    (ho, wo): (usize, usize),
) -> Vec<f32> {
    assert_eq!(x.len(), planes * h * w, "resize: input size");
    assert!(h > 0 && w > 0 && ho > 0 && wo > 0, "resize: empty plane");
    let (tw, th) = (taps(wo, w), taps(ho, h));
    let mut y = vec![0f32; planes * ho * wo];
    y.par_chunks_mut(ho * wo)
        .zip(x.par_chunks(h * w))
        .for_each_init(Vec::new, |tmp, (yp, xp)| {
            // Along the width: tmp is h × wo.
            tmp.resize(h * wo, 0.0);
            for (trow, xrow) in tmp.chunks_exact_mut(wo).zip(xp.chunks_exact(w)) {
                for (t, &(i0, i1, a, b)) in trow.iter_mut().zip(&tw) {
                    *t = a * xrow[i0] + b * xrow[i1];
                }
            }
            // Along the height.
            for (yrow, &(i0, i1, a, b)) in yp.chunks_exact_mut(wo).zip(&th) {
                let (r0, r1) = (&tmp[i0 * wo..][..wo], &tmp[i1 * wo..][..wo]);
                for ((v, &p), &q) in yrow.iter_mut().zip(r0).zip(r1) {
                    *v = a * p + b * q;
                }
            }
        });
    y
}

/// The adjoint of [`bilinear`]: from the output gradient `grad` (`planes × ho × wo`), the input
/// gradient (`planes × h × w`).
///
/// # Panics
/// `grad.len() != planes·ho·wo`, or a size is zero.
pub fn bilinear_grad(
    grad: &[f32],
    planes: usize,
    (h, w): (usize, usize),
    (ho, wo): (usize, usize),
) -> Vec<f32> {
    assert_eq!(grad.len(), planes * ho * wo, "resize: gradient size");
    assert!(h > 0 && w > 0 && ho > 0 && wo > 0, "resize: empty plane");
    let (tw, th) = (taps(wo, w), taps(ho, h));
    let mut dx = vec![0f32; planes * h * w];
    dx.par_chunks_mut(h * w)
        .zip(grad.par_chunks(ho * wo))
        .for_each_init(Vec::new, |tmp, (dxp, gp)| {
            // Height adjoint: tmp (h × wo) = Ahᵀ · grad.
            tmp.clear();
            tmp.resize(h * wo, 0.0);
            for (grow, &(i0, i1, a, b)) in gp.chunks_exact(wo).zip(&th) {
                for (t, &g) in tmp[i0 * wo..][..wo].iter_mut().zip(grow) {
                    *t += a * g;
                }
                for (t, &g) in tmp[i1 * wo..][..wo].iter_mut().zip(grow) {
                    *t += b * g;
                }
            }
            // Width adjoint: dx (h × w) = tmp · Aw.
            for (drow, trow) in dxp.chunks_exact_mut(w).zip(tmp.chunks_exact(wo)) {
                for (&g, &(i0, i1, a, b)) in trow.iter().zip(&tw) {
                    drow[i0] += a * g;
                    drow[i1] += b * g;
                }
            }
        });
    dx
}
