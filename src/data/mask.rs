//! Ground-truth masks: reading a mask file's *stored values* and turning them into labels.
//!
//! A mask is a map of stored values, whatever its PNG colour type or bit depth: palette PNGs
//! give their indices (never the palette's colours), 16-bit PNGs their full values, 1/2/4-bit
//! PNGs their unscaled values. What cannot be a label map is refused with the file's path and
//! what was found: colour (RGB/RGBA/grey+alpha) masks, and masks in a lossy format (JPEG), whose
//! compression ringing silently turns background into foreground — unless the registry
//! declares `lossy_mask_threshold`, the value above which a lossy mask's pixel is foreground.
//!
//! Labels are `0` background, `1` foreground, [`IGNORE`] unknown. Which stored values count as
//! foreground depends on the registry's `mask_encoding` and, for negative-class images, on
//! `negative_masks` (the talk's protocol makes them all background).

use std::path::Path;

use image::GrayImage;

use super::registry::{DatasetSpec, MaskEncoding, NegativeMasks};
use super::sample::Sample;
use crate::error::{Error, Result};

/// Label value of pixels that do not count (as in the peer repositories).
pub const IGNORE: u8 = 255;

/// The stored values of a mask file, one per pixel (row-major).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMask {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Stored values (8-bit files give 0–255, 16-bit files 0–65535).
    pub values: Vec<u16>,
    /// Whether the file was lossy (JPEG) and binarised at the registry's threshold.
    pub binarised: bool,
}

/// Map raw mask values to labels: binary and instance masks are foreground where the value is
/// above 0; index masks are background at 0, [`IGNORE`] at 255, foreground elsewhere.
pub fn encode(raw: &RawMask, enc: MaskEncoding) -> GrayImage {
    let labels = raw
        .values
        .iter()
        .map(|&v| match enc {
            _ if raw.binarised => u8::from(v > 0),
            MaskEncoding::Binary | MaskEncoding::Instance => u8::from(v > 0),
            MaskEncoding::Index => match v {
                0 => 0,
                255 => IGNORE,
                _ => 1,
            },
        })
        .collect();
    GrayImage::from_raw(raw.width, raw.height, labels).expect("one label per pixel")
}

fn is_lossy(path: &Path, format: Option<image::ImageFormat>) -> bool {
    matches!(format, Some(image::ImageFormat::Jpeg))
        || path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg"))
}

/// Read the stored values of a mask file. `lossy_threshold` is the registry's
/// `lossy_mask_threshold`: without it a JPEG mask is refused; with it, values above it become
/// 1 and the rest 0. Errors name the path and what was found.
pub fn read_raw(path: &Path, lossy_threshold: Option<u8>) -> Result<RawMask> {
    if is_lossy(path, None) && lossy_threshold.is_none() {
        // Refused by its extension even if its content cannot be read.
        return Err(lossy_refused(path));
    }
    let bytes = super::decode::read(path, "mask")?;
    raw_from_bytes(&bytes, path, lossy_threshold)
}

fn lossy_refused(path: &Path) -> Error {
    Error::dataset(format!(
        "mask {}: is stored in a lossy format (JPEG): compression ringing turns background \
         into foreground; save masks as PNG, or declare `lossy_mask_threshold` (the value \
         above which a pixel is foreground) for this dataset in the registry",
        path.display()
    ))
}

/// [`read_raw`] of a mask file's bytes, already read.
pub fn raw_from_bytes(bytes: &[u8], path: &Path, lossy_threshold: Option<u8>) -> Result<RawMask> {
    let bad = |m: String| Error::dataset(format!("mask {}: {m}", path.display()));
    let format = super::decode::format_of(bytes, path, "mask")?;
    if is_lossy(path, Some(format)) {
        let Some(t) = lossy_threshold else {
            return Err(lossy_refused(path));
        };
        let img = super::decode::decode(bytes, format, path, "mask")?.into_luma8();
        return Ok(RawMask {
            width: img.width(),
            height: img.height(),
            values: img.as_raw().iter().map(|&v| u16::from(v > t)).collect(),
            binarised: true,
        });
    }
    if format == image::ImageFormat::Png {
        return read_png(bytes, path);
    }
    let img = super::decode::decode(bytes, format, path, "mask")?;
    let (width, height) = (img.width(), img.height());
    let values = match img {
        image::DynamicImage::ImageLuma8(g) => g.into_raw().into_iter().map(u16::from).collect(),
        image::DynamicImage::ImageLuma16(g) => g.into_raw(),
        other => {
            let hint = if format == image::ImageFormat::Bmp {
                " (BMP masks, even 8-bit or palette ones, are decoded to colours: save masks \
                 as PNG)"
            } else {
                ""
            };
            return Err(bad(format!(
                "is a {:?} image: a mask must be a single-channel label map (grayscale or \
                 palette PNG, 8 or 16 bits){hint}",
                other.color()
            )));
        }
    };
    Ok(RawMask {
        width,
        height,
        values,
        binarised: false,
    })
}

