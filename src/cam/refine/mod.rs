//! The pseudo-label step's one seam: a [`Refiner`] takes the normalised CAM of a positive
//! image (and whatever else it declares in [`Needs`]: the image, the classifier's feature map)
//! and returns a refined map on the CAM's own scale; [`label`] then applies the talk's
//! confidence-threshold rule, so every method keeps the meaning of `cam.threshold` and of the
//! ignore band (`cam.background_threshold`).
//!
//! The methods, one file each (`cam.refine`):
//! - `none`: the CAM as it is ([`Unrefined`]);
//! - `slic` ([`slic`]): SLIC superpixel voting;
//! - `crf` ([`crf`]): the fully connected CRF of Krähenbühl & Koltun (2011);
//! - `gcn` ([`gcn`]): a graph convolutional network over superpixels trained on the confident
//!   CAM (Kipf & Welling 2017; Pan et al., ICME 2021);
//! - `haematoxylin` ([`haematoxylin`]): the CAM kept within a nuclear-density prior (the
//!   smoothed haematoxylin channel above its Otsu threshold).
//!
//! A new method (random walk, SAM prompts, …) is one more file implementing [`Refiner`] and one
//! arm in [`refiner`]; the pseudo stage reads only [`Needs`].

pub mod crf;
pub mod gcn;
pub mod haematoxylin;
pub mod slic;

use image::{GrayImage, RgbImage};

use crate::config::{CrfConfig, GcnConfig, HaematoxylinConfig, Refine};
use crate::error::{Error, Result};

/// What a method reads besides the CAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// The RGB image, at the CAM's size.
    pub image: bool,
    /// The classifier's feature map of the image ([`FeatureMap`]).
    pub features: bool,
}

impl Needs {
    /// The image only (SLIC, CRF).
    pub const IMAGE: Needs = Needs {
        image: true,
        features: false,
    };
}

/// A classifier feature map covering the whole image: `channels × height × width`, row-major
/// per channel (the grid of the block the CAM reads; `height`/`width` in cells, not pixels).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMap {
    /// Channels.
    pub channels: usize,
    /// Grid rows.
    pub height: usize,
    /// Grid columns.
    pub width: usize,
    /// `channels · height · width` values.
    pub data: Vec<f32>,
}

/// One image's inputs to a [`Refiner`].
#[derive(Clone, Copy)]
pub struct RefineInput<'a> {
    /// Normalised CAM, 8-bit (`value / 255`), at the image's size.
    pub cam: &'a GrayImage,
    /// The image, when [`Needs::image`].
    pub image: Option<&'a RgbImage>,
    /// The classifier's feature map, when [`Needs::features`].
    pub features: Option<&'a FeatureMap>,
    /// `cam.threshold`: the refined map must keep `value ≥ threshold` as the foreground rule.
    pub threshold: f64,
    /// Seed of any randomness in the method (per image: derived from `train.seed` and the
    /// sample id by the caller).
    pub seed: u64,
}

/// A refined map and whether the method fell back to a simpler rule on this image (e.g. the
/// GCN with seeds of one class only); the pseudo stage counts fallbacks and says so.
#[derive(Debug, Clone)]
pub struct Refined {
    /// Same size and scale as the input CAM.
    pub map: GrayImage,
    /// The method could not run as declared on this image.
    pub fallback: bool,
}

impl Refined {
    /// A map computed as declared (no fallback).
    pub fn new(map: GrayImage) -> Self {
        Self {
            map,
            fallback: false,
        }
    }
}

/// A pseudo-label method (see the module docs).
pub trait Refiner: Send + Sync {
    /// The `cam.refine` value.
    fn name(&self) -> &'static str;
    /// What [`Refiner::refine`] reads besides the CAM.
    fn needs(&self) -> Needs;
    /// The refined map of a positive image. Errors: an input it [`Needs`] is missing or has
    /// another size than the CAM.
    fn refine(&self, input: &RefineInput) -> Result<Refined>;
    /// What a [`Refined::fallback`] of this method did and why, for the pseudo stage's warning.
    fn fallback_note(&self) -> &'static str {
        "the method could not run as declared"
    }
}

/// `cam.refine = "none"`: the CAM unchanged.
pub struct Unrefined;

impl Refiner for Unrefined {
    fn name(&self) -> &'static str {
        "none"
    }
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn refine(&self, input: &RefineInput) -> Result<Refined> {
        Ok(Refined::new(input.cam.clone()))
    }
}

