//! `cam.refine = "haematoxylin"`: a nuclear-density prior on the CAM. Glands are sheets of
//! epithelial nuclei around a lumen; stroma holds scattered nuclei in eosin. The haematoxylin
//! channel (colour deconvolution, Ruifrok & Johnston 2001 — the channel and the Otsu rule of
//! the Otsu baseline, [`crate::metrics::baselines`]) smoothed by a Gaussian of a few nucleus
//! diameters is high over glands and low over stroma and white space; cut at its Otsu
//! threshold per image, it says *where within a positive image* the foreground can be, which
//! the CAM of an image-level classifier says poorly (on GlaS under the talk's protocol, the
//! CAM ranks gland pixels above other pixels of the same malignant tile little better than
//! chance; reports/glas).
//!
//! The refined map is the CAM where the smoothed channel is above its threshold and 0
//! elsewhere, so `cam.threshold` keeps its meaning inside the prior: at 0 the pseudo label of a
//! positive image is the prior alone, at the talk's 0.70 the confident CAM within it. An image
//! whose smoothed channel is flat (no threshold splits it) keeps its CAM, counted as a
//! fallback.

use image::{GrayImage, ImageBuffer, Luma};

use super::{image_of, Needs, RefineInput, Refined, Refiner};
use crate::config::HaematoxylinConfig;
use crate::error::Result;
use crate::metrics::baselines::{haematoxylin, otsu_threshold};

/// The nuclear-density prior with its settings.
pub struct Haematoxylin(pub HaematoxylinConfig);

/// Where the haematoxylin channel of `img`, smoothed by a Gaussian of standard deviation
/// `sigma` pixels (edges replicated), is above its Otsu threshold: `true` per pixel, row-major.
/// `None` when the smoothed channel is flat (nothing to split).
pub fn nuclear_density_prior(img: &image::RgbImage, sigma: f64) -> Option<Vec<bool>> {
    let (w, h) = img.dimensions();
    let channel: ImageBuffer<Luma<f32>, Vec<f32>> = ImageBuffer::from_raw(w, h, haematoxylin(img))?;
    let smooth = image::imageops::blur(&channel, sigma as f32).into_raw();
    let (lo, hi) = smooth
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let t = otsu_threshold(&smooth);
    Some(smooth.iter().map(|&v| v > t).collect())
}

impl Refiner for Haematoxylin {
    fn name(&self) -> &'static str {
        "haematoxylin"
    }
    fn needs(&self) -> Needs {
        Needs::IMAGE
    }
    fn fallback_note(&self) -> &'static str {
        "kept the CAM: the smoothed haematoxylin channel was flat"
    }
    fn refine(&self, input: &RefineInput) -> Result<Refined> {
        let img = image_of(input, self.name())?;
        let Some(prior) = nuclear_density_prior(img, self.0.sigma) else {
            return Ok(Refined {
                map: input.cam.clone(),
                fallback: true,
            });
        };
        let (w, h) = input.cam.dimensions();
        let map: Vec<u8> = input
            .cam
            .as_raw()
            .iter()
            .zip(&prior)
            .map(|(&c, &keep)| if keep { c } else { 0 })
            .collect();
        let map = GrayImage::from_raw(w, h, map).unwrap_or_else(|| GrayImage::new(w, h));
        Ok(Refined::new(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Haematoxylin-rich purple on the left of column `edge`, eosin pink on the right.
    fn two_stains(w: u32, h: u32, edge: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, _| {
            if x < edge {
                image::Rgb([60, 40, 120])
            } else {
                image::Rgb([240, 170, 200])
            }
        })
    }

    fn input<'a>(cam: &'a GrayImage, img: &'a image::RgbImage) -> RefineInput<'a> {
        RefineInput {
            cam,
            image: Some(img),
            features: None,
            threshold: 0.0,
            seed: 0,
        }
    }

    #[test]
    fn the_cam_is_kept_over_nuclei_and_cleared_over_stroma() {
        let (w, h, sigma) = (64u32, 16u32, 2.0);
        let img = two_stains(w, h, 24);
        // A CAM that varies along both axes, so that "kept" means the same value.
        let cam = GrayImage::from_fn(w, h, |x, y| Luma([(3 * x + y + 10) as u8]));
        let r = Haematoxylin(HaematoxylinConfig { sigma })
            .refine(&input(&cam, &img))
            .unwrap();
        assert!(!r.fallback);
        for y in 0..h {
            for x in 0..w {
                let got = r.map.get_pixel(x, y).0[0];
                // Three sigmas from the stain edge the smoothed channel is on its plateau: the
                // purple side is above Otsu's cut (which falls between the plateaus), the pink
                // side below.
                if x + 6 <= 24 {
                    assert_eq!(got, cam.get_pixel(x, y).0[0], "({x}, {y})");
                } else if x >= 24 + 6 {
                    assert_eq!(got, 0, "({x}, {y})");
                } else {
                    assert!(got == 0 || got == cam.get_pixel(x, y).0[0], "({x}, {y})");
                }
            }
        }
        // The cut is a column: the rows agree, and it lies at the edge within a pixel (the
        // plateaus are symmetric about the threshold's bin).
        let kept: Vec<u32> = (0..h)
            .map(|y| (0..w).filter(|&x| r.map.get_pixel(x, y).0[0] > 0).count() as u32)
            .collect();
        assert!(kept.iter().all(|&k| k == kept[0]), "{kept:?}");
        assert!((23..=25).contains(&kept[0]), "{kept:?}");
    }

    #[test]
    fn a_flat_image_keeps_its_cam_as_a_fallback() {
        let img = image::RgbImage::from_pixel(20, 10, image::Rgb([200, 120, 180]));
        let cam = GrayImage::from_fn(20, 10, |x, _| Luma([x as u8 * 10]));
        let r = Haematoxylin(HaematoxylinConfig::default())
            .refine(&input(&cam, &img))
            .unwrap();
        assert!(r.fallback);
        assert_eq!(r.map, cam);
    }

    #[test]
    fn the_prior_only_removes_foreground() {
        // Property: refined ≤ CAM everywhere, equal where kept, for arbitrary images.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..20 {
            let (w, h) = (rng.random_range(5..40), rng.random_range(5..40));
            let img = image::RgbImage::from_fn(w, h, |_, _| {
                image::Rgb([rng.random(), rng.random(), rng.random()])
            });
            let cam = GrayImage::from_fn(w, h, |x, y| Luma([((x * 7 + y * 13) % 256) as u8]));
            let sigma = rng.random_range(0.5..6.0);
            let r = Haematoxylin(HaematoxylinConfig { sigma })
                .refine(&input(&cam, &img))
                .unwrap();
            for (a, b) in r.map.as_raw().iter().zip(cam.as_raw()) {
                assert!(*a == *b || *a == 0);
            }
        }
    }

    #[test]
    fn a_missing_or_mis_sized_image_is_an_error() {
        let cam = GrayImage::new(8, 8);
        let m = Haematoxylin(HaematoxylinConfig::default());
        let img = cam_sized(8, 8);
        let mut i = input(&cam, &img);
        i.image = None;
        assert!(m.refine(&i).is_err());
        let small = cam_sized(4, 8);
        assert!(m.refine(&input(&cam, &small)).is_err());
    }

    fn cam_sized(w: u32, h: u32) -> image::RgbImage {
        two_stains(w, h, w / 2)
    }
}
