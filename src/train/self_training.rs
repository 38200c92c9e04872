//! Self-training of the weak segmenter (`segmentation.self_training_rounds`): after a round
//! of training on pseudo labels, the segmenter's own predictions on the training images become
//! the next round's labels, and a fresh segmenter (same initialisation and seed) is trained on
//! them. The segmenter smooths the CAM's noise (on GlaS it scores above the pseudo labels it
//! learnt from), so its predictions can be better labels than the CAM's — the multi-round
//! refinement of WSSS (e.g. Wei et al., "Object Region Mining with Adversarial Erasing", CVPR
//! 2017, §3.3). OEEM (Li et al., MICCAI 2022) does not retrain: its two stages are the
//! classifier's pseudo masks and one segmenter that down-weights hard pixels online.
//!
//! What stays weakly supervised (`segmentation.self_training_relabel`, [`Relabel`]):
//! - `positive-images`: an image whose label map has no foreground pixel (an image the
//!   classifier's evidence calls negative, all background under the talk's protocol) keeps its
//!   labels, so the image-level labels still bound what can be foreground;
//! - `ignored-pixels`: every pixel the pseudo labels decide (outside the CAM's ignore band)
//!   keeps its pseudo label in every round, and only the ignored ones take the segmenter's
//!   prediction. Under the OEEM protocol with a band that ignores the two-label windows, the
//!   windows whose single label fixes every pixel stay exact, and the segmenter fills in the
//!   windows where gland meets background. Confident labels are kept and the uncertain ones
//!   completed, as AffinityNet propagates confident CAM regions into the neutral ones (Ahn &
//!   Kwak, CVPR 2018), here with the segmenter as the propagator.
//!
//! No mask is read either way.

use std::collections::HashMap;

use candle_core::Device;
use image::GrayImage;

use super::segment::Segmenter;
use crate::config::{Relabel, SegmentationConfig};
use crate::data::loader::Images;
use crate::data::mask::IGNORE;
use crate::error::Result;

/// What one relabelling did (recorded per round in `segment_summary.json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Relabelled {
    /// Label maps replaced (`positive-images`: those with a foreground pixel) or filled in
    /// (`ignored-pixels`: those with an ignored pixel) by the segmenter's prediction.
    pub images: usize,
    /// Label maps kept because they have no foreground (`positive-images`) or no ignored
    /// pixel (`ignored-pixels`).
    pub kept: usize,
    /// Pixels that took the segmenter's prediction (`ignored-pixels`: the ignored ones;
    /// `positive-images`: every pixel of a replaced map).
    pub pixels_relabelled: u64,
    /// Foreground share of the relabelled maps' labelled pixels before (pseudo labels).
    pub foreground_before: f64,
    /// Foreground share of the same maps after (every pixel).
    pub foreground_after: f64,
}

/// Whether a label map (0 background, 1 foreground, 255 ignored) has a foreground pixel.
pub fn has_foreground(l: &GrayImage) -> bool {
    l.as_raw().contains(&1)
}

