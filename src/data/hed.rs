//! H&E colour deconvolution and HED stain augmentation: an image's optical density split onto
//! the haematoxylin, eosin and DAB stain vectors, each stain's amount perturbed, and the image
//! recomposed — a stain change as a different lab or scanner makes it, not a tint.
//!
//! Deconvolution follows Ruifrok & Johnston, "Quantification of histochemical staining by color
//! deconvolution" (Anal. Quant. Cytol. Histol. 2001) exactly as scikit-image's `rgb2hed` /
//! `hed2rgb` compute it (the same stain matrix `rgb_from_hed`, its inverse, the same 10⁻⁶
//! floor; `tests/stain.rs` checks against scikit-image). The augmentation is Tellez et al.'s HED
//! jitter ("Quantifying the effects of data augmentation and stain color normalization in
//! convolutional neural networks for computational pathology", Medical Image Analysis 2019):
//! per image and stain, `s' = α·s + β` with `α ~ U(1 − σ, 1 + σ)` and `β ~ U(−σ, σ)`. Their
//! "HED-light" is σ = 0.05, "HED-strong" σ = 0.2. The amounts `s` are optical densities (natural
//! log; scikit-image's values × ln 10⁶): that unit is this project's choice, which fixes what
//! the shift β means — whether it equals the unit of Tellez et al.'s own code is not checked
//! (the scale α is unit-free).

use image::RgbImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::LazyLock;

/// Stain vectors, rows H, E, DAB over optical density in R, G, B (scikit-image's
/// `rgb_from_hed`).
const RGB_FROM_HED: [[f64; 3]; 3] = [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]];

/// Smallest intensity (of 1) whose logarithm is taken, as scikit-image's.
const FLOOR: f64 = 1e-6;

/// The inverse of a 3×3 matrix (cofactors over the determinant).
fn inverse(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let c = |r: usize, k: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (k1, k2) = ((k + 1) % 3, (k + 2) % 3);
        m[r1][k1] * m[r2][k2] - m[r1][k2] * m[r2][k1]
    };
    let det = m[0][0] * c(0, 0) + m[0][1] * c(0, 1) + m[0][2] * c(0, 2);
    let mut inv = [[0.0; 3]; 3];
    for (r, row) in inv.iter_mut().enumerate() {
        for (k, v) in row.iter_mut().enumerate() {
            *v = c(k, r) / det;
        }
    }
    inv
}

/// Colour deconvolution of 8-bit RGB pixels onto H, E and DAB, and back.
#[derive(Debug, Clone)]
pub struct Deconvolution {
    /// `-ln(max(v / 255, 10⁻⁶))` of every 8-bit value: the optical density of one channel.
    od: [f64; 256],
    /// `RGB_FROM_HED⁻¹` (scikit-image's `hed_from_rgb`).
    hed_from_rgb: [[f64; 3]; 3],
}

impl Default for Deconvolution {
    fn default() -> Self {
        Self::new()
    }
}

impl Deconvolution {
    /// The H&E-DAB deconvolution of scikit-image.
    pub fn new() -> Self {
        let mut od = [0.0; 256];
        for (v, o) in od.iter_mut().enumerate() {
            *o = -(v as f64 / 255.0).max(FLOOR).ln();
        }
        Self {
            od,
            hed_from_rgb: inverse(&RGB_FROM_HED),
        }
    }

    /// Stain amounts (H, E, DAB) of an 8-bit RGB pixel in optical density units (natural log),
    /// clamped at 0. scikit-image's `rgb2hed` returns these divided by ln 10⁶.
    pub fn to_hed(&self, rgb: [u8; 3]) -> [f64; 3] {
        let od = rgb.map(|v| self.od[v as usize]);
        let mut s = [0.0; 3];
        for (j, s) in s.iter_mut().enumerate() {
            *s = (0..3)
                .map(|c| od[c] * self.hed_from_rgb[c][j])
                .sum::<f64>()
                .max(0.0);
        }
        s
    }

    /// The RGB intensities (of 1, clipped to [0, 1]) of stain amounts in optical density
    /// units: `exp(−s · RGB_FROM_HED)`, scikit-image's `hed2rgb` of `s / ln 10⁶`.
    pub fn to_rgb(&self, s: [f64; 3]) -> [f64; 3] {
        let mut rgb = [0.0; 3];
        for (c, v) in rgb.iter_mut().enumerate() {
            let od: f64 = (0..3).map(|j| s[j] * RGB_FROM_HED[j][c]).sum();
            *v = (-od).exp().clamp(0.0, 1.0);
        }
        rgb
    }
}

