//! Stain normalisation: every image's colours are mapped onto the statistics of the training
//! images, so a network trained on some labs' H&E staining sees other stainings (darker
//! patients, another scanner) as it saw its training tiles.
//!
//! Reinhard et al., "Color transfer between images" (IEEE CG&A 2001), in CIE L\*a\*b\* as
//! histopathology uses it (staintools' and torchstain's `ReinhardNormalizer`): per channel,
//! `x' = (x − μ_image) / σ_image · σ_target + μ_target`. The target is fitted on the training
//! split's images only (the mean over those images of their per-image means and standard
//! deviations) by the data stage, recorded in the run (`stain.json`) and applied by the image
//! loader to every image every stage reads — and by `wsss predict` to new images. Colour
//! conversion is `palette`'s (sRGB, D65).

use image::RgbImage;
use palette::{IntoColor, Lab, Srgb};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// A fitted Reinhard normaliser: the target's L\*a\*b\* channel means and standard deviations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reinhard {
    /// Target mean of L\* (0–100), a\*, b\*.
    pub mean: [f32; 3],
    /// Target standard deviation of L\*, a\*, b\*.
    pub std: [f32; 3],
    /// Images the target was fitted on.
    pub images: usize,
}

/// Smallest standard deviation an image channel is divided by (a flat channel stays flat).
const MIN_STD: f32 = 1e-3;

/// The L\*a\*b\* pixels of an image.
fn to_lab(img: &RgbImage) -> Vec<[f32; 3]> {
    img.as_raw()
        .par_chunks_exact(3)
        .map(|p| {
            let lab: Lab = Srgb::new(p[0], p[1], p[2])
                .into_format::<f32>()
                .into_color();
            [lab.l, lab.a, lab.b]
        })
        .collect()
}

/// Per-channel mean and (population) standard deviation of L\*a\*b\* pixels.
pub fn lab_stats(img: &RgbImage) -> ([f32; 3], [f32; 3]) {
    stats(&to_lab(img))
}

fn stats(lab: &[[f32; 3]]) -> ([f32; 3], [f32; 3]) {
    let n = lab.len().max(1) as f64;
    let mut mean = [0f64; 3];
    for p in lab {
        for c in 0..3 {
            mean[c] += p[c] as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = [0f64; 3];
    for p in lab {
        for c in 0..3 {
            var[c] += (p[c] as f64 - mean[c]).powi(2);
        }
    }
    (mean.map(|m| m as f32), var.map(|v| (v / n).sqrt() as f32))
}

impl Reinhard {
    /// Fit the target on `images` (the training split's): the mean of their per-image channel
    /// means and standard deviations. `None` for no images.
    pub fn fit<'a>(images: impl IntoIterator<Item = &'a RgbImage>) -> Option<Self> {
        let (mut mean, mut std, mut n) = ([0f64; 3], [0f64; 3], 0usize);
        for img in images {
            let (m, s) = lab_stats(img);
            for c in 0..3 {
                mean[c] += m[c] as f64;
                std[c] += s[c] as f64;
            }
            n += 1;
        }
        (n > 0).then(|| Self {
            mean: mean.map(|v| (v / n as f64) as f32),
            std: std.map(|v| (v / n as f64) as f32),
            images: n,
        })
    }

    /// Map `img`'s L\*a\*b\* statistics onto the target's, in place (colours outside sRGB are
    /// clipped).
    pub fn apply(&self, img: &mut RgbImage) {
        let lab = to_lab(img);
        let (m, s) = stats(&lab);
        let scale: [f32; 3] = std::array::from_fn(|c| self.std[c] / s[c].max(MIN_STD));
        img.as_mut()
            .par_chunks_exact_mut(3)
            .zip(lab.par_iter())
            .for_each(|(px, p)| {
                let v: [f32; 3] = std::array::from_fn(|c| (p[c] - m[c]) * scale[c] + self.mean[c]);
                let rgb: Srgb = Lab::new(v[0], v[1], v[2]).into_color();
                let rgb: Srgb<u8> = rgb.into_format();
                px.copy_from_slice(&[rgb.red, rgb.green, rgb.blue]);
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Textbook sRGB → CIE L*a*b* (D65) values.
    #[test]
    fn lab_of_known_colours() {
        let lab = |r, g, b| to_lab(&RgbImage::from_pixel(1, 1, image::Rgb([r, g, b])))[0];
        let close = |x: [f32; 3], y: [f32; 3]| x.iter().zip(y).all(|(a, b)| (a - b).abs() < 0.05);
        assert!(
            close(lab(255, 255, 255), [100.0, 0.0, 0.0]),
            "{:?}",
            lab(255, 255, 255)
        );
        assert!(close(lab(0, 0, 0), [0.0, 0.0, 0.0]));
        assert!(
            close(lab(255, 0, 0), [53.24, 80.09, 67.20]),
            "{:?}",
            lab(255, 0, 0)
        );
        assert!(
            close(lab(0, 0, 255), [32.30, 79.19, -107.86]),
            "{:?}",
            lab(0, 0, 255)
        );
    }

    fn tile(seed: u32, tint: [f32; 3]) -> RgbImage {
        RgbImage::from_fn(40, 30, |x, y| {
            let v = ((x * 7 + y * 13 + seed * 31) % 97) as f32 / 96.0;
            image::Rgb(std::array::from_fn(|c| {
                (60.0 + 150.0 * v * tint[c]).clamp(0.0, 255.0) as u8
            }))
        })
    }

    /// Normalised, an image has the target's statistics (up to 8-bit rounding); a target
    /// fitted on one image maps that image onto itself.
    #[test]
    fn normalised_images_take_the_target_statistics() {
        let pink = tile(1, [1.0, 0.55, 0.9]);
        let dark = tile(2, [0.5, 0.3, 0.6]);
        let t = Reinhard::fit([&pink]).unwrap();
        assert_eq!(t.images, 1);
        let mut same = pink.clone();
        t.apply(&mut same);
        let diff = same
            .as_raw()
            .iter()
            .zip(pink.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(diff <= 1, "round trip moved a channel by {diff}");
        let mut d = dark.clone();
        t.apply(&mut d);
        let (m, s) = lab_stats(&d);
        for c in 0..3 {
            assert!(
                (m[c] - t.mean[c]).abs() < 0.5,
                "mean {c}: {m:?} vs {:?}",
                t.mean
            );
            assert!(
                (s[c] - t.std[c]).abs() < 0.5,
                "std {c}: {s:?} vs {:?}",
                t.std
            );
        }
        // The fit over several images averages their per-image statistics.
        let t2 = Reinhard::fit([&pink, &dark]).unwrap();
        let (mp, sp) = lab_stats(&pink);
        let (md, sd) = lab_stats(&dark);
        for c in 0..3 {
            assert!((t2.mean[c] - (mp[c] + md[c]) / 2.0).abs() < 1e-4);
            assert!((t2.std[c] - (sp[c] + sd[c]) / 2.0).abs() < 1e-4);
        }
        assert!(Reinhard::fit(std::iter::empty()).is_none());
    }
}
