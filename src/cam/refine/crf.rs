//! Dense CRF refinement of a CAM (`cam.refine = "crf"`): the talk's "CAM region too broad,
//! boundary detail lost", answered the way WSSS pipelines usually do (Ahn & Kwak, CVPR 2018;
//! DeepLab).
//!
//! A fully connected CRF over the pixels (Krähenbühl & Koltun, NeurIPS 2011) with Potts
//! compatibility and two Gaussian kernels — *smoothness* on position (`sxy`) and *appearance*
//! on position and colour (`sxy`, `srgb`) — solved by mean-field inference. Each iteration's
//! message passing is a Gaussian filter in feature space, done in O(N) with the permutohedral
//! lattice (Adams, Baek & Davis, Eurographics 2010: splat onto the lattice's vertices, blur
//! along its d + 1 axes with [1 2 1], slice back), each kernel normalised symmetrically
//! (`k̃ᵢⱼ = kᵢⱼ / √(nᵢ nⱼ)`, nᵢ = Σⱼ kᵢⱼ) — the choices of the authors' `densecrf` and of
//! PyPI's `pydensecrf2`, which the tests compare against.
//!
//! Unaries come from the normalised CAM `c`, calibrated so that the unary alone decides as the
//! threshold does: `logit p(fg) = logit c − logit τ` (τ = `cam.threshold`). The refined map
//! returned is the CRF's marginal mapped back the same way, `c' = σ(logit Q(fg) + logit τ)`,
//! so `c' ≥ τ` exactly where the CRF prefers foreground and the ignore band
//! (`cam.background_threshold`) keeps its meaning.

use std::collections::HashMap;

use image::{GrayImage, RgbImage};

use super::{image_of, logit, to_cam_scale, Needs, RefineInput, Refined, Refiner};
use crate::config::CrfConfig;
use crate::error::Result;

/// `cam.refine = "crf"` behind the [`Refiner`] seam.
pub struct DenseCrf(pub CrfConfig);

impl Refiner for DenseCrf {
    fn name(&self) -> &'static str {
        "crf"
    }
    fn needs(&self) -> Needs {
        Needs::IMAGE
    }
    fn refine(&self, input: &RefineInput) -> Result<Refined> {
        let img = image_of(input, self.name())?;
        Ok(Refined::new(refine_crf(
            img,
            input.cam,
            input.threshold,
            &self.0,
        )))
    }
}

/// A permutohedral lattice built over `n` points with `d`-dimensional features (already
/// divided by the kernel's standard deviations), ready to Gaussian-filter values.
pub struct Lattice {
    d: usize,
    n: usize,
    /// Lattice vertex (+1; 0 = none) of each point's d + 1 simplex corners.
    offsets: Vec<u32>,
    /// Barycentric weight of each corner.
    weights: Vec<f32>,
    /// Per blur axis and vertex: the two neighbours' indices (+1; 0 = none).
    neighbours: Vec<[u32; 2]>,
    /// Number of vertices.
    m: usize,
}

