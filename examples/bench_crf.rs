//! Dense CRF throughput (`cam.refine = "crf"`, default kernels, 10 mean-field iterations) on a
//! GlaS-sized 775×522 image, in megapixels per second on this machine's threads.
//!
//! `cargo run --release --example bench_crf [-- IMAGE]` (an H&E tile; a synthetic one by
//! default). The same refinement with PyPI's `pydensecrf2` (single-threaded C++) is what the
//! README's number is compared with.

use std::time::Instant;

use image::{GrayImage, RgbImage};
use wsss::cam::refine::crf::refine_crf;
use wsss::config::CrfConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let img: RgbImage = match std::env::args().nth(1) {
        Some(p) => image::open(p)?.into_rgb8(),
        None => RgbImage::from_fn(775, 522, |x, y| {
            let t = ((x * 7 + y * 13) % 11) as u8;
            if (x as i64 - 380).pow(2) + (y as i64 - 260).pow(2) < 150 * 150 {
                image::Rgb([110 + t, 40 + t, 150 + t])
            } else {
                image::Rgb([225 + t, 190 + t, 215 + t])
            }
        }),
    };
    let (w, h) = img.dimensions();
    let cam = GrayImage::from_fn(w, h, |x, y| {
        let d = ((x as f32 - 400.0).powi(2) + (y as f32 - 270.0).powi(2)).sqrt();
        image::Luma([(255.0 / (1.0 + ((d - 170.0) / 30.0).exp())) as u8])
    });
    let c = CrfConfig::default();
    let _ = refine_crf(&img, &cam, 0.7, &c);
    let reps = 3;
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(refine_crf(&img, &cam, 0.7, &c));
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    let mp = (w * h) as f64 / 1e6;
    println!(
        "dense CRF {w}×{h}, 10 iterations: {s:.3} s per image, {:.2} MP/s",
        mp / s
    );
    Ok(())
}
