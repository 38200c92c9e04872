//! Baselines scored beside the weakly supervised segmenter, so that a number means something:
//! the trivial all-background / all-foreground predictions, and an Otsu threshold on the
//! haematoxylin channel (colour deconvolution, Ruifrok & Johnston 2001) — what a colour rule
//! gets without any learning.

use image::{GrayImage, RgbImage};

/// Inverse of the stain matrix (rows: haematoxylin, eosin, DAB optical densities of R, G, B),
/// as in scikit-image's `hed_from_rgb`; column 0 maps optical density to haematoxylin.
const HED_FROM_RGB: [[f32; 3]; 3] = [
    [1.877_982_7, -1.007_678_7, -0.556_115_8],
    [-0.065_908_06, 1.134_730_4, -0.135_521_8],
    [-0.601_907_4, -0.480_414_2, 1.573_588_1],
];

/// Haematoxylin concentration per pixel: optical density `-ln(max(rgb/255, 1e-6))` projected
/// on the haematoxylin stain (higher = more haematoxylin = nuclei).
pub fn haematoxylin(img: &RgbImage) -> Vec<f32> {
    img.pixels()
        .map(|p| {
            (0..3)
                .map(|c| -((f32::from(p.0[c]) / 255.0).max(1e-6)).ln() * HED_FROM_RGB[c][0])
                .sum()
        })
        .collect()
}

/// Otsu's threshold of `values` over a 256-bin histogram between their min and max: the value
/// that maximises the between-class variance. Pixels `> t` are the upper class.
pub fn otsu_threshold(values: &[f32]) -> f32 {
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return lo;
    }
    const BINS: usize = 256;
    let width = (hi - lo) / BINS as f32;
    let mut hist = [0u64; BINS];
    for &v in values.iter().filter(|v| v.is_finite()) {
        hist[(((v - lo) / width) as usize).min(BINS - 1)] += 1;
    }
    let total: u64 = hist.iter().sum();
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &n)| i as f64 * n as f64)
        .sum();
    let (mut w0, mut sum0) = (0u64, 0f64);
    let (mut best, mut best_var) = (0usize, -1f64);
    for (i, &n) in hist.iter().enumerate() {
        w0 += n;
        sum0 += i as f64 * n as f64;
        let w1 = total - w0;
        if w0 == 0 || w1 == 0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0 as f64, (sum_all - sum0) / w1 as f64);
        let var = w0 as f64 * w1 as f64 * (m0 - m1) * (m0 - m1);
        if var > best_var {
            best_var = var;
            best = i;
        }
    }
    // upper edge of the last bin of the lower class
    lo + width * (best as f32 + 1.0)
}

/// The Otsu baseline: foreground (1) where the haematoxylin channel exceeds its Otsu threshold.
pub fn otsu_haematoxylin(img: &RgbImage) -> GrayImage {
    let h = haematoxylin(img);
    let t = otsu_threshold(&h);
    GrayImage::from_raw(
        img.width(),
        img.height(),
        h.iter().map(|&v| u8::from(v > t)).collect(),
    )
    .unwrap_or_else(|| GrayImage::new(img.width(), img.height()))
}

/// A constant label map (the trivial baselines).
pub fn constant(width: u32, height: u32, label: u8) -> GrayImage {
    GrayImage::from_pixel(width, height, image::Luma([label]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// The RGB colour of `k` units of a pure stain (a row of the stain matrix).
    fn stain(row: [f32; 3], k: f32) -> Rgb<u8> {
        Rgb(row.map(|od| ((-k * od).exp() * 255.0).round() as u8))
    }

    #[test]
    fn deconvolution_separates_pure_stains() {
        let h_row = [0.65, 0.70, 0.29];
        let e_row = [0.07, 0.99, 0.11];
        let img = RgbImage::from_fn(3, 1, |x, _| match x {
            0 => stain(h_row, 1.0),
            1 => stain(e_row, 1.0),
            _ => Rgb([255, 255, 255]),
        });
        let h = haematoxylin(&img);
        // pure haematoxylin reads ≈ 1 unit (8-bit rounding), eosin and white ≈ 0
        assert!((h[0] - 1.0).abs() < 0.02, "{h:?}");
        assert!(h[1].abs() < 0.02, "{h:?}");
        assert!(h[2].abs() < 1e-6, "{h:?}");
    }

    #[test]
    fn otsu_splits_two_clusters() {
        let mut v = vec![0.1f32; 300];
        v.extend(vec![0.9f32; 100]);
        v.extend([0.12, 0.88, 0.15]);
        let t = otsu_threshold(&v);
        assert!(t > 0.15 && t < 0.88, "{t}");
        assert_eq!(otsu_threshold(&[0.5, 0.5]), 0.5);
        // nuclei (haematoxylin) against pink stroma
        let img = RgbImage::from_fn(8, 8, |x, _| {
            if x < 3 {
                stain([0.65, 0.70, 0.29], 1.2)
            } else {
                stain([0.07, 0.99, 0.11], 0.6)
            }
        });
        let m = otsu_haematoxylin(&img);
        for (x, _, p) in m.enumerate_pixels() {
            assert_eq!(p.0[0], u8::from(x < 3));
        }
    }
}
