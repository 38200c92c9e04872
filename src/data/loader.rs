//! Batches for training and inference: decode, augment and normalise images in parallel
//! (rayon), each item with its own seeded generator so batches are identical whatever the
//! thread count.
//!
//! Decoded images are kept in memory when the whole dataset fits in [`CACHE_BUDGET`] bytes
//! (the synthetic data, GlaS); larger datasets are decoded again for every batch.

use std::sync::OnceLock;

use crate::data::resize::bilinear;
use candle_core::{Device, Tensor};
use image::{imageops, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::scan::Sample;
use crate::error::Result;

/// ImageNet channel means (inputs are normalised as torchvision's pretrained models expect).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Keep decoded images in memory when they take at most this many bytes.
pub const CACHE_BUDGET: u64 = 2 << 30;

/// What one batch item shows: a whole sample, or a window `(x, y, w, h)` of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Sample index.
    pub sample: usize,
    /// Window in the sample's pixels; `None` = the whole image.
    pub window: Option<(u32, u32, u32, u32)>,
}

impl From<usize> for View {
    fn from(sample: usize) -> Self {
        Self {
            sample,
            window: None,
        }
    }
}

impl From<super::patches::Patch> for View {
    fn from(p: super::patches::Patch) -> Self {
        Self {
            sample: p.sample,
            window: Some((p.x, p.y, p.w, p.h)),
        }
    }
}

/// Augmentations suited to H&E tiles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Random resized crop: smallest kept fraction of the image area.
    pub min_crop_area: f64,
    /// Random horizontal and vertical flips and 90° rotations.
    pub flips: bool,
    /// Brightness / contrast / saturation jitter amplitude.
    pub color: f32,
    /// Stain jitter.
    pub stain: StainJitter,
}

/// How the stain of a training view is perturbed (`stain_augment`, `stain_augment_strength`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StainJitter {
    /// None.
    None,
    /// Each RGB channel scaled by `U(1 − a, 1 + a)`: a tint.
    Channel(f32),
    /// Tellez et al.'s HED jitter of strength σ ([`crate::data::hed`]): each stain's optical
    /// density scaled by `U(1 − σ, 1 + σ)` and shifted by `U(−σ, σ)`.
    Hed(f64),
}

impl StainJitter {
    /// The jitter a resolved `stain_augment` / `stain_augment_strength` pair asks for.
    pub fn of(method: crate::config::StainAugment, strength: f64) -> Self {
        use crate::config::StainAugment as S;
        match method {
            S::None => StainJitter::None,
            S::Channel => StainJitter::Channel(strength as f32),
            S::Hed => StainJitter::Hed(strength),
        }
    }
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            min_crop_area: 0.5,
            flips: true,
            color: 0.1,
            stain: StainJitter::Channel(0.05),
        }
    }
}

/// Image source over a dataset's samples, with an optional in-memory cache.
pub struct Images<'a> {
    samples: &'a [Sample],
    cache: Option<Vec<OnceLock<RgbImage>>>,
    stain: Option<super::stain::Reinhard>,
}

impl<'a> Images<'a> {
    /// Cache decoded images when `approx_bytes` (their total width × height × 3, from the
    /// data stage's split table) fits [`CACHE_BUDGET`]; otherwise decode on every use.
    pub fn new(samples: &'a [Sample], approx_bytes: u64) -> Self {
        let cache = (approx_bytes <= CACHE_BUDGET)
            .then(|| samples.iter().map(|_| OnceLock::new()).collect());
        Self {
            samples,
            cache,
            stain: None,
        }
    }

    /// Stain-normalise every image on decoding (the data stage's fitted target).
    pub fn with_stain(mut self, stain: Option<super::stain::Reinhard>) -> Self {
        self.stain = stain;
        self
    }

    /// The decoded image of sample `i`.
    pub fn get(&self, i: usize) -> Result<std::borrow::Cow<'_, RgbImage>> {
        let decode = || -> Result<RgbImage> {
            let p = &self.samples[i].image;
            let mut img = super::decode::open(p, "image")?.into_rgb8();
            if let Some(s) = &self.stain {
                s.apply(&mut img);
            }
            Ok(img)
        };
        match &self.cache {
            Some(c) => {
                if let Some(img) = c[i].get() {
                    return Ok(std::borrow::Cow::Borrowed(img));
                }
                let img = decode()?;
                Ok(std::borrow::Cow::Borrowed(c[i].get_or_init(|| img)))
            }
            None => Ok(std::borrow::Cow::Owned(decode()?)),
        }
    }
}

