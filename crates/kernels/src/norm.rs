//! Batch normalisation over NCHW planes: per-channel statistics, the affine normalisation and
//! its backward, each one multi-threaded pass (channels or planes in parallel).

use rayon::prelude::*;

/// Per-channel mean and biased variance of `x` (`b × c × hw`), two passes per channel in f64.
pub fn channel_stats(x: &[f32], b: usize, c: usize, hw: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (b * hw).max(1) as f64;
    let plane = |bi: usize, ci: usize| &x[(bi * c + ci) * hw..][..hw];
    let stats: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let sum: f64 = (0..b)
                .map(|bi| plane(bi, ci).iter().map(|&v| v as f64).sum::<f64>())
                .sum();
            let mean = sum / n;
            let sq: f64 = (0..b)
                .map(|bi| {
                    plane(bi, ci)
                        .iter()
                        .map(|&v| (v as f64 - mean).powi(2))
                        .sum::<f64>()
                })
                .sum();
            (mean as f32, (sq / n) as f32)
        })
        .collect();
    stats.into_iter().unzip()
}

/// `y = x · scale[c] + shift[c]` over `x` (`b × c × hw`).
pub fn affine(x: &[f32], scale: &[f32], shift: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(i, (yp, xp))| {
            let (s, t) = (scale[i % c], shift[i % c]);
            yp.iter_mut().zip(xp).for_each(|(y, x)| *y = x * s + t);
        });
    y
}

/// Gradients of `y = (x − mean)·invstd·w + bias` given `∂y`: `(∂x, ∂w, ∂bias)`. With
/// `batch_stats`, `mean` and `invstd` are the batch's own (training), so `∂x` includes the
/// terms through them; otherwise they are constants (running statistics).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    grad: &[f32],
    x: &[f32],
    (mean, invstd, w): (&[f32], &[f32], &[f32]),
    (b, c, hw): (usize, usize, usize),
    batch_stats: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let at = |bi: usize, ci: usize| (bi * c + ci) * hw;
    // Σ ∂y and Σ ∂y·x̂ per channel.
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let (mut sdy, mut sdyx) = (0f64, 0f64);
            for bi in 0..b {
                let (g, xp) = (&grad[at(bi, ci)..][..hw], &x[at(bi, ci)..][..hw]);
                let (mut s1, mut s2) = (0f32, 0f32);
                for (g, x) in g.iter().zip(xp) {
                    s1 += g;
                    s2 += g * (x - mean[ci]);
                }
                sdy += s1 as f64;
                sdyx += s2 as f64 * invstd[ci] as f64;
            }
            (sdy as f32, sdyx as f32)
        })
        .collect();
    let n = (b * hw).max(1) as f32;
    let mut dx = vec![0f32; grad.len()];
    dx.par_chunks_mut(hw)
        .zip(grad.par_chunks(hw).zip(x.par_chunks(hw)))
        .enumerate()
        .for_each(|(i, (d, (g, xp)))| {
            let ci = i % c;
            let k = w[ci] * invstd[ci];
            if batch_stats {
                let (sdy, sdyx) = sums[ci];
                let (m1, m2) = (sdy / n, sdyx / n);
                for ((d, g), x) in d.iter_mut().zip(g).zip(xp) {
                    let xh = (x - mean[ci]) * invstd[ci];
                    *d = k * (g - m1 - xh * m2);
                }
            } else {
                d.iter_mut().zip(g).for_each(|(d, g)| *d = k * g);
            }
        });
    let (db, dw) = sums.into_iter().unzip();
    (dx, dw, db)
}