impl Lattice {
    /// Splat `n = features.len() / d` points (row-major, `d ≤ 7`).
    pub fn new(features: &[f32], d: usize) -> Self {
        assert!((1..=7).contains(&d), "lattice dimension {d}");
        let n = features.len() / d;
        let d1 = d + 1;
        // Scale so that the lattice's blur approximates a unit-variance Gaussian.
        let inv_std = (2.0f32 / 3.0).sqrt() * d1 as f32;
        let scale: Vec<f32> = (0..d)
            .map(|i| inv_std / (((i + 2) * (i + 1)) as f32).sqrt())
            .collect();
        let canonical: Vec<i32> = (0..d1)
            .flat_map(|i| {
                (0..d1).map(move |j| {
                    if j <= d - i {
                        i as i32
                    } else {
                        i as i32 - d1 as i32
                    }
                })
            })
            .collect();
        let mut table: HashMap<[i32; 7], u32> = HashMap::with_capacity(n);
        let mut keys: Vec<[i32; 7]> = Vec::new();
        let mut offsets = vec![0u32; n * d1];
        let mut weights = vec![0f32; n * d1];
        let (mut elevated, mut rem0, mut rank) = (vec![0f32; d1], vec![0i32; d1], vec![0i32; d1]);
        let mut bary = vec![0f32; d1 + 1];
        let down = 1.0 / d1 as f32;
        for k in 0..n {
            let f = &features[k * d..(k + 1) * d];
            // Elevate onto the hyperplane Σ x = 0 of R^{d+1}.
            let mut sum = 0.0f32;
            for j in (1..=d).rev() {
                let cf = f[j - 1] * scale[j - 1];
                elevated[j] = sum - j as f32 * cf;
                sum += cf;
            }
            elevated[0] = sum;
            // Nearest remainder-0 point, then the simplex containing the point (ranks).
            let mut s = 0i32;
            for i in 0..d1 {
                let rd = (down * elevated[i]).round() as i32;
                rem0[i] = rd * d1 as i32;
                s += rd;
            }
            rank.iter_mut().for_each(|r| *r = 0);
            for i in 0..d {
                let di = elevated[i] - rem0[i] as f32;
                for j in i + 1..d1 {
                    if di < elevated[j] - rem0[j] as f32 {
                        rank[i] += 1;
                    } else {
                        rank[j] += 1;
                    }
                }
            }
            for i in 0..d1 {
                rank[i] += s;
                if rank[i] < 0 {
                    rank[i] += d1 as i32;
                    rem0[i] += d1 as i32;
                } else if rank[i] > d as i32 {
                    rank[i] -= d1 as i32;
                    rem0[i] -= d1 as i32;
                }
            }
            // Barycentric coordinates of the point in its simplex.
            bary.iter_mut().for_each(|b| *b = 0.0);
            for i in 0..d1 {
                let v = (elevated[i] - rem0[i] as f32) * down;
                let r = rank[i] as usize;
                bary[d - r] += v;
                bary[d - r + 1] -= v;
            }
            bary[0] += 1.0 + bary[d1];
            // The simplex's d + 1 vertices.
            for rem in 0..d1 {
                let mut key = [0i32; 7];
                for i in 0..d {
                    key[i] = rem0[i] + canonical[rem * d1 + rank[i] as usize];
                }
                let next = keys.len() as u32;
                let idx = *table.entry(key).or_insert_with(|| {
                    keys.push(key);
                    next
                });
                offsets[k * d1 + rem] = idx + 1;
                weights[k * d1 + rem] = bary[rem];
            }
        }
        let m = keys.len();
        let mut neighbours = vec![[0u32; 2]; d1 * m];
        for j in 0..d1 {
            for (i, key) in keys.iter().enumerate() {
                let (mut n1, mut n2) = ([0i32; 7], [0i32; 7]);
                for k in 0..d {
                    n1[k] = key[k] - 1;
                    n2[k] = key[k] + 1;
                }
                if j < d {
                    n1[j] = key[j] + d as i32;
                    n2[j] = key[j] - d as i32;
                }
                let find = |k: &[i32; 7]| table.get(k).map_or(0, |&v| v + 1);
                neighbours[j * m + i] = [find(&n1), find(&n2)];
            }
        }
        Self {
            d,
            n,
            offsets,
            weights,
            neighbours,
            m,
        }
    }

