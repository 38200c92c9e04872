//! The first synthetic generator (`synth.generator = "nuclei"`, generator version 1): *normal*
//! tiles hold regular round glands in eosin stroma; *malignant* tiles add one or two irregular
//! regions of large, dark, crowded nuclei, which are the mask. A haematoxylin threshold finds
//! those regions by construction, so this generator checks the pipeline, not the method; it is
//! kept because tests depend on its behaviour (the segmenter collapse of `tests/collapse.rs`).

use std::f32::consts::TAU;

use image::{GrayImage, RgbImage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{bounds, el, finish, free_spot, gland, stain, stroma, tile_rng, Canvas, Stain};
use crate::data::registry::SynthParams;

/// One tile and its mask (255 = malignant region).
pub(super) fn tile(
    params: &SynthParams,
    malignant: bool,
    patient: &str,
    index: u32,
) -> (RgbImage, GrayImage) {
    let n = params.size as usize;
    let sc = n as f32 / 128.0;
    let st = stain(params, patient, 0x5eed, 0.93..1.05);
    let mut rng = tile_rng(params, patient, index);
    let mut cv = stroma(n, sc, &st, &mut rng, 18.0);
    let mut placed = Vec::new();
    if malignant {
        for _ in 0..rng.random_range(1..=2) {
            let r0 = rng.random_range(17.0..30.0) * sc;
            if let Some((cx, cy)) = free_spot(&mut rng, n, r0 * 1.2, &mut placed) {
                dense_region(&mut cv, &mut rng, &st, cx, cy, r0, sc);
            }
        }
    }
    let glands = if malignant {
        rng.random_range(1..=2)
    } else {
        rng.random_range(3..=5)
    };
    for _ in 0..glands {
        let r = rng.random_range(11.0..17.0) * sc;
        if let Some((cx, cy)) = free_spot(&mut rng, n, r, &mut placed) {
            gland(&mut cv, &mut rng, &st, cx, cy, r, sc);
        }
    }
    finish(cv, &st, &mut rng)
}

/// An irregular region crowded with large, dark, pleomorphic nuclei; marked in the mask.
fn dense_region(
    cv: &mut Canvas,
    rng: &mut ChaCha8Rng,
    st: &Stain,
    cx: f32,
    cy: f32,
    r0: f32,
    sc: f32,
) {
    let harmonics: Vec<(f32, f32)> = (2..6)
        .map(|_| (rng.random_range(0.0..0.16), rng.random_range(0.0..TAU)))
        .collect();
    let radius = |t: f32| {
        r0 * (1.0
            + harmonics
                .iter()
                .enumerate()
                .map(|(k, (a, p))| a * ((k as f32 + 2.0) * t + p).sin())
                .sum::<f32>())
    };
    let dark = [0, 1, 2].map(|k| st.h[k] * 0.55 + st.cyto[k] * 0.45);
    let n = cv.n;
    let rmax = r0 * 1.7;
    for y in bounds(cy, rmax, n) {
        for x in bounds(cx, rmax, n) {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            if (dx * dx + dy * dy).sqrt() <= radius(dy.atan2(dx)) {
                cv.blend(x, y, dark, 0.9);
                cv.mask[y * n + x] = 255;
            }
        }
    }
    let area = TAU / 2.0 * r0 * r0;
    for _ in 0..(area / (14.0 * sc * sc)) as usize {
        let (t, rr) = (
            rng.random_range(0.0..TAU),
            rng.random_range(0.0f32..1.0).sqrt(),
        );
        let rad = radius(t) * rr * 0.95;
        let (x, y) = (cx + rad * t.cos(), cy + rad * t.sin());
        let (a, b) = (
            rng.random_range(1.6..2.8) * sc,
            rng.random_range(1.2..2.2) * sc,
        );
        let h = st.h.map(|c| c * rng.random_range(0.6..0.9));
        cv.ellipse(el(x, y, a, b, rng.random_range(0.0..TAU)), h, 0.9);
    }
}
