//! Patch-level labels derived from masks (the OEEM protocol, `labels.level = "patch"`), and the
//! unlabelled windows that carry their image's class (`labels.level = "image-windows"`).
//!
//! Each image is cut into square windows of `patch_size` pixels every `patch_stride` pixels
//! (the last row and column are moved back to end at the image border, so every pixel is
//! covered and no window is padded). A window's label is multi-hot: *background present* and
//! *foreground present*, each when that class covers more than `min_fraction` of the window's
//! labelled pixels (ignored pixels count for neither). The classifier learns these two labels;
//! the CAM stage reads the same windows back.
//!
//! Images smaller than a window are one window of the image's own size.

use image::GrayImage;
use rayon::prelude::*;

use super::loader::View;
use super::mask::{self, IGNORE};
use super::scan::DatasetIndex;
use crate::config::LabelsConfig;
use crate::error::{Error, Result};

/// Label index of "background present".
pub const BACKGROUND: usize = 0;
/// Label index of "foreground present".
pub const FOREGROUND: usize = 1;
/// Names of the two patch labels, in label order.
pub const LABELS: [&str; 2] = ["background", "foreground"];

/// A window of one sample and its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    /// Sample index in the dataset.
    pub sample: usize,
    /// Left edge, pixels.
    pub x: u32,
    /// Top edge, pixels.
    pub y: u32,
    /// Width, pixels.
    pub w: u32,
    /// Height, pixels.
    pub h: u32,
    /// `[background present, foreground present]`.
    pub labels: [bool; 2],
}

impl Patch {
    /// Multi-hot target `[background, foreground]`.
    pub fn target(&self) -> [f32; 2] {
        [
            f32::from(u8::from(self.labels[0])),
            f32::from(u8::from(self.labels[1])),
        ]
    }
    /// A readable id: `<image id>@<x>,<y>`.
    pub fn id(&self, image_id: &str) -> String {
        format!("{image_id}@{},{}", self.x, self.y)
    }
}

/// Window origins along one axis of `len` pixels: `0, stride, 2·stride, …`, the last moved
/// back to `len − size`; one window at 0 when `len ≤ size`.
pub fn starts(len: u32, size: u32, stride: u32) -> Vec<u32> {
    if len <= size {
        return vec![0];
    }
    let stride = stride.max(1);
    let last = len - size;
    let mut v: Vec<u32> = (0..=last).step_by(stride as usize).collect();
    if v.last() != Some(&last) {
        v.push(last);
    }
    v
}

/// Every window `(x, y, w, h)` of an image of `dims`, row by row.
pub fn windows(dims: (u32, u32), size: u32, stride: u32) -> Vec<(u32, u32, u32, u32)> {
    let (w, h) = dims;
    let (pw, ph) = (size.min(w), size.min(h));
    let xs = starts(w, size, stride);
    starts(h, size, stride)
        .into_iter()
        .flat_map(|y| xs.iter().map(move |&x| (x, y, pw, ph)))
        .collect()
}

/// The labels of a window of a label map (0 background, 1 foreground, [`IGNORE`]).
pub fn window_labels(
    truth: &GrayImage,
    (x, y, w, h): (u32, u32, u32, u32),
    min_fraction: f64,
) -> [bool; 2] {
    let mut n = [0u64; 2];
    for yy in y..y + h {
        for xx in x..x + w {
            match truth.get_pixel(xx, yy).0[0] {
                0 => n[0] += 1,
                IGNORE => {}
                _ => n[1] += 1,
            }
        }
    }
    let total = (n[0] + n[1]) as f64;
    let present = |c: u64| c > 0 && c as f64 > min_fraction * total;
    [present(n[0]), present(n[1])]
}

/// The labelled windows of one sample's label map.
pub fn derive(
    sample: usize,
    truth: &GrayImage,
    size: u32,
    stride: u32,
    min_fraction: f64,
) -> Vec<Patch> {
    windows(truth.dimensions(), size, stride)
        .into_iter()
        .map(|win| Patch {
            sample,
            x: win.0,
            y: win.1,
            w: win.2,
            h: win.3,
            labels: window_labels(truth, win, min_fraction),
        })
        .collect()
}

