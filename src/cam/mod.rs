//! From a trained classifier to pseudo segmentation labels (steps 2–3 of the method).
//!
//! - [`methods`]: CAM, Grad-CAM, Grad-CAM++, LayerCAM as raw class maps;
//! - this module: the per-image pipeline — resize to the classifier's input size (so memory is
//!   bounded whatever the tile size), optional test-time augmentation (horizontal flip ×
//!   scales 0.75, 1, 1.25, averaged), ReLU, bilinear upsampling to the image's own size,
//!   per-image normalisation, and 8-bit quantisation for a compact on-disk cache (a threshold
//!   sweep reads these instead of recomputing);
//! - the confidence-threshold rule turning a normalised CAM into a pseudo label;
//! - [`refine`]: the pseudo-label methods behind one seam (none, SLIC, dense CRF, GCN);
//! - [`patch`]: CAMs of a patch-level (multi-label) classifier stitched per image (OEEM).
//!
//! Quantisation: a normalised value `v ∈ [0, 1]` is stored as `round(255 v)` and compared as
//! `stored / 255 ≥ threshold`, so a threshold decision can differ from the float one only for
//! values within 1/510 of the threshold.

pub mod methods;
pub mod patch;
pub mod refine;

use crate::data::resize::bilinear;
use candle_core::{Device, Tensor};
use image::{imageops, GrayImage, RgbImage};

use crate::config::{CamMethod, CamNorm};
use crate::data::loader::to_chw;
use crate::data::mask::IGNORE;
use crate::error::{Error, Result};
use crate::model::ops::resize_bilinear;
use crate::model::Backbone;

/// How CAMs are computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CamSettings {
    /// Method.
    pub method: CamMethod,
    /// Block read (0-based; 4 = last).
    pub layer: usize,
    /// Flip × multi-scale averaging.
    pub tta: bool,
    /// Per-image normalisation.
    pub normalize: CamNorm,
    /// Classifier input size (pixels, square).
    pub size: u32,
    /// Class whose evidence is mapped.
    pub class: usize,
    /// Map the class's evidence against the other classes (`cam.contrast`).
    pub contrast: bool,
}

/// Test-time views: (scale, horizontal flip).
fn views(tta: bool) -> Vec<(f64, bool)> {
    if tta {
        let mut v = Vec::new();
        for s in [1.0, 0.75, 1.25] {
            v.push((s, false));
            v.push((s, true));
        }
        v
    } else {
        vec![(1.0, false)]
    }
}

/// Normalised, quantised CAMs of `images`, each at its own size.
pub fn cams(
    model: &Backbone,
    images: &[&RgbImage],
    s: &CamSettings,
    dev: &Device,
) -> Result<Vec<GrayImage>> {
    if images.is_empty() {
        return Ok(vec![]);
    }
    let base = s.size as usize;
    let mut acc: Option<Tensor> = None;
    let vs = views(s.tta);
    for &(scale, flip) in &vs {
        // Multiples of 16 keep every block's grid aligned.
        let side = (((base as f64 * scale) / 16.0).round() as usize).max(1) * 16;
        let mut data = Vec::with_capacity(images.len() * 3 * side * side);
        for img in images {
            let mut r = bilinear(img, side as u32, side as u32);
            if flip {
                imageops::flip_horizontal_in_place(&mut r);
            }
            data.extend(to_chw(&r));
        }
        let x =
            Tensor::from_vec(data, (images.len(), 3, side, side), &Device::Cpu)?.to_device(dev)?;
        let mut m =
            methods::class_maps(model, &x, s.class, s.method, s.layer, s.contrast)?.relu()?;
        if flip {
            m = m.flip(&[2])?;
        }
        let m = resize_bilinear(&m.unsqueeze(1)?, base, base)?;
        acc = Some(match acc {
            None => m,
            Some(a) => (a + m)?,
        });
    }
    let acc = acc
        .ok_or_else(|| Error::stage("cam", "no views"))?
        .to_device(&Device::Cpu)?;
    let mut out = Vec::with_capacity(images.len());
    for (i, img) in images.iter().enumerate() {
        let (w, h) = img.dimensions();
        let m = resize_bilinear(&acc.narrow(0, i, 1)?, h as usize, w as usize)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        out.push(quantize(&normalize(&m, s.normalize), w, h));
    }
    Ok(out)
}

/// How the classifier sees a whole image: resized to its square input (image-level labels),
/// or scaled by `train.image_size / labels.patch_size` (classifiers trained on windows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CamView {
    /// Resized to `size × size`.
    Square(u32),
    /// Scaled by this factor, aspect kept.
    Scale(f64),
}

impl CamView {
    /// The view of a protocol: windows are seen at their training scale.
    pub fn of(protocol: &crate::data::protocol::Protocol, image_size: u32) -> Self {
        protocol
            .window_scale(image_size)
            .map_or(Self::Square(image_size), Self::Scale)
    }
}