/// One training view of an image: random resized crop (none when `min_crop_area ≥ 1`, as for
/// labelled windows, whose label holds only for the whole window), flips, rotations, colour
/// and stain jitter, resized to `size`×`size`.
pub fn augment(img: &RgbImage, size: u32, a: &Augment, rng: &mut ChaCha8Rng) -> RgbImage {
    if a.min_crop_area >= 1.0 {
        let out = bilinear(img, size, size);
        return flip_and_jitter(out, a, rng);
    }
    let (w, h) = img.dimensions();
    let area = (w as f64) * (h as f64) * rng.random_range(a.min_crop_area.min(1.0)..=1.0);
    let ratio = (rng.random_range((0.75f64).ln()..=(4.0f64 / 3.0).ln())).exp();
    let cw = ((area * ratio).sqrt().round() as u32).clamp(1, w);
    let ch = ((area / ratio).sqrt().round() as u32).clamp(1, h);
    let x0 = rng.random_range(0..=w - cw);
    let y0 = rng.random_range(0..=h - ch);
    let crop = imageops::crop_imm(img, x0, y0, cw, ch).to_image();
    let out = bilinear(&crop, size, size);
    flip_and_jitter(out, a, rng)
}

/// Random flips and 90° rotations, then colour and stain jitter.
fn flip_and_jitter(mut out: RgbImage, a: &Augment, rng: &mut ChaCha8Rng) -> RgbImage {
    if a.flips {
        if rng.random_bool(0.5) {
            imageops::flip_horizontal_in_place(&mut out);
        }
        if rng.random_bool(0.5) {
            imageops::flip_vertical_in_place(&mut out);
        }
        out = match rng.random_range(0..4) {
            1 => imageops::rotate90(&out),
            2 => imageops::rotate180(&out),
            3 => imageops::rotate270(&out),
            _ => out,
        };
    }
    color_jitter(&mut out, a, rng);
    out
}

