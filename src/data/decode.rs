//! Decoding image files with a known memory bound.
//!
//! Every image wsss reads (scan checks, training, CAM, evaluation, `predict`) is decoded here.
//! Its size is read from the file's header first and checked against a limit on pixels
//! ([`max_pixels`]: `WSSS_MAX_IMAGE_MEGAPIXELS`, default [`DEFAULT_MAX_MEGAPIXELS`]), so the
//! memory one decode takes is known before it starts (at most 8 bytes a pixel, for 16-bit
//! RGBA) and an oversized image is refused up front with its path, its size and the setting to
//! change — never a decoder's "Memory limit exceeded" after a run has started. Within the
//! limit the decoder's own allocation cap is raised to fit the image.

use std::path::Path;
use std::sync::OnceLock;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::error::{Error, Result};

/// Default limit on the pixels of one image, in megapixels (16384 × 16384 fits; a 20000 ×
/// 20000 slide does not: tile it, or raise the limit).
pub const DEFAULT_MAX_MEGAPIXELS: u64 = 268;

/// Environment variable that sets the limit (megapixels, a positive integer).
pub const MAX_MEGAPIXELS_ENV: &str = "WSSS_MAX_IMAGE_MEGAPIXELS";

/// The largest number of pixels one image may have.
pub fn max_pixels() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mp = match std::env::var(MAX_MEGAPIXELS_ENV) {
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    tracing::warn!(
                        "ignoring {MAX_MEGAPIXELS_ENV}={v}: expected a positive whole number of \
                         megapixels; using {DEFAULT_MAX_MEGAPIXELS}"
                    );
                    DEFAULT_MAX_MEGAPIXELS
                }
            },
            Err(_) => DEFAULT_MAX_MEGAPIXELS,
        };
        mp * 1_000_000
    })
}

/// Refuse an image of `width` × `height` pixels above [`max_pixels`], naming `path`.
pub fn check_pixels(path: &Path, what: &str, width: u32, height: u32) -> Result<()> {
    let px = u64::from(width) * u64::from(height);
    if px > max_pixels() {
        return Err(Error::dataset(format!(
            "{what} {}: {width}×{height} is {:.0} megapixels, over the limit of {} \
             (set {MAX_MEGAPIXELS_ENV} to raise it, or tile the slide into smaller images)",
            path.display(),
            px as f64 / 1e6,
            max_pixels() / 1_000_000
        )));
    }
    Ok(())
}

/// Width and height as viewers show the image (its EXIF orientation applied: a 32×48 JPEG
/// stored with orientation 6 is 48×32), from the file's header, without decoding the pixels.
pub fn dimensions(path: &Path, what: &str) -> Result<(u32, u32)> {
    let bad = |e: image::ImageError| {
        Error::dataset(format!("{what} {}: cannot decode: {e}", path.display()))
    };
    let mut dec = reader(path, what)?.into_decoder().map_err(bad)?;
    let (w, h) = dec.dimensions();
    let o = dec.orientation().unwrap_or(Orientation::NoTransforms);
    Ok(if swaps_axes(o) { (h, w) } else { (w, h) })
}

/// Whether an orientation turns the image by a quarter (width and height swap).
pub fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Decode an opened reader after checking its size against [`max_pixels`], and apply its
/// EXIF orientation, so every image (and lossy mask) is what viewers show and what masks were
/// drawn on.
pub fn with_limits(
    reader: ImageReader<std::io::BufReader<std::fs::File>>,
    path: &Path,
    what: &str,
) -> Result<DynamicImage> {
    let bad = |e: image::ImageError| {
        Error::dataset(format!("{what} {}: cannot decode: {e}", path.display()))
    };
    let (w, h) = dimensions(path, what)?;
    check_pixels(path, what, w, h)?;
    let mut reader = reader;
    let mut limits = image::Limits::no_limits();
    limits.max_alloc = Some(u64::from(w) * u64::from(h) * 8 + (64 << 20));
    reader.limits(limits);
    let mut dec = reader.into_decoder().map_err(bad)?;
    let orientation = dec.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(dec).map_err(bad)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// A reader whose format comes from the file's content: an empty file, or one whose first
/// bytes match no image format (a text file named `.png`), is refused naming the path.
pub fn reader(path: &Path, what: &str) -> Result<ImageReader<std::io::BufReader<std::fs::File>>> {
    let bad = |m: String| Error::dataset(format!("{what} {}: {m}", path.display()));
    let mut head = [0u8; 64];
    let n = {
        let mut f = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let mut n = 0;
        while n < head.len() {
            match std::io::Read::read(&mut f, &mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(bad(format!("cannot read: {e}"))),
            }
        }
        n
    };
    if n == 0 {
        return Err(bad("is empty (0 bytes)".into()));
    }
    let format = image::guess_format(&head[..n])
        .map_err(|_| bad("is not an image file (its content matches no image format)".into()))?;
    let mut r = ImageReader::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    r.set_format(format);
    Ok(r)
}

/// Open and decode an image file (any supported format, detected from its content).
pub fn open(path: &Path, what: &str) -> Result<DynamicImage> {
    with_limits(reader(path, what)?, path, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_images_are_refused_from_the_header() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("huge.png");
        // A 20000×20000 grey PNG header with one all-zero row repeated: the file is small,
        // but decoding it would need 400 MB; the header alone refuses it.
        let f = std::fs::File::create(&p).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), 20000, 20000);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header().unwrap().into_stream_writer().unwrap();
        let row = vec![0u8; 20000];
        for _ in 0..20000 {
            std::io::Write::write_all(&mut w, &row).unwrap();
        }
        w.finish().unwrap();
        let e = open(&p, "image").unwrap_err().to_string();
        assert!(
            e.contains("huge.png")
                && e.contains("20000×20000 is 400 megapixels, over the limit of 268")
                && e.contains(MAX_MEGAPIXELS_ENV),
            "{e}"
        );
        assert_eq!(dimensions(&p, "image").unwrap(), (20000, 20000));
    }

    #[test]
    fn non_images_and_truncated_files_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notes.png");
        std::fs::write(&p, b"hello").unwrap();
        let e = open(&p, "image").unwrap_err().to_string();
        assert!(e.contains("notes.png") && e.contains("not an image"), "{e}");
        let p = d.path().join("empty.png");
        std::fs::write(&p, b"").unwrap();
        let e = open(&p, "image").unwrap_err().to_string();
        assert!(e.contains("empty.png: is empty"), "{e}");
        let p = d.path().join("cut.png");
        let mut bytes = Vec::new();
        image::RgbImage::new(16, 16)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = open(&p, "image").unwrap_err().to_string();
        assert!(e.contains("cut.png") && e.contains("cannot decode"), "{e}");
    }
}