    /// Gaussian-filter `values` (`n × vd`, row-major): `out_i ≈ Σ_j exp(−|f_i − f_j|² / 2) v_j`
    /// (the point itself included), up to the lattice's approximation.
    pub fn filter(&self, values: &[f32], vd: usize) -> Vec<f32> {
        let d1 = self.d + 1;
        let mut lat = vec![0f32; (self.m + 1) * vd];
        for i in 0..self.n {
            for r in 0..d1 {
                let (o, w) = (self.offsets[i * d1 + r] as usize, self.weights[i * d1 + r]);
                for c in 0..vd {
                    lat[o * vd + c] += w * values[i * vd + c];
                }
            }
        }
        let mut next = vec![0f32; (self.m + 1) * vd];
        for j in 0..d1 {
            for i in 0..self.m {
                let [a, b] = self.neighbours[j * self.m + i];
                let (a, b, o) = (a as usize * vd, b as usize * vd, (i + 1) * vd);
                for c in 0..vd {
                    next[o + c] = lat[o + c] + 0.5 * (lat[a + c] + lat[b + c]);
                }
            }
            std::mem::swap(&mut lat, &mut next);
        }
        let alpha = 1.0 / (1.0 + 2f32.powi(-(self.d as i32)));
        let mut out = vec![0f32; self.n * vd];
        for i in 0..self.n {
            for r in 0..d1 {
                let (o, w) = (self.offsets[i * d1 + r] as usize, self.weights[i * d1 + r]);
                for c in 0..vd {
                    out[i * vd + c] += w * lat[o * vd + c] * alpha;
                }
            }
        }
        out
    }
}

/// One pairwise term: a lattice, its symmetric normalisation `1/√nᵢ`, and its Potts weight.
struct Kernel {
    lattice: Lattice,
    norm: Vec<f32>,
    weight: f32,
}

impl Kernel {
    fn new(features: &[f32], d: usize, weight: f32) -> Self {
        let lattice = Lattice::new(features, d);
        let ones = vec![1f32; lattice.n];
        let norm = lattice
            .filter(&ones, 1)
            .into_iter()
            .map(|v| 1.0 / (v + 1e-20).sqrt())
            .collect();
        Self {
            lattice,
            norm,
            weight,
        }
    }

    /// `w · k̃ ∗ Q` for `vd` labels.
    fn message(&self, q: &[f32], vd: usize) -> Vec<f32> {
        let scaled: Vec<f32> = q
            .iter()
            .enumerate()
            .map(|(i, v)| v * self.norm[i / vd])
            .collect();
        let mut out = self.lattice.filter(&scaled, vd);
        for (i, v) in out.iter_mut().enumerate() {
            *v *= self.norm[i / vd] * self.weight;
        }
        out
    }
}

/// Position features `(x/sxy, y/sxy)` and, with `rgb`, colour features `(r, g, b)/srgb`.
pub fn features(img: &RgbImage, sxy: f32, srgb: Option<f32>) -> (Vec<f32>, usize) {
    let d = if srgb.is_some() { 5 } else { 2 };
    let mut f = Vec::with_capacity(img.pixels().len() * d);
    for (x, y, p) in img.enumerate_pixels() {
        f.push(x as f32 / sxy);
        f.push(y as f32 / sxy);
        if let Some(s) = srgb {
            f.extend(p.0.iter().map(|&c| c as f32 / s));
        }
    }
    (f, d)
}

/// Mean-field inference: `unary` is `n × labels` energies (−log p), row-major; returns the
/// marginals `Q` in the same layout after `iterations` updates
/// `Q ← softmax(−U + Σ_m w_m k̃_m ∗ Q)` (Potts, as `densecrf` applies it).
pub fn mean_field(
    unary: &[f32],
    labels: usize,
    kernels: &[(&[f32], usize, f32)],
    iterations: u32,
) -> Vec<f32> {
    let ks: Vec<Kernel> = kernels
        .iter()
        .map(|(f, d, w)| Kernel::new(f, *d, *w))
        .collect();
    let mut q = softmax_rows(&unary.iter().map(|u| -u).collect::<Vec<_>>(), labels);
    for _ in 0..iterations {
        let mut e: Vec<f32> = unary.iter().map(|u| -u).collect();
        for k in &ks {
            for (a, m) in e.iter_mut().zip(k.message(&q, labels)) {
                *a += m;
            }
        }
        q = softmax_rows(&e, labels);
    }
    q
}

fn softmax_rows(e: &[f32], labels: usize) -> Vec<f32> {
    let mut out = vec![0f32; e.len()];
    for (row, o) in e.chunks(labels).zip(out.chunks_mut(labels)) {
        let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0.0;
        for (v, x) in o.iter_mut().zip(row) {
            *v = (x - mx).exp();
            s += *v;
        }
        o.iter_mut().for_each(|v| *v /= s);
    }
    out
}