/// A PNG's stored values: palette indices for indexed images, full values for 16-bit ones,
/// unscaled values for 1/2/4-bit ones; colour PNGs are refused.
fn read_png(bytes: &[u8], path: &Path) -> Result<RawMask> {
    let bad = |m: String| Error::dataset(format!("mask {}: {m}", path.display()));
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut r = dec
        .read_info()
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    let (width, height) = r.info().size();
    super::decode::check_pixels(path, "mask", width, height)?;
    let orientation = r
        .info()
        .exif_metadata
        .as_deref()
        .and_then(image::metadata::Orientation::from_exif_chunk);
    let mut buf = vec![0; r.output_buffer_size().unwrap_or(0)];
    let info = r
        .next_frame(&mut buf)
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    use png::{BitDepth, ColorType};
    if !matches!(info.color_type, ColorType::Grayscale | ColorType::Indexed) {
        return Err(bad(format!(
            "is a {:?} PNG: a mask must be a single-channel label map (grayscale or palette, \
             whose indices are read, not its colours); a colour mask needs converting to indices",
            info.color_type
        )));
    }
    let bits = info.bit_depth as usize;
    let (w, h) = (info.width as usize, info.height as usize);
    let mut values = Vec::with_capacity(w * h);
    for row in buf.chunks(info.line_size).take(h) {
        match info.bit_depth {
            BitDepth::Sixteen => values.extend(
                row.chunks_exact(2)
                    .take(w)
                    .map(|b| u16::from_be_bytes([b[0], b[1]])),
            ),
            BitDepth::Eight => values.extend(row[..w].iter().map(|&v| u16::from(v))),
            _ => {
                let per = 8 / bits;
                let mask = (1u16 << bits) - 1;
                values.extend((0..w).map(|x| {
                    let byte = u16::from(row[x / per]);
                    let shift = 8 - bits * (x % per + 1);
                    (byte >> shift) & mask
                }));
            }
        }
    }
    if values.len() != w * h {
        return Err(bad("is truncated".into()));
    }
    let mut raw = RawMask {
        width: info.width,
        height: info.height,
        values,
        binarised: false,
    };
    if let Some(o) = orientation {
        // As viewers show it (and as its image is read): the EXIF orientation applied.
        let buf = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(
            raw.width,
            raw.height,
            std::mem::take(&mut raw.values),
        )
        .ok_or_else(|| bad("is truncated".into()))?;
        let mut img = image::DynamicImage::ImageLuma16(buf);
        img.apply_orientation(o);
        raw.width = img.width();
        raw.height = img.height();
        raw.values = img.into_luma16().into_raw();
    }
    Ok(raw)
}

/// Read a mask and check that its stored values fit the declared encoding: a `binary` mask
/// holds at most two distinct values (more means antialiased edges or an instance map, which
/// would silently become foreground). Errors name the path.
pub fn read_checked(path: &Path, spec: &DatasetSpec) -> Result<RawMask> {
    if is_lossy(path, None) && spec.lossy_mask_threshold.is_none() {
        return Err(lossy_refused(path));
    }
    checked_from_bytes(&super::decode::read(path, "mask")?, path, spec)
}

/// [`read_checked`] of a mask file's bytes, already read.
pub fn checked_from_bytes(bytes: &[u8], path: &Path, spec: &DatasetSpec) -> Result<RawMask> {
    let raw = raw_from_bytes(bytes, path, spec.lossy_mask_threshold)?;
    if spec.mask_encoding == MaskEncoding::Binary && !raw.binarised {
        let mut seen = std::collections::BTreeSet::new();
        for &v in &raw.values {
            if seen.insert(v) && seen.len() > 2 {
                return Err(Error::dataset(format!(
                    "mask {}: holds more than two values ({:?}…) but the registry declares \
                     `mask_encoding = \"binary\"`; declare \"instance\" (0 background, any other \
                     value foreground) or \"index\" (0, 1, 255 = ignore) if that is what it is",
                    path.display(),
                    seen
                )));
            }
        }
    }
    Ok(raw)
}

/// The ground-truth label map of a sample, or `None` when it has no mask.
pub fn ground_truth(spec: &DatasetSpec, s: &Sample) -> Result<Option<GrayImage>> {
    let Some(path) = &s.mask else { return Ok(None) };
    let raw = read_checked(path, spec)?;
    if s.class != spec.positive && spec.negative_masks == NegativeMasks::Background {
        return Ok(Some(GrayImage::new(raw.width, raw.height)));
    }
    Ok(Some(encode(&raw, spec.mask_encoding)))
}

