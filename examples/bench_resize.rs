//! Image resizing throughput: the bilinear (tent) resampler of data loading, the CAM stage,
//! evaluation and galleries (`wsss::data::resize::bilinear`, SIMD) against the `image` crate's
//! `Triangle` filter it replaced and, when `python3` (or `$PYTHON`) can import PIL, Pillow's
//! `BILINEAR` (the same filter; what a PyTorch/torchvision data loader resizes with), on one
//! thread, for the resizes a GlaS run makes of a 775×522 tile.
//!
//! Run: `cargo run --release --example bench_resize [-- IMAGE] [--reps N]`. Prints a Markdown
//! table of milliseconds per resize (median of N, default 20) and the ratios. A benchmark, not
//! a test: nothing asserts on time.

use std::process::Command;
use std::time::Instant;

use image::{imageops, RgbImage};

/// Target sizes: the classifier's inputs, the segmenter's scale 0.5 and 0.25, an upscale.
const TARGETS: [(&str, u32, u32); 5] = [
    ("to 128×128", 128, 128),
    ("to 224×224", 224, 224),
    ("scale 0.5 (388×261)", 388, 261),
    ("scale 0.25 (194×131)", 194, 131),
    ("up to 1024×690", 1024, 690),
];

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Pillow's median milliseconds per target, when PIL imports.
fn pillow(img: &RgbImage, reps: usize) -> Option<Vec<f64>> {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = std::env::temp_dir().join(format!("wsss-bench-resize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join("tile.png");
    img.save(&path).ok()?;
    let sizes: Vec<String> = TARGETS
        .iter()
        .map(|(_, w, h)| format!("({w},{h})"))
        .collect();
    let code = format!(
        "import time,statistics\nfrom PIL import Image\nim=Image.open(r'{}').convert('RGB')\n\
         for s in [{}]:\n  im.resize(s,Image.BILINEAR)\n  t=[]\n  for _ in range({reps}):\n    \
         a=time.perf_counter();im.resize(s,Image.BILINEAR);t.append((time.perf_counter()-a)*1e3)\n  \
         print(statistics.median(t))",
        path.display(),
        sizes.join(",")
    );
    let out = Command::new(py).args(["-c", &code]).output().ok();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.filter(|o| o.status.success())?;
    let v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    (v.len() == TARGETS.len()).then_some(v)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(20usize);
    let img: RgbImage = match args
        .iter()
        .find(|a| !a.starts_with("--") && a.parse::<usize>().is_err())
    {
        Some(p) => image::open(p)?.into_rgb8(),
        None => RgbImage::from_fn(775, 522, |x, y| {
            let t = ((x * 7 + y * 13) % 23) as u8;
            if (x as i64 - 380).pow(2) + (y as i64 - 260).pow(2) < 150 * 150 {
                image::Rgb([110 + t, 40 + t, 150 + t])
            } else {
                image::Rgb([210 + t, 180 + t, 200 + t])
            }
        }),
    };
    let (w, h) = img.dimensions();
    let pil = pillow(&img, reps);
    println!("Resizing a {w}×{h} RGB tile, one thread, median of {reps} (ms per resize)\n");
    println!("| resize | wsss (fast_image_resize) | image crate Triangle | wsss / image | Pillow BILINEAR | wsss / Pillow |");
    println!("|---|---|---|---|---|---|");
    for (i, (name, tw, th)) in TARGETS.iter().enumerate() {
        let ours = median_ms(reps, || {
            std::hint::black_box(wsss::data::resize::bilinear(&img, *tw, *th));
        });
        let theirs = median_ms(reps, || {
            std::hint::black_box(imageops::resize(
                &img,
                *tw,
                *th,
                imageops::FilterType::Triangle,
            ));
        });
        let (p, r) = match &pil {
            Some(v) => (format!("{:.2}", v[i]), format!("{:.2}×", ours / v[i])),
            None => ("–".into(), "–".into()),
        };
        println!(
            "| {name} | {ours:.2} | {theirs:.2} | {:.2}× | {p} | {r} |",
            ours / theirs
        );
    }
    if pil.is_none() {
        println!("\nPillow: not measured (python3 cannot import PIL; set PYTHON).");
    }
    Ok(())
}
