//! The default synthetic generator (`synth.generator = "tissue"`): classes that differ the way
//! they do in colon tissue, so that a colour threshold is not the answer.
//!
//! - *Malignant* tiles hold one or two tumour regions — the mask: irregular, fused epithelium
//!   with a cribriform pattern (several small punched-out lumens) and large, pleomorphic,
//!   crowded nuclei of varying darkness. Their colour is the normal epithelium's; what sets
//!   them apart is architecture and nuclear size.
//! - *Both* classes hold what fools a haematoxylin threshold: lymphocyte clusters (small round,
//!   very dark nuclei packed densely), dense crypts cut
//!   tangentially (crowded small nuclei around a slit lumen) and regular crypts, on stroma with
//!   scattered nuclei; each patient has its own stain (haematoxylin and eosin hues,
//!   brightness).
//!
//! Sizes are given for a 128 px tile and scale with `size`. Every random choice comes from the
//! tile's own stream ([`tile_rng`]), so a tile is a pure function of (seed, patient, index).

use std::f32::consts::TAU;

use image::{GrayImage, RgbImage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{
    bounds, el, finish, free_spot, gland, nuclear_ring, stain, stroma, tile_rng, Canvas, Stain,
};
use crate::data::registry::SynthParams;

/// One tile and its mask (255 = tumour region).
pub(super) fn tile(
    params: &SynthParams,
    malignant: bool,
    patient: &str,
    index: u32,
) -> (RgbImage, GrayImage) {
    let n = params.size as usize;
    let sc = n as f32 / 128.0;
    let st = stain(params, patient, 0x7155_0e5a, 0.92..1.05);
    let mut rng = tile_rng(params, patient, index);
    let mut cv = stroma(n, sc, &st, &mut rng, 22.0);
    let mut placed = Vec::new();
    if malignant {
        for _ in 0..rng.random_range(1..=2) {
            let r0 = rng.random_range(18.0..28.0) * sc;
            if let Some((cx, cy)) = free_spot(&mut rng, n, r0 * 1.2, &mut placed) {
                tumour(&mut cv, &mut rng, &st, cx, cy, r0, sc);
            }
        }
    }
    for _ in 0..rng.random_range(1..=2) {
        let r = rng.random_range(7.0..12.0) * sc;
        if let Some((cx, cy)) = free_spot(&mut rng, n, r, &mut placed) {
            lymphocytes(&mut cv, &mut rng, &st, cx, cy, r, sc);
        }
    }
    let crypts = if malignant {
        rng.random_range(1..=2)
    } else {
        rng.random_range(2..=4)
    };
    for _ in 0..crypts {
        let r = rng.random_range(11.0..16.0) * sc;
        if let Some((cx, cy)) = free_spot(&mut rng, n, r, &mut placed) {
            if rng.random_bool(0.4) {
                dense_crypt(&mut cv, &mut rng, &st, cx, cy, r, sc);
            } else {
                gland(&mut cv, &mut rng, &st, cx, cy, r, sc);
            }
        }
    }
    finish(cv, &st, &mut rng)
}

/// A closed outline `r0 · (1 + Σ a_k sin(k t + φ_k))`, k = 2…5: the irregular border of a
/// region; returns the radius function.
fn outline(rng: &mut ChaCha8Rng, r0: f32, amp: f32) -> impl Fn(f32) -> f32 {
    let harmonics: Vec<(f32, f32)> = (2..6)
        .map(|_| (rng.random_range(0.0..amp), rng.random_range(0.0..TAU)))
        .collect();
    move |t: f32| {
        r0 * (1.0
            + harmonics
                .iter()
                .enumerate()
                .map(|(k, (a, p))| a * ((k as f32 + 2.0) * t + p).sin())
                .sum::<f32>())
    }
}

/// A random point inside the outline, at most `frac` of the way to the border.
fn inside(
    rng: &mut ChaCha8Rng,
    radius: &impl Fn(f32) -> f32,
    cx: f32,
    cy: f32,
    frac: f32,
) -> (f32, f32) {
    let (t, rr) = (
        rng.random_range(0.0..TAU),
        rng.random_range(0.0f32..1.0).sqrt(),
    );
    let rad = radius(t) * rr * frac;
    (cx + rad * t.cos(), cy + rad * t.sin())
}

/// A tumour region (marked in the mask): fused epithelium in the normal cytoplasm colour, a
/// cribriform pattern of small lumens, and large, pleomorphic, crowded nuclei of varying
/// darkness (vesicular to hyperchromatic).
fn tumour(cv: &mut Canvas, rng: &mut ChaCha8Rng, st: &Stain, cx: f32, cy: f32, r0: f32, sc: f32) {
    let radius = outline(rng, r0, 0.18);
    let n = cv.n;
    let rmax = r0 * 1.8;
    for y in bounds(cy, rmax, n) {
        for x in bounds(cx, rmax, n) {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            if (dx * dx + dy * dy).sqrt() <= radius(dy.atan2(dx)) {
                cv.blend(x, y, st.cyto, 0.95);
                cv.mask[y * n + x] = 255;
            }
        }
    }
    let area = TAU / 2.0 * r0 * r0;
    for _ in 0..(area / (19.0 * sc * sc)) as usize {
        let (x, y) = inside(rng, &radius, cx, cy, 0.97);
        let (a, b) = (
            rng.random_range(1.8..3.2) * sc,
            rng.random_range(1.3..2.3) * sc,
        );
        let h = st.h.map(|c| c * rng.random_range(0.8..1.15));
        let alpha = rng.random_range(0.7..0.9);
        cv.ellipse(el(x, y, a, b, rng.random_range(0.0..TAU)), h, alpha);
    }
    for _ in 0..rng.random_range(4..=9) {
        let (x, y) = inside(rng, &radius, cx, cy, 0.8);
        let r = rng.random_range(2.0..5.0) * sc;
        let ex = rng.random_range(0.7..1.4);
        cv.ellipse(
            el(x, y, r * ex, r / ex, rng.random_range(0.0..TAU)),
            st.lumen,
            1.0,
        );
    }
}

/// A lymphocyte cluster: small, round, very dark nuclei packed into an irregular patch, in
/// either class — what a haematoxylin threshold takes for tumour.
fn lymphocytes(
    cv: &mut Canvas,
    rng: &mut ChaCha8Rng,
    st: &Stain,
    cx: f32,
    cy: f32,
    r0: f32,
    sc: f32,
) {
    let radius = outline(rng, r0, 0.12);
    let area = TAU / 2.0 * r0 * r0;
    for _ in 0..(area / (3.2 * sc * sc)) as usize {
        let (x, y) = inside(rng, &radius, cx, cy, 1.0);
        let r = rng.random_range(0.9..1.3) * sc;
        let h = st.h.map(|c| c * rng.random_range(0.55..0.72));
        cv.ellipse(el(x, y, r, r * rng.random_range(0.85..1.0), 0.0), h, 0.95);
    }
}

/// A normal crypt cut tangentially: epithelium crowded with small, uniform nuclei in two rings
/// around a slit lumen — dark, but regular.
fn dense_crypt(
    cv: &mut Canvas,
    rng: &mut ChaCha8Rng,
    st: &Stain,
    cx: f32,
    cy: f32,
    r: f32,
    sc: f32,
) {
    let (ex, rot) = (rng.random_range(0.8..1.25), rng.random_range(0.0..TAU));
    cv.ellipse(el(cx, cy, r * ex, r / ex, rot), st.cyto, 0.95);
    cv.ellipse(el(cx, cy, r * 0.35 * ex, r * 0.08, rot), st.lumen, 1.0);
    for ring in [0.82f32, 0.6, 0.4] {
        let k = ((TAU * r * ring) / (2.9 * sc)).round().max(5.0) as usize;
        let phase = rng.random_range(0.0..TAU);
        let e = el(cx, cy, r * ring * ex, r * ring / ex, rot);
        nuclear_ring(cv, e, k, phase, sc, st.h.map(|x| x * 0.9), 0.9);
    }
}
