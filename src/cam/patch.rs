//! CAMs of a patch-level (multi-label) classifier, stitched into one map per image (the OEEM
//! protocol).
//!
//! Every image is cut into the classifier's training windows ([`crate::data::patches`]). For
//! each window:
//! - the window's labels decide what it may contain — the labels derived from the mask on
//!   training images (that is the weak supervision), the classifier's own predictions
//!   (probability ≥ 0.5) elsewhere;
//! - a window labelled *background only* is all background, *foreground only* all foreground;
//! - a window with both labels gets the CAMs of both classes, each normalised over the window
//!   (`cam.normalize`), so the evidence is compared locally.
//!
//! The class maps are computed once per image, fully convolutionally, with the image resized
//! by the classifier's scale (`train.image_size / labels.patch_size`), and cut into the windows.
//! For a GAP-linear head this is what running each window on its own gives, except near the
//! window's border, where the network sees the neighbouring tissue instead of zero padding; it
//! costs one pass per image instead of one per window (× the overlap).
//!
//! Overlapping windows are averaged per class, giving a foreground map `F` and a background
//! map `B` in `[0, 1]`. The stored map is the margin `D = (1 + F − B) / 2`, so the pseudo-label
//! rule "`D ≥ 0.5`" is the argmax of the two class maps (ties, where both are equal, go to the
//! foreground) and a band `[τ_bg, τ_fg)` ignores pixels whose two classes are close. Pixels no
//! window counted (every window covering them had no label) are background.

use crate::data::resize::bilinear;
use candle_core::{Device, Tensor};
use image::{imageops, GrayImage, RgbImage};

use super::{methods, normalize, quantize, CamSettings};
use crate::config::CamNorm;
use crate::data::loader::to_chw;
use crate::data::patches::{Patch, BACKGROUND, FOREGROUND};
use crate::error::{Error, Result};
use crate::model::ops::resize_bilinear;
use crate::model::Backbone;

/// `img` mirrored outward by `pad` pixels on every side (the edge pixel is not repeated:
/// column −1 is column 1); `pad` is capped at one less than the smaller side.
pub fn reflect_pad(img: &RgbImage, pad: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let pad = pad.min(w.min(h).saturating_sub(1));
    let mirror = |i: i64, n: i64| -> u32 {
        let i = if i < 0 { -i } else { i };
        (if i >= n { 2 * (n - 1) - i } else { i }) as u32
    };
    RgbImage::from_fn(w + 2 * pad, h + 2 * pad, |x, y| {
        let sx = mirror(x as i64 - pad as i64, w as i64);
        let sy = mirror(y as i64 - pad as i64, h as i64);
        *img.get_pixel(sx, sy)
    })
}

/// Raw (ReLU'd) maps of `classes` at the image's own size, from one fully convolutional pass
/// at `scale` (averaged with a horizontal flip under `s.tta`); row-major, in `classes` order.
///
/// `pad` (pixels at `scale`) mirrors the image outward before the pass and crops the maps back:
/// the tile's border then has tissue around it, as every interior pixel has, instead of the
/// network's zero padding, which otherwise leaves a band of low evidence along the border.
pub fn full_maps(
    model: &Backbone,
    image: &RgbImage,
    s: &CamSettings,
    scale: f64,
    pad: u32,
    classes: &[usize],
    dev: &Device,
) -> Result<Vec<Vec<f32>>> {
    let (w, h) = image.dimensions();
    let rw = ((w as f64 * scale).round() as u32).max(32);
    let rh = ((h as f64 * scale).round() as u32).max(32);
    let resized = bilinear(image, rw, rh);
    let small = if pad > 0 {
        reflect_pad(&resized, pad)
    } else {
        resized
    };
    let (pw, ph) = small.dimensions();
    let pad = (pw - rw) / 2;
    let mut acc: Option<Tensor> = None; // (classes, h', w')
    for flip in [false, true].into_iter().take(if s.tta { 2 } else { 1 }) {
        let view = if flip {
            imageops::flip_horizontal(&small)
        } else {
            small.clone()
        };
        let x = Tensor::from_vec(to_chw(&view), (1, 3, ph as usize, pw as usize), dev)?;
        let maps = methods::class_maps_of(model, &x, classes, s.method, s.layer, s.contrast)?;
        let mut m = Tensor::cat(&maps, 0)?.relu()?;
        if flip {
            m = m.flip(&[2])?;
        }
        acc = Some(match acc {
            None => m,
            Some(a) => (a + m)?,
        });
    }
    let mut m = acc
        .ok_or_else(|| Error::stage("cam", "no views"))?
        .unsqueeze(1)?;
    if pad > 0 {
        let (p, rw, rh) = (pad as usize, rw as usize, rh as usize);
        m = resize_bilinear(&m, ph as usize, pw as usize)?
            .narrow(2, p, rh)?
            .narrow(3, p, rw)?;
    }
    let up = resize_bilinear(&m, h as usize, w as usize)?.to_device(&Device::Cpu)?;
    (0..classes.len())
        .map(|c| Ok(up.get(c)?.flatten_all()?.to_vec1::<f32>()?))
        .collect()
}

