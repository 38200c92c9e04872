//! Self-training of the weak segmenter (`segmentation.self_training_rounds`): after a round
//! of training on pseudo labels, the segmenter's own predictions on the training images become
//! the next round's labels, and a fresh segmenter (same initialisation and seed) is trained on
//! them. The segmenter smooths the CAM's noise (on GlaS it scores above the pseudo labels it
//! learnt from), so its predictions can be better labels than the CAM's — the multi-round
//! refinement of WSSS (e.g. Wei et al., "Object Region Mining with Adversarial Erasing", CVPR
//! 2017, §3.3; Li et al., OEEM, MICCAI 2022, which retrains on its segmenter's outputs).
//!
//! What stays weakly supervised: an image whose label map has no foreground pixel (an image
//! the classifier's evidence calls negative, all background under the talk's protocol) keeps
//! its labels, so the image-level labels still bound what can be foreground; no mask is read.

use std::collections::HashMap;

use candle_core::Device;
use image::GrayImage;

use super::segment::Segmenter;
use crate::config::SegmentationConfig;
use crate::data::loader::Images;
use crate::error::Result;

/// What one relabelling did (recorded per round in `segment_summary.json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Relabelled {
    /// Label maps replaced by the segmenter's prediction (those with a foreground pixel).
    pub images: usize,
    /// Label maps kept because they have no foreground (image-level negatives).
    pub kept_negative: usize,
    /// Foreground share of the replaced maps' labelled pixels before (pseudo labels).
    pub foreground_before: f64,
    /// Foreground share of the same maps after (the segmenter's prediction, every pixel).
    pub foreground_after: f64,
}

/// Whether a label map (0 background, 1 foreground, 255 ignored) has a foreground pixel.
pub fn has_foreground(l: &GrayImage) -> bool {
    l.as_raw().contains(&1)
}

/// The next round's labels: for every label map with a foreground pixel, the segmenter's
/// label map of that image (inference settings of `s`, at the image's size, 0/1, nothing
/// ignored); label maps without foreground are kept as they are.
///
/// Shapes: `labels` maps a sample index to a label map of its image's size; the result has the
/// same keys and sizes. Errors: an image that cannot be read, an inference error.
pub fn relabel(
    seg: &Segmenter,
    s: &SegmentationConfig,
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
        if !has_foreground(old) {
            r.kept_negative += 1;
            out.insert(i, old.clone());
            continue;
        }
        let img = images.get(i)?;
        let mut new = seg.segment(&img, s, dev)?;
        if new.dimensions() != old.dimensions() {
            let (w, h) = old.dimensions();
            new = image::imageops::resize(&new, w, h, image::imageops::FilterType::Nearest);
        }
        for &v in old.as_raw() {
            if v != crate::data::mask::IGNORE {
                n0 += 1;
                fg0 += u64::from(v == 1);
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

    /// Two 32×32 images: the first's labels have 4 foreground pixels of 1 023 labelled (one
    /// ignored), the second's none. The first is replaced by what the segmenter predicts (set
    /// to all foreground), the second kept byte for byte, and the shares are counted by hand.
    #[test]
    fn positive_maps_become_the_prediction_and_negative_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let samples: Vec<Sample> = (0..2)
            .map(|k| {
                let p = d.path().join(format!("{k}.png"));
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
            .collect();
        let images = Images::new(&samples, 0);
        let mut pos = GrayImage::new(32, 32);
        for (x, y) in [(1, 1), (2, 1), (1, 2), (2, 2)] {
            pos.put_pixel(x, y, image::Luma([1]));
        }
        pos.put_pixel(31, 31, image::Luma([crate::data::mask::IGNORE]));
        let neg = GrayImage::from_fn(32, 32, |x, _| image::Luma([if x == 0 { 255 } else { 0 }]));
        let labels = HashMap::from([(0, pos), (1, neg.clone())]);

        let mut cfg = ExperimentConfig::default();
        cfg.segmentation.encoder = Arch::Vgg16;
        cfg.segmentation.width = 0.125;
        cfg.segmentation.crop_size = 32;
        let sc = SegmenterConfig::of(&cfg);
        let dev = Device::Cpu;
        let mut seg = Segmenter::build(&sc, &dev, None, d.path()).unwrap();
        // A classifier layer of zero weights and biases (−5, +5) calls every pixel foreground,
        // whatever the features: the prediction is known without running the network twice.
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
        let (out, r) = relabel(&seg, &sc.segmentation, &images, &labels, &dev).unwrap();

        assert_eq!(out[&0], GrayImage::from_pixel(32, 32, image::Luma([1])));
        assert_eq!(out[&1], neg);
        assert_eq!(
            r,
            Relabelled {
                images: 1,
                kept_negative: 1,
                foreground_before: 4.0 / 1023.0,
                foreground_after: 1.0,
            }
        );
    }

    #[test]
    fn foreground_is_a_pixel_labelled_one() {
        let mut l = GrayImage::from_pixel(3, 2, image::Luma([0]));
        assert!(!has_foreground(&l));
        l.put_pixel(2, 1, image::Luma([crate::data::mask::IGNORE]));
        assert!(!has_foreground(&l), "ignored pixels are not foreground");
        l.put_pixel(0, 0, image::Luma([1]));
        assert!(has_foreground(&l));
    }
}