/// Dense-CRF refinement of a normalised CAM (8-bit, `cam / 255`) over its image, for the
/// confidence threshold `threshold`; returns the refined map on the same scale (see the module
/// docs for the calibration). Errors: none — the image and CAM must have the same size
/// (the pseudo stage reads both at the image's size).
pub fn refine_crf(img: &RgbImage, cam: &GrayImage, threshold: f64, p: &CrfConfig) -> GrayImage {
    let t = logit((threshold as f32).clamp(1e-3, 1.0 - 1e-3));
    let eps = 0.5 / 255.0;
    let mut unary = Vec::with_capacity(cam.as_raw().len() * 2);
    for &v in cam.as_raw() {
        let c = (f32::from(v) / 255.0).clamp(eps, 1.0 - eps);
        let pf = 1.0 / (1.0 + (-(logit(c) - t)).exp());
        unary.push(-(1.0 - pf).max(1e-12).ln());
        unary.push(-pf.max(1e-12).ln());
    }
    let (fg, dg) = features(img, p.gaussian_sxy as f32, None);
    let (fb, db) = features(img, p.bilateral_sxy as f32, Some(p.bilateral_srgb as f32));
    let q = mean_field(
        &unary,
        2,
        &[
            (&fg, dg, p.gaussian_weight as f32),
            (&fb, db, p.bilateral_weight as f32),
        ],
        p.iterations,
    );
    let raw = q
        .chunks(2)
        .map(|qi| to_cam_scale(qi[1], threshold))
        .collect();
    GrayImage::from_raw(cam.width(), cam.height(), raw)
        .unwrap_or_else(|| GrayImage::new(cam.width(), cam.height()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [0, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32) / (1u64 << 24) as f32
            })
            .collect()
    }

    /// The exact dense filter `Σ_j exp(−|f_i − f_j|²/2) v_j`.
    fn brute(f: &[f32], d: usize, v: &[f32]) -> Vec<f32> {
        let n = f.len() / d;
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        let d2: f32 = (0..d).map(|k| (f[i * d + k] - f[j * d + k]).powi(2)).sum();
                        (-d2 / 2.0).exp() * v[j]
                    })
                    .sum()
            })
            .collect()
    }

    /// The lattice's normalised Gaussian filter (`k ∗ v / k ∗ 1`, what mean-field uses up to
    /// the symmetric split) against the exact O(N²) one: position kernel (d = 2, σ = 2 px) and
    /// bilateral kernel (d = 5) on a 16×12 image with random colours and values. Measured
    /// largest absolute error 0.015 (position) and 0.086 (bilateral) on values in [0, 1] — the
    /// lattice's known approximation, coarser in more dimensions; `tests/crf.rs` shows the
    /// implementation equals the authors' (which makes the same approximation) to 5·10⁻⁶.
    #[test]
    fn lattice_filter_approximates_the_exact_gaussian_filter() {
        let (w, h) = (16u32, 12u32);
        let col = noise((w * h * 3) as usize, 1);
        let img = RgbImage::from_fn(w, h, |x, y| {
            let i = ((y * w + x) * 3) as usize;
            image::Rgb(
                [0, 1, 2].map(|c| (col[i + c] * 80.0 + if x < 8 { 40.0 } else { 160.0 }) as u8),
            )
        });
        let v = noise((w * h) as usize, 2);
        for (sxy, srgb, bound) in [(2.0f32, None, 0.02f32), (6.0, Some(20.0f32), 0.1)] {
            let (f, d) = features(&img, sxy, srgb);
            let lat = Lattice::new(&f, d);
            let ones = vec![1f32; v.len()];
            let (num, den) = (lat.filter(&v, 1), lat.filter(&ones, 1));
            let (bn, bd) = (brute(&f, d, &v), brute(&f, d, &ones));
            let err = (0..v.len())
                .map(|i| (num[i] / den[i] - bn[i] / bd[i]).abs())
                .fold(0f32, f32::max);
            eprintln!("d = {d}: largest error of the normalised filter {err:.4}");
            assert!(err < bound, "d = {d}: {err}");
        }
    }

    /// A blurred CAM over a sharp two-colour image: the CRF moves the thresholded boundary to
    /// the colour edge (column 20), where the plain threshold leaves it 6 columns off.
    #[test]
    fn crf_snaps_a_blurred_cam_to_the_colour_edge() {
        let (w, h) = (48u32, 32u32);
        let img = RgbImage::from_fn(w, h, |x, _| {
            if x < 20 {
                image::Rgb([120, 40, 140])
            } else {
                image::Rgb([235, 200, 225])
            }
        });
        // CAM = 0.7 at column 26: a threshold at 0.70 puts the edge 6 columns right of the
        // colour edge, as an upsampled stride-16 CAM does.
        let cam = GrayImage::from_fn(w, h, |x, _| {
            let v = 1.0 / (1.0 + ((x as f32 - 26.0) / 3.0).exp());
            let v = 0.7 + (v - 0.5) * 0.9;
            image::Luma([(v.clamp(0.0, 1.0) * 255.0).round() as u8])
        });
        let edge = |m: &GrayImage| {
            (0..w)
                .find(|&x| f64::from(m.get_pixel(x, h / 2).0[0]) / 255.0 < 0.7)
                .unwrap_or(w)
        };
        assert_eq!(edge(&cam), 27);
        let refined = refine_crf(&img, &cam, 0.7, &CrfConfig::default());
        assert_eq!(edge(&refined), 20);
    }

    /// Mean-field with the lattice against mean-field with the exact dense filter, on a tiny
    /// image: the labels agree everywhere and the marginals within 0.05.
    #[test]
    fn mean_field_matches_an_exact_dense_implementation() {
        let (w, h) = (14u32, 10u32);
        let img = RgbImage::from_fn(w, h, |x, y| {
            if (x as i32 - 6).pow(2) + (y as i32 - 5).pow(2) < 12 {
                image::Rgb([90, 30, 120])
            } else {
                image::Rgb([230, 190, 220])
            }
        });
        let n = (w * h) as usize;
        let p = noise(n, 3);
        let unary: Vec<f32> = p
            .iter()
            .flat_map(|&v| {
                let q = 0.2 + 0.6 * v;
                [-(1.0 - q).ln(), -q.ln()]
            })
            .collect();
        let (fg, dg) = features(&img, 3.0, None);
        let (fb, db) = features(&img, 8.0, Some(13.0));
        let q = mean_field(&unary, 2, &[(&fg, dg, 3.0), (&fb, db, 10.0)], 5);
        // exact: the same updates with the O(N²) filter and the same normalisation
        let exact_msg = |f: &[f32], d: usize, w: f32, q: &[f32]| -> Vec<f32> {
            let norm: Vec<f32> = brute(f, d, &vec![1.0; n])
                .iter()
                .map(|v| 1.0 / v.sqrt())
                .collect();
            let mut out = vec![0f32; 2 * n];
            for c in 0..2 {
                let v: Vec<f32> = (0..n).map(|i| q[i * 2 + c] * norm[i]).collect();
                for (i, m) in brute(f, d, &v).into_iter().enumerate() {
                    out[i * 2 + c] = m * norm[i] * w;
                }
            }
            out
        };
        let mut qe = softmax_rows(&unary.iter().map(|u| -u).collect::<Vec<_>>(), 2);
        for _ in 0..5 {
            let mut e: Vec<f32> = unary.iter().map(|u| -u).collect();
            for (f, d, w) in [(&fg, dg, 3.0f32), (&fb, db, 10.0)] {
                for (a, m) in e.iter_mut().zip(exact_msg(f, d, w, &qe)) {
                    *a += m;
                }
            }
            qe = softmax_rows(&e, 2);
        }
        let err = q
            .iter()
            .zip(&qe)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("largest marginal difference lattice vs exact: {err:.4}");
        assert!(err < 0.05, "{err}");
        for i in 0..n {
            assert_eq!(q[2 * i + 1] > 0.5, qe[2 * i + 1] > 0.5, "pixel {i}");
        }
    }
}