/// The background and foreground maps of a patch-level classifier ([`full_maps`] of both
/// labels).
pub fn label_maps(
    model: &Backbone,
    image: &RgbImage,
    s: &CamSettings,
    scale: f64,
    dev: &Device,
) -> Result<[Vec<f32>; 2]> {
    let mut m = full_maps(model, image, s, scale, 0, &[BACKGROUND, FOREGROUND], dev)?;
    let fg = m.pop().unwrap_or_default();
    let bg = m.pop().unwrap_or_default();
    Ok([bg, fg])
}

/// Stitch the margin map `D` (module docs) of an image of `dims` from its class maps
/// (`[background, foreground]`, as from [`label_maps`]) and its labelled windows, quantised to
/// 8 bits.
pub fn stitch(
    maps: &[Vec<f32>; 2],
    dims: (u32, u32),
    windows: &[Patch],
    norm: CamNorm,
) -> GrayImage {
    let (w, h) = dims;
    let n = (w * h) as usize;
    let mut fg = vec![0f32; n];
    let mut bg = vec![0f32; n];
    let mut count = vec![0u16; n];
    for p in windows {
        let idx = |xx: u32, yy: u32| ((p.y + yy) * w + p.x + xx) as usize;
        let cells = || (0..p.h).flat_map(move |yy| (0..p.w).map(move |xx| (xx, yy)));
        let scaled = |m: &[f32]| -> Vec<f32> {
            let v: Vec<f32> = cells().map(|(xx, yy)| m[idx(xx, yy)]).collect();
            normalize(&v, norm)
        };
        let (f, b): (Vec<f32>, Vec<f32>) = match p.labels {
            [true, false] => (
                vec![0.0; (p.w * p.h) as usize],
                vec![1.0; (p.w * p.h) as usize],
            ),
            [false, true] => (
                vec![1.0; (p.w * p.h) as usize],
                vec![0.0; (p.w * p.h) as usize],
            ),
            [true, true] => (scaled(&maps[1]), scaled(&maps[0])),
            [false, false] => continue,
        };
        for (j, (xx, yy)) in cells().enumerate() {
            let i = idx(xx, yy);
            fg[i] += f[j];
            bg[i] += b[j];
            count[i] += 1;
        }
    }
    let d: Vec<f32> = (0..n)
        .map(|i| {
            if count[i] == 0 {
                0.0
            } else {
                let c = count[i] as f32;
                (1.0 + fg[i] / c - bg[i] / c) / 2.0
            }
        })
        .collect();
    quantize(&d, w, h)
}

/// Pixels of an image of `dims` covered by at least one window with both labels.
pub fn two_label_pixels(dims: (u32, u32), windows: &[Patch]) -> Vec<bool> {
    let (w, h) = dims;
    let mut m = vec![false; (w * h) as usize];
    for p in windows.iter().filter(|p| p.labels == [true, true]) {
        for yy in p.y..p.y + p.h {
            let row = (yy * w) as usize;
            m[row + p.x as usize..row + (p.x + p.w) as usize].fill(true);
        }
    }
    m
}