/// scikit-image's H&E-DAB deconvolution, built once.
pub fn deconvolution() -> &'static Deconvolution {
    static DEC: LazyLock<Deconvolution> = LazyLock::new(Deconvolution::new);
    &DEC
}

/// One draw of the HED jitter: each stain's amount scaled by `alpha` and shifted by `beta`
/// (optical density units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedJitter {
    /// Scale of H, E, DAB.
    pub alpha: [f64; 3],
    /// Shift of H, E, DAB (optical density).
    pub beta: [f64; 3],
}

impl HedJitter {
    /// Draw `α ~ U(1 − σ, 1 + σ)`, `β ~ U(−σ, σ)` per stain (six draws in the order α_H, α_E,
    /// α_D, β_H, β_E, β_D). `sigma` ≥ 0; 0 is the identity.
    pub fn sample(sigma: f64, rng: &mut ChaCha8Rng) -> Self {
        let mut draw = |lo: f64, hi: f64| {
            if sigma > 0.0 {
                rng.random_range(lo..=hi)
            } else {
                lo
            }
        };
        let alpha = [(); 3].map(|_| draw(1.0 - sigma, 1.0 + sigma));
        let beta = [(); 3].map(|_| draw(-sigma, sigma));
        Self { alpha, beta }
    }

    /// Apply to every pixel of `img` in place: deconvolve, `α·s + β`, recompose, round to 8
    /// bits.
    pub fn apply(&self, dec: &Deconvolution, img: &mut RgbImage) {
        for p in img.pixels_mut() {
            let s = dec.to_hed(p.0);
            let s = [0, 1, 2].map(|j| self.alpha[j] * s[j] + self.beta[j]);
            p.0 = dec.to_rgb(s).map(|v| (v * 255.0).round() as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_inverse_inverts() {
        let inv = inverse(&RGB_FROM_HED);
        for (r, row) in RGB_FROM_HED.iter().enumerate() {
            let product = [0, 1, 2].map(|k| (0..3).map(|j| row[j] * inv[j][k]).sum::<f64>());
            for (k, v) in product.iter().enumerate() {
                assert!((v - f64::from(u8::from(r == k))).abs() < 1e-12);
            }
        }
        // scikit-image 0.26's hed_from_rgb, first row
        assert!((inv[0][0] - 1.877_982_74).abs() < 1e-8);
        assert!((inv[0][1] + 1.007_678_69).abs() < 1e-8);
        assert!((inv[0][2] + 0.556_115_82).abs() < 1e-8);
    }

    #[test]
    fn deconvolution_round_trips_and_white_is_no_stain() {
        let dec = Deconvolution::new();
        assert_eq!(dec.to_hed([255, 255, 255]), [0.0; 3]);
        for rgb in [[200u8, 120, 190], [90, 40, 140], [240, 220, 235]] {
            // all three stains positive for these H&E-like colours: no clamp, so the round trip
            // is exact up to rounding
            let back = dec
                .to_rgb(dec.to_hed(rgb))
                .map(|v| (v * 255.0).round() as u8);
            for c in 0..3 {
                assert!(
                    (back[c] as i32 - rgb[c] as i32).abs() <= 1,
                    "{rgb:?} -> {back:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_of_strength_zero_is_the_identity_and_more_eosin_is_pinker() {
        let dec = Deconvolution::new();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let id = HedJitter::sample(0.0, &mut rng);
        assert_eq!(
            id,
            HedJitter {
                alpha: [1.0; 3],
                beta: [0.0; 3]
            }
        );
        let img = RgbImage::from_fn(4, 4, |x, y| image::Rgb([200, 120 + x as u8, 190 + y as u8]));
        let mut same = img.clone();
        id.apply(&dec, &mut same);
        let diff = img
            .as_raw()
            .iter()
            .zip(same.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max();
        assert!(diff <= Some(1));
        // doubling eosin darkens green (eosin absorbs green most) more than red
        let mut pink = img.clone();
        HedJitter {
            alpha: [1.0, 2.0, 1.0],
            beta: [0.0; 3],
        }
        .apply(&dec, &mut pink);
        let (a, b) = (img.get_pixel(0, 0).0, pink.get_pixel(0, 0).0);
        assert!(
            b[1] < a[1] && (a[1] - b[1]) > (a[0] - b[0]),
            "{a:?} -> {b:?}"
        );
    }
}