/// The labelled windows of the samples `items`, in order, from their ground-truth masks
/// (after the registry's `negative_masks` rule). A sample without a mask is bad input.
pub fn for_samples(idx: &DatasetIndex, items: &[usize], cfg: &LabelsConfig) -> Result<Vec<Patch>> {
    per_sample(items, |i| {
        let s = &idx.samples[i];
        let truth = mask::ground_truth(&idx.spec, s)?.ok_or_else(|| {
            Error::dataset(format!(
                "labels.level = \"patch\" derives window labels from masks, but image `{}` ({}) has none",
                s.id,
                s.image.display()
            ))
        })?;
        Ok(derive(
            i,
            &truth,
            cfg.patch_size,
            cfg.patch_stride,
            cfg.min_fraction,
        ))
    })
}

/// `f` of every sample of `items` in parallel, concatenated in `items` order.
fn per_sample<T: Send>(
    items: &[usize],
    f: impl Fn(usize) -> Result<Vec<T>> + Sync,
) -> Result<Vec<T>> {
    let per: Vec<Result<Vec<T>>> = items.par_iter().map(|&i| f(i)).collect();
    let mut out = Vec::new();
    for p in per {
        out.extend(p?);
    }
    Ok(out)
}

/// The windows of the samples `items`, in order, each to carry its image's class
/// (`labels.level = "image-windows"`): no mask is read, only each image's size (from its file
/// header).
pub fn image_windows(idx: &DatasetIndex, items: &[usize], cfg: &LabelsConfig) -> Result<Vec<View>> {
    per_sample(items, |i| {
        let p = &idx.samples[i].image;
        let dims = image::image_dimensions(p).map_err(|e| {
            Error::dataset(format!("image {}: cannot read its size: {e}", p.display()))
        })?;
        Ok(windows(dims, cfg.patch_size, cfg.patch_stride)
            .into_iter()
            .map(|win| View {
                sample: i,
                window: Some(win),
            })
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_cover_the_axis_and_end_at_the_border() {
        assert_eq!(starts(10, 4, 3), vec![0, 3, 6]);
        assert_eq!(starts(11, 4, 3), vec![0, 3, 6, 7]);
        assert_eq!(starts(4, 4, 2), vec![0]);
        assert_eq!(starts(3, 4, 2), vec![0]);
        assert_eq!(starts(775, 128, 128), vec![0, 128, 256, 384, 512, 640, 647]);
    }

    #[test]
    fn windows_cover_every_pixel() {
        for (w, h, s, st) in [(17, 9, 4, 3), (5, 5, 8, 8), (30, 12, 7, 7), (9, 9, 3, 1)] {
            let mut seen = vec![false; (w * h) as usize];
            for (x, y, pw, ph) in windows((w, h), s, st) {
                assert!(x + pw <= w && y + ph <= h);
                for yy in y..y + ph {
                    for xx in x..x + pw {
                        seen[(yy * w + xx) as usize] = true;
                    }
                }
            }
            assert!(seen.iter().all(|&b| b), "{w}×{h} size {s} stride {st}");
        }
    }

    #[test]
    fn labels_by_hand() {
        // 4×4 map: left half foreground, one ignored pixel in the top-right corner.
        let mut t = GrayImage::from_fn(4, 4, |x, _| image::Luma([u8::from(x < 2)]));
        t.put_pixel(3, 0, image::Luma([IGNORE]));
        let p = derive(7, &t, 2, 2, 0.0);
        assert_eq!(p.len(), 4);
        assert_eq!((p[0].sample, p[0].x, p[0].y), (7, 0, 0));
        assert_eq!(p[0].labels, [false, true]); // all foreground
        assert_eq!(p[1].labels, [true, false]); // background + one ignored pixel
        assert_eq!(p[2].labels, [false, true]);
        assert_eq!(p[3].labels, [true, false]);
        // One 4×4 window: 8 foreground, 7 background pixels; a class needs > 50 %.
        let w = window_labels(&t, (0, 0, 4, 4), 0.5);
        assert_eq!(w, [false, true]);
        assert_eq!(window_labels(&t, (0, 0, 4, 4), 0.0), [true, true]);
        assert_eq!(p[1].target(), [1.0, 0.0]);
        assert_eq!(p[1].id("a"), "a@2,0");
    }

    #[test]
    fn an_all_ignored_window_has_no_label() {
        let t = GrayImage::from_pixel(3, 3, image::Luma([IGNORE]));
        assert_eq!(window_labels(&t, (0, 0, 3, 3), 0.0), [false, false]);
    }
}