/// The stored level (0–255) of the median of a 256-bin histogram; 128 when it is empty.
pub fn median_level(hist: &[u64; 256]) -> u8 {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return 128;
    }
    let mut acc = 0;
    for (v, &c) in hist.iter().enumerate() {
        acc += c;
        if 2 * acc >= n {
            return v as u8;
        }
    }
    255
}

/// A stored margin level shifted by `delta` levels, clamped to 1–254; levels 0 and 255
/// (decided by single-label windows) stay where they are.
pub fn shift_level(v: u8, delta: i32) -> u8 {
    if v == 0 || v == 255 {
        v
    } else {
        (v as i32 + delta).clamp(1, 254) as u8
    }
}

/// Shift every pixel of a stored margin map by `delta` levels ([`shift_level`]).
pub fn shift(map: &mut GrayImage, delta: i32) {
    for p in map.pixels_mut() {
        p.0[0] = shift_level(p.0[0], delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_padding_by_hand() {
        // 3×2 image, pixel value = 10·x + y in the red channel.
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([(10 * x + y) as u8, 0, 0]));
        let p = reflect_pad(&img, 1);
        assert_eq!(p.dimensions(), (5, 4));
        let row = |y: u32| (0..5).map(|x| p.get_pixel(x, y).0[0]).collect::<Vec<_>>();
        assert_eq!(row(1), vec![10, 0, 10, 20, 10]); // image row 0 with mirrored ends
        assert_eq!(row(0), row(2)); // row −1 mirrors row 1
        assert_eq!(row(3), row(1)); // row 2 mirrors row 0
        assert_eq!(row(2), vec![11, 1, 11, 21, 11]);
        // Capped at one less than the smaller side.
        assert_eq!(reflect_pad(&img, 5).dimensions(), (5, 4));
    }

    fn patch(x: u32, labels: [bool; 2]) -> Patch {
        Patch {
            sample: 0,
            x,
            y: 0,
            w: 4,
            h: 1,
            labels,
        }
    }

    #[test]
    fn stitching_by_hand() {
        // A 10×1 image. Windows: [0,4) background only, [2,6) foreground only, [6,10) both
        // labels; [6,10) once more with no label (not counted).
        // Foreground map rises 1..4 over [6,10), background map falls 4..1.
        let mut fgm = vec![0f32; 10];
        let mut bgm = vec![0f32; 10];
        for (j, i) in (6..10).enumerate() {
            fgm[i] = (j + 1) as f32;
            bgm[i] = (4 - j) as f32;
        }
        let wins = [
            patch(0, [true, false]),
            patch(2, [false, true]),
            patch(6, [true, true]),
            patch(6, [false, false]),
        ];
        let d = stitch(&[bgm, fgm], (10, 1), &wins, CamNorm::Max);
        // [0,2): D = (1 + 0 − 1)/2 = 0; [2,4): F = B = 1/2 → 0.5; [4,6): 1;
        // [6,10): F = (1..4)/4, B = (4..1)/4 → D = (1 + (2j − 3)/4)/2 for j = 0..3.
        let want: Vec<u8> = [0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 0.125, 0.375, 0.625, 0.875]
            .iter()
            .map(|v: &f64| (v * 255.0).round() as u8)
            .collect();
        assert_eq!(d.into_raw(), want);
    }

    #[test]
    fn median_and_shift_by_hand() {
        let mut h = [0u64; 256];
        h[10] = 1;
        h[100] = 2;
        h[200] = 1;
        assert_eq!(median_level(&h), 100);
        assert_eq!(median_level(&[0; 256]), 128);
        let mut m = GrayImage::from_raw(4, 1, vec![0, 100, 250, 255]).unwrap();
        shift(&mut m, 28);
        assert_eq!(m.into_raw(), [0, 128, 254, 255]);
        let both = two_label_pixels((10, 1), &[patch(0, [true, false]), patch(5, [true, true])]);
        assert_eq!(
            both,
            [false, false, false, false, false, true, true, true, true, false]
        );
    }

    #[test]
    fn uncounted_pixels_are_background() {
        let d = stitch(
            &[vec![1.0; 4], vec![1.0; 4]],
            (4, 1),
            &[patch(0, [false, false])],
            CamNorm::Max,
        );
        assert_eq!(d.into_raw(), [0; 4]);
    }
}