/// The classifier's feature map of a whole image at block `layer` (0-based), seen as `view`
/// says (sides rounded to multiples of 16, at least 32 px): `C × h × w` on the block's grid,
/// batch norm in inference mode. Used by the pseudo-label methods that read features
/// ([`refine::Needs::features`]).
pub fn feature_map(
    model: &Backbone,
    img: &RgbImage,
    view: CamView,
    layer: usize,
    dev: &Device,
) -> Result<refine::FeatureMap> {
    let (w, h) = img.dimensions();
    let side = |v: f64| (((v / 16.0).round() as u32).max(2)) * 16;
    let (rw, rh) = match view {
        CamView::Square(s) => (side(f64::from(s)), side(f64::from(s))),
        CamView::Scale(f) => (side(f64::from(w) * f), side(f64::from(h) * f)),
    };
    let r = bilinear(img, rw, rh);
    let x = Tensor::from_vec(to_chw(&r), (1, 3, rh as usize, rw as usize), &Device::Cpu)?
        .to_device(dev)?;
    let blocks = model.features.blocks(&x, false)?;
    let b = blocks.get(layer).ok_or_else(|| {
        Error::Usage(format!(
            "backbone.cam_layer = {layer}: the backbone has {} blocks",
            blocks.len()
        ))
    })?;
    let (_, c, fh, fw) = b.dims4()?;
    Ok(refine::FeatureMap {
        channels: c,
        height: fh,
        width: fw,
        data: b.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?,
    })
}

/// Per-image normalisation of a non-negative map to `[0, 1]` (an all-zero map stays zero).
pub fn normalize(m: &[f32], how: CamNorm) -> Vec<f32> {
    let max = m.iter().copied().fold(0f32, f32::max);
    let min = match how {
        CamNorm::Minmax => m.iter().copied().fold(f32::INFINITY, f32::min),
        CamNorm::Max => 0.0,
    };
    let range = max - min;
    if range.is_nan() || range <= 1e-12 {
        return vec![0.0; m.len()];
    }
    m.iter()
        .map(|&v| ((v - min) / range).clamp(0.0, 1.0))
        .collect()
}

/// Store a normalised map as 8 bits.
pub fn quantize(m: &[f32], w: u32, h: u32) -> GrayImage {
    GrayImage::from_raw(w, h, m.iter().map(|&v| (v * 255.0).round() as u8).collect())
        .unwrap_or_else(|| GrayImage::new(w, h))
}

/// Whether a stored CAM value is at or above a threshold.
#[inline]
pub fn at_least(v: u8, t: f64) -> bool {
    v as f64 / 255.0 >= t
}

/// The talk's confident-activation rule. For an image of the positive class: CAM ≥ `fg` →
/// foreground (1), CAM < `bg` → background (0), between → [`IGNORE`] (no band when
/// `bg == fg`). Images of other classes are all background.
pub fn pseudo_label(cam: &GrayImage, fg: f64, bg: f64, positive_image: bool) -> GrayImage {
    let mut out = GrayImage::new(cam.width(), cam.height());
    if !positive_image {
        return out;
    }
    for (o, p) in out.pixels_mut().zip(cam.pixels()) {
        let v = p.0[0];
        o.0[0] = if at_least(v, fg) {
            1
        } else if !at_least(v, bg) {
            0
        } else {
            IGNORE
        };
    }
    out
}

/// Encode a label map (0 background, 1 foreground, 255 ignore) as a palette PNG that opens
/// in any viewer: black, red, white.
pub fn label_png(labels: &GrayImage) -> Result<Vec<u8>> {
    let mut palette = vec![0u8; 256 * 3];
    palette[3..6].copy_from_slice(&[220, 40, 40]);
    palette[255 * 3..].copy_from_slice(&[255, 255, 255]);
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, labels.width(), labels.height());
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(palette);
        let mut w = enc
            .write_header()
            .map_err(|e| Error::stage("pseudo", format!("png: {e}")))?;
        w.write_image_data(labels.as_raw())
            .map_err(|e| Error::stage("pseudo", format!("png: {e}")))?;
    }
    Ok(buf)
}

/// Read a label PNG written by [`label_png`] (or any 8-bit grayscale/index PNG) back as raw
/// indices.
pub fn read_labels(path: &std::path::Path) -> Result<GrayImage> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(png::Transformations::IDENTITY);
    let bad = |e: png::DecodingError| Error::dataset(format!("{}: {e}", path.display()));
    let mut r = dec.read_info().map_err(bad)?;
    let mut buf = vec![0; r.output_buffer_size().unwrap_or(0)];
    let info = r.next_frame(&mut buf).map_err(bad)?;
    if info.bit_depth != png::BitDepth::Eight
        || !matches!(
            info.color_type,
            png::ColorType::Indexed | png::ColorType::Grayscale
        )
    {
        return Err(Error::dataset(format!(
            "{}: expected an 8-bit index or grayscale PNG",
            path.display()
        )));
    }
    buf.truncate(info.buffer_size());
    GrayImage::from_raw(info.width, info.height, buf)
        .ok_or_else(|| Error::dataset(format!("{}: truncated", path.display())))
}