/// The next round's labels from the segmenter's predictions on the training images, by
/// `mode` ([`Relabel`]):
/// - `positive-images`: every label map with a foreground pixel becomes the segmenter's label
///   map of that image (nothing ignored); maps without foreground are kept as they are;
/// - `ignored-pixels`: in every map with an ignored pixel, the ignored pixels take the
///   prediction and every labelled pixel keeps its value; maps without one are kept. Pass the
///   round-1 pseudo labels as `labels` in every round, so what was decided stays decided.
///
/// The prediction uses the inference settings of `s`, at the image's size, 0/1.
///
/// Shapes: `labels` maps a sample index to a label map of its image's size; the result has the
/// same keys and sizes. Errors: an image that cannot be read, an inference error.
pub fn relabel(
    seg: &Segmenter,
    s: &SegmentationConfig,
    mode: Relabel,
    images: &Images,
    labels: &HashMap<usize, GrayImage>,
    dev: &Device,
) -> Result<(HashMap<usize, GrayImage>, Relabelled)> {
    let mut keys: Vec<usize> = labels.keys().copied().collect();
    keys.sort_unstable();
    let mut out = HashMap::with_capacity(labels.len());
    let mut r = Relabelled::default();
    let (mut fg0, mut n0, mut fg1, mut n1) = (0u64, 0u64, 0u64, 0u64);
    for i in keys {
        let old = &labels[&i];
        let relabel = match mode {
            Relabel::PositiveImages => has_foreground(old),
            Relabel::IgnoredPixels => old.as_raw().contains(&IGNORE),
        };
        if !relabel {
            r.kept += 1;
            out.insert(i, old.clone());
            continue;
        }
        let img = images.get(i)?;
        let mut new = seg.segment(&img, s, dev)?;
        if new.dimensions() != old.dimensions() {
            let (w, h) = old.dimensions();
            new = image::imageops::resize(&new, w, h, image::imageops::FilterType::Nearest);
        }
        for (&v, n) in old.as_raw().iter().zip(new.iter_mut()) {
            if v != IGNORE {
                n0 += 1;
                fg0 += u64::from(v == 1);
            }
            match mode {
                Relabel::PositiveImages => r.pixels_relabelled += 1,
                Relabel::IgnoredPixels if v == IGNORE => r.pixels_relabelled += 1,
                Relabel::IgnoredPixels => *n = v,
            }
        }
        n1 += new.as_raw().len() as u64;
        fg1 += new.as_raw().iter().filter(|&&v| v == 1).count() as u64;
        r.images += 1;
        out.insert(i, new);
    }
    let share = |a: u64, n: u64| if n == 0 { 0.0 } else { a as f64 / n as f64 };
    r.foreground_before = share(fg0, n0);
    r.foreground_after = share(fg1, n1);
    Ok((out, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, ExperimentConfig};
    use crate::data::sample::Sample;
    use crate::train::segment::SegmenterConfig;

    /// Two 32×32 RGB images written to `dir`.
    fn samples(dir: &std::path::Path) -> Vec<Sample> {
        (0..2)
            .map(|k| {
                let p = dir.join(format!("{k}.png"));
                image::RgbImage::from_fn(32, 32, |x, y| {
                    image::Rgb([(x * 8) as u8, (y * 8) as u8, (k * 100) as u8])
                })
                .save(&p)
                .unwrap();
                Sample {
                    id: format!("s{k}"),
                    image: p,
                    mask: None,
                    class: k,
                    patient: "p".into(),
                    image_bytes: 0,
                    mask_bytes: 0,
                }
            })
            .collect()
    }

    /// A ⅛-width VGG-16 segmenter whose classifier layer has zero weights and biases (−5, +5):
    /// it calls every pixel foreground, whatever the features, so its prediction is known
    /// without running the network twice.
    fn all_foreground_segmenter(dir: &std::path::Path) -> (Segmenter, SegmenterConfig) {
        let mut cfg = ExperimentConfig::default();
        cfg.segmentation.encoder = Arch::Vgg16;
        cfg.segmentation.width = 0.125;
        cfg.segmentation.crop_size = 32;
        let sc = SegmenterConfig::of(&cfg);
        let dev = Device::Cpu;
        let mut seg = Segmenter::build(&sc, &dev, None, dir).unwrap();
        seg.vars
            .set_one(
                "decoder.classifier.weight",
                candle_core::Tensor::zeros((2, 256 / 8, 1, 1), candle_core::DType::F32, &dev)
                    .unwrap(),
            )
            .unwrap();
        seg.vars
            .set_one(
                "decoder.classifier.bias",
                candle_core::Tensor::new(&[-5f32, 5.0], &dev).unwrap(),
            )
            .unwrap();
        (seg, sc)
    }

    /// Two 32×32 images: the first's labels have 4 foreground pixels of 1 023 labelled (one
    /// ignored), the second's none. The first is replaced by what the segmenter predicts (set
    /// to all foreground), the second kept byte for byte, and the shares are counted by hand.
    #[test]
    fn positive_maps_become_the_prediction_and_negative_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let samples = samples(d.path());
        let images = Images::new(&samples, 0);
        let mut pos = GrayImage::new(32, 32);
        for (x, y) in [(1, 1), (2, 1), (1, 2), (2, 2)] {
            pos.put_pixel(x, y, image::Luma([1]));
        }
        pos.put_pixel(31, 31, image::Luma([IGNORE]));
        let neg = GrayImage::from_fn(32, 32, |x, _| image::Luma([if x == 0 { 255 } else { 0 }]));
        let labels = HashMap::from([(0, pos), (1, neg.clone())]);
        let (seg, sc) = all_foreground_segmenter(d.path());
        let (out, r) = relabel(
            &seg,
            &sc.segmentation,
            Relabel::PositiveImages,
            &images,
            &labels,
            &Device::Cpu,
        )
        .unwrap();

        assert_eq!(out[&0], GrayImage::from_pixel(32, 32, image::Luma([1])));
        assert_eq!(out[&1], neg);
        assert_eq!(
            r,
            Relabelled {
                images: 1,
                kept: 1,
                pixels_relabelled: 1024,
                foreground_before: 4.0 / 1023.0,
                foreground_after: 1.0,
            }
        );
    }

    /// `ignored-pixels`: the first map has 4 foreground pixels, a 2×32 band of ignored pixels
    /// (rows 10–11) and background elsewhere; only the 64 ignored pixels take the (all
    /// foreground) prediction. The second map has no ignored pixel and is kept byte for byte,
    /// even though it has foreground. Shares by hand: before 4 / 960, after (4 + 64) / 1024.
    #[test]
    fn only_ignored_pixels_take_the_prediction() {
        let d = tempfile::tempdir().unwrap();
        let samples = samples(d.path());
        let images = Images::new(&samples, 0);
        let banded = GrayImage::from_fn(32, 32, |x, y| {
            image::Luma([match (x, y) {
                (_, 10 | 11) => IGNORE,
                (1 | 2, 1 | 2) => 1,
                _ => 0,
            }])
        });
        let complete = GrayImage::from_fn(32, 32, |x, _| image::Luma([u8::from(x < 5)]));
        let labels = HashMap::from([(0, banded.clone()), (1, complete.clone())]);
        let (seg, sc) = all_foreground_segmenter(d.path());
        let (out, r) = relabel(
            &seg,
            &sc.segmentation,
            Relabel::IgnoredPixels,
            &images,
            &labels,
            &Device::Cpu,
        )
        .unwrap();

        let expected = GrayImage::from_fn(32, 32, |x, y| {
            image::Luma([match (x, y) {
                (_, 10 | 11) => 1,
                _ => banded.get_pixel(x, y).0[0],
            }])
        });
        assert_eq!(out[&0], expected);
        assert_eq!(out[&1], complete);
        assert_eq!(
            r,
            Relabelled {
                images: 1,
                kept: 1,
                pixels_relabelled: 64,
                foreground_before: 4.0 / 960.0,
                foreground_after: 68.0 / 1024.0,
            }
        );
    }

    #[test]
    fn foreground_is_a_pixel_labelled_one() {
        let mut l = GrayImage::from_pixel(3, 2, image::Luma([0]));
        assert!(!has_foreground(&l));
        l.put_pixel(2, 1, image::Luma([IGNORE]));
        assert!(!has_foreground(&l), "ignored pixels are not foreground");
        l.put_pixel(0, 0, image::Luma([1]));
        assert!(has_foreground(&l));
    }
}