/// The settings of every method; a method reads its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// `[cam.crf]`.
    pub crf: CrfConfig,
    /// `[cam.gcn]`.
    pub gcn: GcnConfig,
    /// `[cam.haematoxylin]`.
    pub haematoxylin: HaematoxylinConfig,
}

/// The method of `cam.refine` with its settings.
pub fn refiner(method: Refine, s: &Settings) -> Box<dyn Refiner> {
    match method {
        Refine::None => Box::new(Unrefined),
        Refine::Slic => Box::new(slic::Slic),
        Refine::Crf => Box::new(crf::DenseCrf(s.crf)),
        Refine::Gcn => Box::new(gcn::Gcn(s.gcn)),
        Refine::Haematoxylin => Box::new(haematoxylin::Haematoxylin(s.haematoxylin)),
    }
}

/// The image a method needs, checked against the CAM's size.
pub fn image_of<'a>(input: &RefineInput<'a>, method: &str) -> Result<&'a RgbImage> {
    let img = input.image.ok_or_else(|| {
        Error::stage(
            "pseudo",
            format!("cam.refine = \"{method}\" needs the image"),
        )
    })?;
    if img.dimensions() != input.cam.dimensions() {
        return Err(Error::stage(
            "pseudo",
            format!(
                "the CAM is {:?} but its image is {:?}; cam.refine = \"{method}\" needs both at the image's size",
                input.cam.dimensions(),
                img.dimensions()
            ),
        ));
    }
    Ok(img)
}

/// The pseudo label of one image: for a positive image the refined map under the threshold
/// rule ([`crate::cam::pseudo_label`]: ≥ `fg` foreground, < `bg` background, between ignored);
/// other images are all background and the method is not run. Returns the label map
/// (0 / 1 / 255) and whether the method fell back.
pub fn label(
    method: &dyn Refiner,
    input: &RefineInput,
    fg: f64,
    bg: f64,
    positive: bool,
) -> Result<(GrayImage, bool)> {
    if !positive {
        return Ok((crate::cam::pseudo_label(input.cam, fg, bg, false), false));
    }
    let r = method.refine(input)?;
    Ok((crate::cam::pseudo_label(&r.map, fg, bg, true), r.fallback))
}

/// Logit of a probability.
pub(crate) fn logit(p: f32) -> f32 {
    (p / (1.0 - p)).ln()
}

/// A probability `p` of foreground mapped onto the CAM's scale so that the threshold rule at
/// `threshold` decides as `p ≥ 0.5` does: `σ(logit p + logit threshold)`, 8-bit. Used by the
/// methods that end in a probability (CRF, GCN).
pub(crate) fn to_cam_scale(p: f32, threshold: f64) -> u8 {
    let t = logit((threshold as f32).clamp(1e-3, 1.0 - 1e-3));
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    let c = 1.0 / (1.0 + (-(logit(p) + t)).exp());
    (c * 255.0).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_keeps_the_threshold_rule() {
        // p = 0.5 maps onto the threshold itself (within the 8-bit rounding); above/below stay
        // above/below.
        for t in [0.3, 0.5, 0.7, 0.9] {
            let at = f64::from(to_cam_scale(0.5, t));
            assert!((at - t * 255.0).abs() <= 0.5 + 1e-3, "t {t}: {at}");
            assert!(crate::cam::at_least(to_cam_scale(0.51, t), t));
            assert!(!crate::cam::at_least(to_cam_scale(0.45, t), t));
        }
        assert_eq!(to_cam_scale(1.0, 0.7), 255);
        assert_eq!(to_cam_scale(0.0, 0.7), 0);
    }

    #[test]
    fn negatives_skip_the_method_and_are_background() {
        struct Boom;
        impl Refiner for Boom {
            fn name(&self) -> &'static str {
                "boom"
            }
            fn needs(&self) -> Needs {
                Needs::default()
            }
            fn refine(&self, _: &RefineInput) -> Result<Refined> {
                Err(Error::stage("pseudo", "must not run"))
            }
        }
        let cam = GrayImage::from_raw(3, 1, vec![0, 200, 255]).unwrap();
        let input = RefineInput {
            cam: &cam,
            image: None,
            features: None,
            threshold: 0.7,
            seed: 0,
        };
        let (l, fb) = label(&Boom, &input, 0.7, 0.7, false).unwrap();
        assert_eq!((l.into_raw(), fb), (vec![0, 0, 0], false));
        let (l, _) = label(&Unrefined, &input, 0.7, 0.7, true).unwrap();
        assert_eq!(l.into_raw(), vec![0, 1, 1]);
        assert!(label(&Boom, &input, 0.7, 0.7, true).is_err());
    }
}
