//! Every `cam.refine` method on a synthetic image with a sharp colour edge moves the pseudo
//! label the way the method promises, through the one seam the pseudo stage uses
//! ([`wsss::cam::refine`]).
//!
//! The image: a gland-coloured left part (columns `< EDGE`) and a stroma-coloured right part,
//! with mild seeded noise. Two CAMs over it: a *narrow* one (evidence fading linearly to the
//! right, crossing the 0.70 threshold well before the edge: the talk's "discriminative and
//! sparse" CAM) and a *broad* one (a blurred step crossing 0.70 well past the edge: "CAM region
//! too broad").

use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wsss::cam::refine::{label, refiner, FeatureMap, RefineInput, Settings};
use wsss::config::Refine;

const W: u32 = 96;
const H: u32 = 64;
const EDGE: u32 = 48;
const T: f64 = 0.7;

fn image() -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    RgbImage::from_fn(W, H, |x, _| {
        let base: [i32; 3] = if x < EDGE {
            [150, 60, 140]
        } else {
            [235, 200, 225]
        };
        Rgb(base.map(|c| (c + rng.random_range(-6..=6)).clamp(0, 255) as u8))
    })
}

/// A 2-channel classifier feature map on a 6×4 grid: which side of the edge each cell's centre
/// lies on (what a trained classifier's features separate), with no sub-cell detail.
fn features() -> FeatureMap {
    let (fw, fh) = (6usize, 4usize);
    let mut data = vec![0f32; 2 * fw * fh];
    for cy in 0..fh {
        for cx in 0..fw {
            let centre = (cx as f32 + 0.5) * W as f32 / fw as f32;
            let gland = f32::from(u8::from(centre < EDGE as f32));
            data[cy * fw + cx] = gland;
            data[fw * fh + cy * fw + cx] = 1.0 - gland;
        }
    }
    FeatureMap {
        channels: 2,
        height: fh,
        width: fw,
        data,
    }
}

/// Evidence falling linearly from 1 at x = 0 to 0 at x = 80: ≥ 0.7 for x ≤ 24 only.
fn narrow_cam() -> GrayImage {
    GrayImage::from_fn(W, H, |x, _| {
        Luma([((1.0 - x as f64 / 80.0).max(0.0) * 255.0).round() as u8])
    })
}

/// A blurred step (logistic of scale 6) crossing 0.7 at x = 63.5, 16 columns past the edge.
fn broad_cam() -> GrayImage {
    GrayImage::from_fn(W, H, |x, _| {
        let v = 1.0 / (1.0 + ((x as f64 - 63.5 - 6.0 * (0.7f64 / 0.3).ln()) / 6.0).exp());
        Luma([(v * 255.0).round() as u8])
    })
}

/// Foreground fractions of the pseudo label left and right of the edge.
fn sides(method: Refine, cam: &GrayImage) -> (f64, f64) {
    let (img, feats) = (image(), features());
    let r = refiner(method, &Settings::default());
    let input = RefineInput {
        cam,
        image: Some(&img),
        features: Some(&feats),
        threshold: T,
        seed: 0,
    };
    let (l, fallback) = label(r.as_ref(), &input, T, T, true).expect("refine");
    assert!(!fallback, "{method:?} fell back");
    let (mut left, mut right) = (0usize, 0usize);
    for (x, _, p) in l.enumerate_pixels() {
        if p.0[0] == 1 {
            if x < EDGE {
                left += 1
            } else {
                right += 1
            }
        }
    }
    (
        left as f64 / f64::from(EDGE * H),
        right as f64 / f64::from((W - EDGE) * H),
    )
}

#[test]
fn unrefined_labels_are_the_threshold_rule() {
    // x ≤ 24 of 48 columns (25 columns: 1 − x/80 ≥ 0.7 ⇔ x ≤ 24, quantised to 8 bits).
    assert_eq!(sides(Refine::None, &narrow_cam()), (25.0 / 48.0, 0.0));
    // The broad CAM crosses into the stroma.
    let (l, r) = sides(Refine::None, &broad_cam());
    assert_eq!(l, 1.0);
    assert!(r > 0.15, "{r}");
}

#[test]
fn gcn_spreads_confident_evidence_to_the_colour_edge() {
    // Seeds: gland nodes of x ≤ 24 (foreground), stroma nodes past x ≈ 56 (background); the
    // network labels the unseeded gland nodes 25..48 by their features, and stops at the edge.
    let (l, r) = sides(Refine::Gcn, &narrow_cam());
    assert!(l > 0.95, "left {l}");
    assert!(r < 0.02, "right {r}");
}

#[test]
fn crf_snaps_a_broad_cam_back_to_the_colour_edge() {
    let (l0, r0) = sides(Refine::None, &broad_cam());
    let (l, r) = sides(Refine::Crf, &broad_cam());
    assert!(l > 0.95, "left {l}");
    assert!(r < r0 / 4.0, "right {r} (unrefined {r0}, left {l0})");
}

/// Full evidence up to x = 46, then a ramp to 0 at x = 56: ≥ 0.7 for x ≤ 49, two columns
/// past the edge (the stride-16 upsampling blur at a gland's outline).
fn blurred_edge_cam() -> GrayImage {
    GrayImage::from_fn(W, H, |x, _| {
        let v = (1.0 - (x as f64 - 46.0).max(0.0) / 10.0).max(0.0);
        Luma([(v * 255.0).round() as u8])
    })
}

#[test]
fn slic_voting_snaps_a_blurred_outline_to_the_colour_edge() {
    // Superpixels (4 px here) do not straddle the edge: the stroma superpixels beside it vote
    // below 0.7, the gland ones above.
    assert_eq!(sides(Refine::None, &blurred_edge_cam()), (1.0, 2.0 / 48.0));
    assert_eq!(sides(Refine::Slic, &blurred_edge_cam()), (1.0, 0.0));
    // It does not move an overflow deep inside uniform stroma (that is what the CRF is for).
    let (_, r0) = sides(Refine::None, &broad_cam());
    let (_, r) = sides(Refine::Slic, &broad_cam());
    assert!(r > r0 / 2.0, "{r} vs {r0}");
}

#[test]
fn the_haematoxylin_prior_cuts_a_broad_cam_at_the_stain_edge() {
    // The gland side is the haematoxylin-rich one: smoothed (σ = 8 px) and cut at Otsu's
    // threshold, the prior ends near the edge, and with it the broad CAM's overflow.
    let (l0, r0) = sides(Refine::None, &broad_cam());
    let (l, r) = sides(Refine::Haematoxylin, &broad_cam());
    assert!(l > 0.95, "left {l}");
    assert!(
        r < 2.0 / 48.0 && r < r0 / 4.0,
        "right {r} (unrefined {r0}, left {l0})"
    );
    // The narrow CAM is inside the prior already: unchanged.
    assert_eq!(
        sides(Refine::Haematoxylin, &narrow_cam()),
        (25.0 / 48.0, 0.0)
    );
}