/// Colour and stain jitter, in place: the HED jitter (if any) first, then saturation,
/// contrast, brightness and the per-channel scale in one pass. (The per-channel scales are
/// drawn after brightness, contrast and saturation, as they always were, so default views are
/// unchanged; the HED jitter draws its six values after them too.)
pub fn color_jitter(out: &mut RgbImage, a: &Augment, rng: &mut ChaCha8Rng) {
    let channel = match a.stain {
        StainJitter::Channel(amp) => amp,
        StainJitter::None | StainJitter::Hed(_) => 0.0,
    };
    let hed = match a.stain {
        StainJitter::Hed(sigma) if sigma > 0.0 => Some(sigma),
        _ => None,
    };
    if a.color > 0.0 || channel > 0.0 || hed.is_some() {
        let j = |rng: &mut ChaCha8Rng, amp: f32| {
            if amp > 0.0 {
                rng.random_range(1.0 - amp..=1.0 + amp)
            } else {
                1.0
            }
        };
        let (b, c, s) = (j(rng, a.color), j(rng, a.color), j(rng, a.color));
        let st = [j(rng, channel), j(rng, channel), j(rng, channel)];
        if let Some(sigma) = hed {
            crate::data::hed::HedJitter::sample(sigma, rng)
                .apply(crate::data::hed::deconvolution(), out);
        }
        let n = (out.width() * out.height()) as f32;
        let mean = out
            .pixels()
            .map(|p| p.0.iter().map(|&v| v as f32).sum::<f32>() / 3.0)
            .sum::<f32>()
            / n;
        for p in out.pixels_mut() {
            let g = p.0.iter().map(|&v| v as f32).sum::<f32>() / 3.0;
            for (ch, stain) in p.0.iter_mut().zip(st) {
                let v = *ch as f32;
                let v = g + (v - g) * s; // saturation
                let v = mean + (v - mean) * c; // contrast
                *ch = (v * b * stain).clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// Normalised CHW floats of an image.
pub fn to_chw(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let n = (w * h) as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, p) in img.pixels().enumerate() {
        for k in 0..3 {
            out[k * n + i] = (p.0[k] as f32 / 255.0 - MEAN[k]) / STD[k];
        }
    }
    out
}

/// A batch `(B, 3, size, size)` of `items` (sample indices, or [`View`]s of windows);
/// augmented views when `aug` is set, each item's generator keyed by (`seed`, item position in
/// the epoch).
pub fn batch<V: Copy + Into<View> + Sync>(
    images: &Images,
    items: &[V],
    size: u32,
    aug: Option<&Augment>,
    seed: u64,
    dev: &Device,
) -> Result<Tensor> {
    let views: Vec<Result<Vec<f32>>> = items
        .par_iter()
        .enumerate()
        .map(|(j, &item)| {
            let v: View = item.into();
            let mut img = images.get(v.sample)?;
            if let Some((x, y, w, h)) = v.window {
                img = std::borrow::Cow::Owned(
                    imageops::crop_imm(img.as_ref(), x, y, w, h).to_image(),
                );
            }
            let view = match aug {
                Some(a) => {
                    let mut rng = ChaCha8Rng::seed_from_u64(
                        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                            .wrapping_add(j as u64),
                    );
                    augment(&img, size, a, &mut rng)
                }
                None => bilinear(img.as_ref(), size, size),
            };
            Ok(to_chw(&view))
        })
        .collect();
    let mut data = Vec::with_capacity(items.len() * 3 * (size * size) as usize);
    for v in views {
        data.extend(v?);
    }
    Ok(Tensor::from_vec(
        data,
        (items.len(), 3, size as usize, size as usize),
        &Device::Cpu,
    )?
    .to_device(dev)?)
}

/// Runs `produce(0..n)` on a helper thread one item ahead of `consume`, which gets the items
/// in order: the next batch is decoded and augmented while the current one trains. Stops
/// producing when `consume` fails (its error is returned).
pub fn prefetched<T: Send, E>(
    n: usize,
    produce: impl Fn(usize) -> T + Sync,
    mut consume: impl FnMut(usize, T) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<T>(1);
        let produce = &produce;
        scope.spawn(move || {
            for i in 0..n {
                if tx.send(produce(i)).is_err() {
                    break; // the consumer stopped
                }
            }
        });
        for (i, item) in rx.iter().enumerate().take(n) {
            consume(i, item)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    /// Items arrive in order, each produced once; a failing consumer stops the producer and
    /// its error is returned.
    #[test]
    fn prefetched_keeps_order_and_stops_on_error() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let made = AtomicUsize::new(0);
        let mut got = Vec::new();
        let r: std::result::Result<(), String> = prefetched(
            50,
            |i| {
                made.fetch_add(1, Ordering::SeqCst);
                i * i
            },
            |i, v| {
                assert_eq!(v, i * i);
                got.push(v);
                Ok(())
            },
        );
        assert!(r.is_ok());
        assert_eq!(got, (0..50).map(|i| i * i).collect::<Vec<_>>());
        assert_eq!(made.load(Ordering::SeqCst), 50);

        let made = AtomicUsize::new(0);
        let r = prefetched(
            1000,
            |i| {
                made.fetch_add(1, Ordering::SeqCst);
                i
            },
            |i, _| {
                if i == 3 {
                    Err(format!("stop at {i}"))
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(r, Err("stop at 3".to_string()));
        // At most the failing item, one in the channel and one being sent were made.
        assert!(
            made.load(Ordering::SeqCst) <= 7,
            "{}",
            made.load(Ordering::SeqCst)
        );
    }

    use super::*;

    #[test]
    fn augment_is_seeded_and_sized() {
        let img = RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 100]));
        let a = Augment::default();
        let v1 = augment(&img, 16, &a, &mut ChaCha8Rng::seed_from_u64(1));
        let v2 = augment(&img, 16, &a, &mut ChaCha8Rng::seed_from_u64(1));
        let v3 = augment(&img, 16, &a, &mut ChaCha8Rng::seed_from_u64(2));
        assert_eq!(v1.dimensions(), (16, 16));
        assert_eq!(v1, v2);
        assert_ne!(v1, v3);
    }

    /// FNV-1a of an image's bytes.
    fn fnv(img: &RgbImage) -> u64 {
        img.as_raw().iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// The default views are the ones every cached run was trained on (the per-channel stain
    /// jitter's draws kept their place when the HED jitter arrived): pinned to the hash the
    /// code before `stain_augment` produced.
    #[test]
    fn default_views_are_unchanged() {
        let img = RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 100]));
        let v = augment(
            &img,
            16,
            &Augment::default(),
            &mut ChaCha8Rng::seed_from_u64(3),
        );
        assert_eq!(fnv(&v), PINNED_DEFAULT_VIEW);
    }

    const PINNED_DEFAULT_VIEW: u64 = 2_490_727_900_626_587_616;

    #[test]
    fn hed_jitter_changes_views_by_seed_and_none_leaves_colours() {
        let img = RgbImage::from_fn(40, 40, |x, y| {
            image::Rgb([180 + x as u8, 90 + y as u8, 190])
        });
        let hed = Augment {
            min_crop_area: 1.0,
            flips: false,
            color: 0.0,
            stain: StainJitter::Hed(0.2),
        };
        let v1 = augment(&img, 40, &hed, &mut ChaCha8Rng::seed_from_u64(1));
        let v2 = augment(&img, 40, &hed, &mut ChaCha8Rng::seed_from_u64(1));
        let v3 = augment(&img, 40, &hed, &mut ChaCha8Rng::seed_from_u64(2));
        assert!(v1 == v2 && v1 != v3 && v1 != img);
        let none = Augment {
            stain: StainJitter::None,
            ..hed
        };
        assert!(augment(&img, 40, &none, &mut ChaCha8Rng::seed_from_u64(1)) == img);
    }

    #[test]
    fn normalisation() {
        let img = RgbImage::from_pixel(1, 1, image::Rgb([255, 0, 128]));
        let v = to_chw(&img);
        assert!((v[0] - (1.0 - MEAN[0]) / STD[0]).abs() < 1e-6);
        assert!((v[1] + MEAN[1] / STD[1]).abs() < 1e-6);
    }
}
