//! Ground-truth masks: turning a mask file's encoding into per-pixel labels.
//!
//! Labels are `0` background, `1` foreground, [`IGNORE`] unknown. Which pixels count as
//! foreground depends on the registry's `mask_encoding` and, for negative-class images, on
//! `negative_masks` (the talk's protocol makes them all background).

use image::GrayImage;

use super::registry::{DatasetSpec, MaskEncoding, NegativeMasks};
use super::scan::Sample;
use crate::error::{Error, Result};

/// Label value of pixels that do not count (as in the peer repositories).
pub const IGNORE: u8 = 255;

/// Map raw mask values to labels.
pub fn encode(raw: &GrayImage, enc: MaskEncoding) -> GrayImage {
    let mut out = raw.clone();
    for p in out.pixels_mut() {
        p.0[0] = match enc {
            MaskEncoding::Binary | MaskEncoding::Instance => u8::from(p.0[0] > 0),
            MaskEncoding::Index => match p.0[0] {
                0 => 0,
                IGNORE => IGNORE,
                _ => 1,
            },
        };
    }
    out
}

/// The ground-truth label map of a sample, or `None` when it has no mask.
pub fn ground_truth(spec: &DatasetSpec, s: &Sample) -> Result<Option<GrayImage>> {
    let Some(path) = &s.mask else { return Ok(None) };
    let raw = image::open(path)
        .map_err(|e| Error::dataset(format!("mask {}: cannot decode: {e}", path.display())))?
        .into_luma8();
    if s.class != spec.positive && spec.negative_masks == NegativeMasks::Background {
        return Ok(Some(GrayImage::new(raw.width(), raw.height())));
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

    #[test]
    fn encodings() {
        let raw = GrayImage::from_raw(4, 1, vec![0, 3, 255, 1]).unwrap();
        assert_eq!(
            encode(&raw, MaskEncoding::Instance).into_raw(),
            vec![0, 1, 1, 1]
        );
        assert_eq!(
            encode(&raw, MaskEncoding::Binary).into_raw(),
            vec![0, 1, 1, 1]
        );
        assert_eq!(
            encode(&raw, MaskEncoding::Index).into_raw(),
            vec![0, 1, 255, 1]
        );
    }
}
