//! Decoding image files with a known memory bound.
//!
//! Every image wsss reads (scan checks, training, CAM, evaluation, galleries, `predict`) is
//! decoded here, each file read once. Its size is read from the file's header first and checked against a limit on pixels
//! ([`max_pixels`]: `WSSS_MAX_IMAGE_MEGAPIXELS`, default [`DEFAULT_MAX_MEGAPIXELS`]), so the
//! memory one decode takes is known before it starts (at most 8 bytes a pixel, for 16-bit
//! RGBA) and an oversized image is refused up front with its path, its size and the setting to
//! change — never a decoder's "Memory limit exceeded" after a run has started. Within the
//! limit the decoder's own allocation cap is raised to fit the image.

use std::path::Path;
use std::sync::OnceLock;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

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

/// A file's bytes, read once (decoding and fingerprinting share them); errors name the path.
pub fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::dataset(format!("{what} {}: cannot read: {e}", path.display())))
}

/// The image format of a file's bytes, from its content: an empty file, or one whose first
/// bytes match no image format (a text file named `.png`), is refused naming the path.
pub fn format_of(bytes: &[u8], path: &Path, what: &str) -> Result<ImageFormat> {
    if bytes.is_empty() {
        return Err(Error::dataset(format!(
            "{what} {}: is empty (0 bytes)",
            path.display()
        )));
    }
    image::guess_format(bytes).map_err(|_| {
        Error::dataset(format!(
            "{what} {}: is not an image file (its content matches no image format)",
            path.display()
        ))
    })
}

/// Decode `bytes` (the file at `path`, in `format`) with one decoder: its header gives the
/// size and the EXIF orientation, the size as viewers show it is checked against
/// [`max_pixels`] before any pixel is decoded, the decoder's allocation cap is set to fit, and
/// the orientation is applied — so every image (and lossy mask) is what viewers show and what
/// masks were drawn on.
pub fn decode(bytes: &[u8], format: ImageFormat, path: &Path, what: &str) -> Result<DynamicImage> {
    let bad = |e: image::ImageError| {
        Error::dataset(format!("{what} {}: cannot decode: {e}", path.display()))
    };
    let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    // The header is read without a cap; the cap that fits is set once the size is known.
    reader.no_limits();
    let mut dec = reader.into_decoder().map_err(bad)?;
    let (w, h) = dec.dimensions();
    let orientation = dec.orientation().unwrap_or(Orientation::NoTransforms);
    let (vw, vh) = if swaps_axes(orientation) {
        (h, w)
    } else {
        (w, h)
    };
    check_pixels(path, what, vw, vh)?;
    let mut limits = image::Limits::no_limits();
    limits.max_alloc = Some(u64::from(w) * u64::from(h) * 8 + (64 << 20));
    dec.set_limits(limits).map_err(bad)?;
    let mut img = DynamicImage::from_decoder(dec).map_err(bad)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Open and decode an image file (any supported format, detected from its content).
pub fn open(path: &Path, what: &str) -> Result<DynamicImage> {
    let bytes = read(path, what)?;
    decode(&bytes, format_of(&bytes, path, what)?, path, what)
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
