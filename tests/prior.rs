//! The nuclear-density prior of `cam.refine = "haematoxylin"`
//! ([`wsss::cam::refine::haematoxylin::nuclear_density_prior`]) against an independent
//! implementation: NumPy's colour deconvolution, SciPy's Gaussian filter and scikit-image's
//! Otsu threshold on the same synthetic image, at σ = 2 and 8 px.
//! `tests/fixtures/prior/reference.json` was computed once by `make_reference.py` beside it; a
//! second test reruns the script live where scikit-image imports (CI sets
//! `WSSS_REQUIRE_SKIMAGE=1`, so there it cannot skip).

mod common;
use common::*;

use image::RgbImage;
use wsss::cam::refine::haematoxylin::nuclear_density_prior;

const W: u32 = 64;
const H: u32 = 48;

/// The script's image: purple disc-shaped glands in pink stroma with an integer-formula texture.
fn image() -> RgbImage {
    RgbImage::from_fn(W, H, |x, y| {
        let n = ((x * 37 + y * 91 + (x * y) % 23) % 17) as u8;
        let (xi, yi) = (i64::from(x), i64::from(y));
        let gland =
            (xi - 18).pow(2) + (yi - 20).pow(2) < 121 || (xi - 46).pow(2) + (yi - 30).pow(2) < 81;
        if gland {
            image::Rgb([70 + n, 45 + n, 130 + n])
        } else {
            image::Rgb([225 + n / 2, 165 + n, 195 + n])
        }
    })
}

/// Every pixel of the prior equal to the reference's but for float rounding at the cut (the
/// reference is f64, the prior f32): at most 2 of 3 072 pixels (none when this was written; a
/// cut at the Otsu bin's centre instead of its upper edge moves several), and the glands found.
fn matches(text: &str) {
    let r: serde_json::Value = serde_json::from_str(text).unwrap();
    let img = image();
    for case in r.as_array().unwrap() {
        let sigma = case["sigma"].as_f64().unwrap();
        let want: Vec<bool> = case["prior"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64() == Some(1))
            .collect();
        let got = nuclear_density_prior(&img, sigma).expect("the image is not flat");
        assert_eq!(got.len(), want.len());
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert!(
            differ <= 2,
            "sigma {sigma}: {differ} of {} pixels differ",
            got.len()
        );
        // The discs' centres are inside the prior, the stroma's corners outside.
        let at = |x: u32, y: u32| got[(y * W + x) as usize];
        assert!(at(18, 20) && at(46, 30), "sigma {sigma}");
        assert!(!at(0, 47) && !at(63, 0), "sigma {sigma}");
        // The reference's prior is not trivial either.
        let n = want.iter().filter(|&&v| v).count();
        assert!(n > 300 && n < 2000, "sigma {sigma}: {n}");
    }
}

#[test]
fn nuclear_density_prior_matches_scipy_and_scikit_image() {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/prior/reference.json")).unwrap();
    matches(&text);
}

#[test]
fn nuclear_density_prior_matches_scipy_and_scikit_image_live() {
    let script = "tests/fixtures/prior/make_reference.py";
    let hint = "pip install scikit-image";
    if let Some(out) = live_reference(script, "WSSS_REQUIRE_SKIMAGE", "scikit-image", hint) {
        matches(&out);
    }
}