/// The ground truth of a sample that must match a map of size `dims` (an image, a CAM, a
/// prediction); a mask of another size is bad input naming the sample.
pub fn ground_truth_sized(
    spec: &DatasetSpec,
    s: &Sample,
    dims: (u32, u32),
) -> Result<Option<GrayImage>> {
    let gt = ground_truth(spec, s)?;
    if let Some(g) = &gt {
        if g.dimensions() != dims {
            return Err(Error::dataset(format!(
                "mask of `{}` is {:?}, image is {:?}",
                s.id,
                g.dimensions(),
                dims
            )));
        }
    }
    Ok(gt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(values: Vec<u16>) -> RawMask {
        RawMask {
            width: values.len() as u32,
            height: 1,
            values,
            binarised: false,
        }
    }

    #[test]
    fn encodings() {
        let r = raw(vec![0, 3, 255, 1, 256, 1000]);
        assert_eq!(
            encode(&r, MaskEncoding::Instance).into_raw(),
            vec![0, 1, 1, 1, 1, 1]
        );
        assert_eq!(
            encode(&r, MaskEncoding::Binary).into_raw(),
            vec![0, 1, 1, 1, 1, 1]
        );
        assert_eq!(
            encode(&r, MaskEncoding::Index).into_raw(),
            vec![0, 1, 255, 1, 1, 1]
        );
    }

    fn write_png(
        path: &Path,
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        palette: Option<Vec<u8>>,
        data: &[u8],
    ) {
        let f = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some(p) = palette {
            enc.set_palette(p);
        }
        enc.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn palette_16_bit_and_packed_pngs_give_stored_values() {
        let d = tempfile::tempdir().unwrap();
        // VOC-style palette: index 1 is dark red, 255 a light grey; indices must come back.
        let mut pal = vec![0u8; 256 * 3];
        pal[3..6].copy_from_slice(&[128, 0, 0]);
        pal[765..768].copy_from_slice(&[224, 224, 192]);
        let p = d.path().join("pal.png");
        write_png(
            &p,
            3,
            1,
            png::ColorType::Indexed,
            png::BitDepth::Eight,
            Some(pal),
            &[0, 1, 255],
        );
        assert_eq!(read_raw(&p, None).unwrap().values, vec![0, 1, 255]);
        // 16-bit grey: instance ids above 255 keep their value.
        let p = d.path().join("g16.png");
        write_png(
            &p,
            2,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            None,
            &[0x01, 0x2c, 0, 0],
        );
        assert_eq!(read_raw(&p, None).unwrap().values, vec![300, 0]);
        // 1-bit grey: 0/1, not scaled to 0/255; 9 pixels span two bytes.
        let p = d.path().join("g1.png");
        write_png(
            &p,
            9,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::One,
            None,
            &[0b1010_0001, 0b1000_0000],
        );
        assert_eq!(
            read_raw(&p, None).unwrap().values,
            vec![1, 0, 1, 0, 0, 0, 0, 1, 1]
        );
        // 2-bit palette.
        let p = d.path().join("p2.png");
        write_png(
            &p,
            4,
            1,
            png::ColorType::Indexed,
            png::BitDepth::Two,
            Some(vec![0; 12]),
            &[0b00_01_10_11],
        );
        assert_eq!(read_raw(&p, None).unwrap().values, vec![0, 1, 2, 3]);
    }

    #[test]
    fn colour_and_lossy_masks_are_refused_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rgb.png");
        image::RgbImage::new(2, 2).save(&p).unwrap();
        let e = read_raw(&p, None).unwrap_err().to_string();
        assert!(e.contains("rgb.png") && e.contains("Rgb"), "{e}");
        let p = d.path().join("m.jpg");
        let mut g = GrayImage::new(8, 8);
        g.put_pixel(3, 3, image::Luma([250]));
        g.save(&p).unwrap();
        let e = read_raw(&p, None).unwrap_err().to_string();
        assert!(
            e.contains("m.jpg") && e.contains("lossy_mask_threshold"),
            "{e}"
        );
        // Declared: binarised at the threshold.
        let r = read_raw(&p, Some(127)).unwrap();
        assert!(r.binarised && r.values[3 * 8 + 3] == 1 && r.values[0] == 0);
        // Not an image at all.
        let p = d.path().join("t.png");
        std::fs::write(&p, b"not a png").unwrap();
        assert!(read_raw(&p, None)
            .unwrap_err()
            .to_string()
            .contains("t.png"));
    }
}