/// The file of sample `id` under `dir`, with extension `ext`: one path component per
/// `/`-separated part of the id (folder-layout ids are `patient/class/stem`, so outputs mirror
/// the dataset's folders), each part escaped (`%` → `%25`, `\\` → `%5C`, `:` → `%3A`; an
/// empty part, `.` or `..` spelled with `%2E`/`%`) so that different ids never share a file.
pub fn sample_file(dir: &std::path::Path, id: &str, ext: &str) -> std::path::PathBuf {
    let mut p = dir.to_path_buf();
    let parts: Vec<&str> = id.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let mut e: String = match *part {
            "" => "%".into(),
            "." => "%2E".into(),
            ".." => "%2E%2E".into(),
            _ => part
                .chars()
                .map(|c| match c {
                    '%' => "%25".to_string(),
                    '\\' => "%5C".to_string(),
                    ':' => "%3A".to_string(),
                    c => c.to_string(),
                })
                .collect(),
        };
        if i + 1 == parts.len() {
            e.push('.');
            e.push_str(ext);
        }
        p.push(e);
    }
    p
}

/// [`sample_file`], with its folder created (for writers).
pub fn sample_file_mk(dir: &std::path::Path, id: &str, ext: &str) -> Result<std::path::PathBuf> {
    let p = sample_file(dir, id, ext);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_files_are_one_to_one() {
        let d = std::path::Path::new("out");
        let f = |id: &str| sample_file(d, id, "png");
        assert_eq!(f("train_1"), d.join("train_1.png"));
        assert_eq!(f("P01/normal/P01_00"), d.join("P01/normal/P01_00.png"));
        assert_eq!(f("a:b\\c%"), d.join("a%3Ab%5Cc%25.png"));
        assert_eq!(f("../x"), d.join("%2E%2E/x.png"));
        // Ids that the old `_` mapping sent to one file stay apart.
        let ids = [
            "a/b_c", "a_b/c", "a_b_c", "a%2Fb", "a/b", "a//b", "a/./b", "a/%2E/b",
        ];
        let files: std::collections::BTreeSet<_> = ids.iter().map(|i| f(i)).collect();
        assert_eq!(files.len(), ids.len());
    }

    #[test]
    fn threshold_rule_by_hand() {
        // Normalised values 0.0, 0.2, 0.5, 0.69, 0.70, 1.0 as stored (×255, rounded).
        let vals = [0.0, 0.2, 0.5, 0.69, 0.70, 1.0];
        let cam = GrayImage::from_raw(
            6,
            1,
            vals.iter()
                .map(|v: &f64| (v * 255.0).round() as u8)
                .collect(),
        )
        .unwrap();
        // No band: ≥ 0.7 foreground, else background.
        assert_eq!(
            pseudo_label(&cam, 0.7, 0.7, true).into_raw(),
            [0, 0, 0, 0, 1, 1]
        );
        // Band [0.3, 0.7): ignored.
        assert_eq!(
            pseudo_label(&cam, 0.7, 0.3, true).into_raw(),
            [0, 0, 255, 255, 1, 1]
        );
        // Negative-class images are all background whatever their CAM.
        assert_eq!(pseudo_label(&cam, 0.7, 0.3, false).into_raw(), [0; 6]);
        // Threshold 0 makes every pixel foreground; 1.0 only the maximum.
        assert_eq!(pseudo_label(&cam, 0.0, 0.0, true).into_raw(), [1; 6]);
        assert_eq!(
            pseudo_label(&cam, 1.0, 1.0, true).into_raw(),
            [0, 0, 0, 0, 0, 1]
        );
    }

    #[test]
    fn normalisation_by_hand() {
        assert_eq!(
            normalize(&[1.0, 2.0, 3.0], CamNorm::Minmax),
            [0.0, 0.5, 1.0]
        );
        let m = normalize(&[1.0, 2.0, 4.0], CamNorm::Max);
        assert_eq!(m, [0.25, 0.5, 1.0]);
        assert_eq!(normalize(&[0.0, 0.0], CamNorm::Minmax), [0.0, 0.0]);
    }

    #[test]
    fn label_png_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let l = GrayImage::from_raw(3, 2, vec![0, 1, 255, 1, 0, 0]).unwrap();
        let p = d.path().join("l.png");
        std::fs::write(&p, label_png(&l).unwrap()).unwrap();
        assert_eq!(read_labels(&p).unwrap(), l);
        // Viewers see colours: the palette maps 1 to red.
        let rgb = image::open(&p).unwrap().into_rgb8();
        assert_eq!(rgb.get_pixel(1, 0).0, [220, 40, 40]);
    }
}
