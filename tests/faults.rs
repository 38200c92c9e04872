//! Nothing lost, nothing silent (part 2): image orientation, clashing outputs, closed pipes,
//! fake replicates, and what a user names is checked where it is given.

mod common;
use common::*;

use std::io::Read;
use std::path::Path;

/// A little-endian EXIF block holding one tag: Orientation = `o`.
fn exif_orientation(o: u16) -> Vec<u8> {
    let mut b = b"II*\0".to_vec();
    b.extend(8u32.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(0x0112u16.to_le_bytes());
    b.extend(3u16.to_le_bytes());
    b.extend(1u32.to_le_bytes());
    b.extend(o.to_le_bytes());
    b.extend(0u16.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b
}

fn jpeg_with_orientation(img: &image::RgbImage, o: u16, path: &Path) {
    use image::ImageEncoder;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(f, 95);
    enc.set_exif_metadata(exif_orientation(o)).unwrap();
    enc.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
}

/// The stored (sensor) tile: 32 wide, 48 tall; a dark blob where `fg` says.
fn stored_tile(seed: u32, pos: bool) -> image::RgbImage {
    image::RgbImage::from_fn(32, 48, |x, y| {
        let n = ((x * 5 + y * 11 + seed * 7) % 13) as u8;
        if pos && (4..20).contains(&x) && (6..30).contains(&y) {
            image::Rgb([80 + n, 30 + n, 120 + n])
        } else {
            image::Rgb([235 - n, 205 - n, 225 - n])
        }
    })
}

const REG: &str = "[ds]\nlayout = \"folder\"\nroot = \"ds\"\nmasks_dir = \"masks\"\nclasses = [\"normal\", \"malignant\"]\n";

/// Tiles stored rotated with an EXIF orientation (as cameras and some scanners write them),
/// masks drawn on the image as viewers show it; and the same tiles stored upright.
fn orientation_datasets(rotated: &Path, upright: &Path) {
    for (class, pats) in [
        ("normal", ["n1", "n2", "n3"]),
        ("malignant", ["m1", "m2", "m3"]),
    ] {
        for (pi, p) in pats.iter().enumerate() {
            for t in 0..2u32 {
                let pos = class == "malignant";
                let o = [6u16, 8, 3][(pi + t as usize) % 3];
                let rel = format!("images/{class}/{p}/t{t}.jpg");
                jpeg_with_orientation(&stored_tile(pi as u32 * 2 + t, pos), o, &rotated.join(&rel));
                // What a viewer shows: the decoded pixels turned by the orientation.
                let raw = image::ImageReader::open(rotated.join(&rel))
                    .unwrap()
                    .decode()
                    .unwrap();
                let shown = match o {
                    6 => raw.rotate90(),
                    8 => raw.rotate270(),
                    _ => raw.rotate180(),
                }
                .into_rgb8();
                let up = upright.join(format!("images/{class}/{p}/t{t}.png"));
                std::fs::create_dir_all(up.parent().unwrap()).unwrap();
                shown.save(&up).unwrap();
                // The mask, drawn on what the viewer shows.
                let mask = image::GrayImage::from_fn(shown.width(), shown.height(), |x, y| {
                    let px = shown.get_pixel(x, y).0;
                    image::Luma([u8::from(pos && px[0] < 160)])
                });
                for root in [rotated, upright] {
                    let mp = root.join(format!("masks/{class}/{p}/t{t}.png"));
                    std::fs::create_dir_all(mp.parent().unwrap()).unwrap();
                    mask.save(&mp).unwrap();
                }
            }
        }
    }
}

#[test]
fn exif_orientation_is_applied_by_every_decode() {
    let sb = Sandbox::new();
    orientation_datasets(&sb.path().join("ds"), &sb.path().join("up"));
    let reg = sb.write(
        "reg.toml",
        &format!(
            "{REG}\n{}",
            REG.replace("[ds]", "[up]")
                .replace("root = \"ds\"", "root = \"up\"")
        ),
    );
    // Masks drawn as viewers show the tiles match them (48×32), so the dataset checks pass.
    let o = sb
        .cmd()
        .env("WSSS_DATASETS", &reg)
        .args(["datasets", "ds", "--verify"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = sb.write("m.toml", SIX_PATIENTS);
    let mu = sb.write(
        "mu.toml",
        &SIX_PATIENTS
            .replace("name = \"m\"", "name = \"mu\"")
            .replace("dataset = \"ds\"", "dataset = \"up\""),
    );
    for p in [&m, &mu] {
        let o = sb
            .cmd()
            .env("WSSS_DATASETS", &reg)
            .args(["run", p.to_str().unwrap(), "--no-report"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    // The rotated JPEGs and the upright PNGs of the same pixels score the Otsu baseline alike.
    let (a, b) = (
        first_dir(sb.work().join("m")),
        first_dir(sb.work().join("mu")),
    );
    for split in ["train", "valid"] {
        let (x, y) = (
            seg_metric(&a, split, "otsu", "miou"),
            seg_metric(&b, split, "otsu", "miou"),
        );
        assert_eq!(x, y, "{split}: otsu {x} (EXIF-rotated) vs {y} (upright)");
    }
    // `predict` writes label maps the size viewers show: m3's t1 is stored 32×48 with
    // orientation 6 (48×32 shown), t0 with orientation 3 (32×48 shown).
    let imgs = sb.path().join("ds/images/malignant/m3");
    let out = sb.path().join("pred");
    let o = sb
        .cmd()
        .env("WSSS_DATASETS", &reg)
        .args([
            "predict",
            "--run",
            a.to_str().unwrap(),
            "--images",
            imgs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        image::image_dimensions(out.join("labels/t1.png")).unwrap(),
        (48, 32)
    );
    assert_eq!(
        image::image_dimensions(out.join("labels/t0.png")).unwrap(),
        (32, 48)
    );
}

#[test]
fn predict_never_writes_two_inputs_to_one_file() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    assert_eq!(
        sb.run(&["run", m.to_str().unwrap(), "--no-report"])
            .status
            .code(),
        Some(0)
    );
    let rd = first_dir(sb.work().join("t"));
    let src = image::open(
        sb.path()
            .join("data/synthetic/images/malignant/P04/P04_00.png"),
    )
    .unwrap();
    let imgs = sb.path().join("new");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    for n in [
        "x.png",
        "x.jpg",
        "x.tif",
        "y.png",
        "sub/x.png",
        "sub/x.bmp",
        "z.jpg",
    ] {
        src.to_rgb8().save(imgs.join(n)).unwrap();
    }
    let out = sb.path().join("out");
    let o = sb.run(&[
        "predict",
        "--run",
        rd.to_str().unwrap(),
        "--images",
        imgs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut labels: Vec<String> = walkdir::WalkDir::new(out.join("labels"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            e.path()
                .strip_prefix(out.join("labels"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            "sub/x.bmp.png",
            "sub/x.png.png",
            "x.jpg.png",
            "x.png.png",
            "x.tif.png",
            "y.png",
            "z.png"
        ]
    );
    let table = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    assert_eq!(table.lines().count(), 8, "{table}");
    assert!(table.contains("\nx.jpg,x.jpg.png,"), "{table}");
}

/// Run `wsss` with its standard output closed after `keep` bytes.
fn with_closed_stdout(sb: &Sandbox, args: &[&str], keep: usize) -> (Option<i32>, String) {
    let mut child = sb
        .std_cmd()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; keep];
    let _ = out.read_exact(&mut buf);
    drop(out);
    let o = child.wait_with_output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_quietly_and_the_run_still_writes_its_report() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    let m = m.to_str().unwrap();
    for args in [
        vec!["schema"],
        vec!["validate", m],
        vec!["plan", m],
        vec!["datasets"],
    ] {
        let (code, err) = with_closed_stdout(&sb, &args, 1);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // `wsss run … | head -c 1`: every stage runs and the report is written.
    let (code, err) = with_closed_stdout(&sb, &["run", m], 1);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(sb.path().join("reports/t/index.html").is_file());
    for args in [vec!["compare", "t"], vec!["compare", "t", "--csv"]] {
        // Closed before anything is read (`| true`) and after one byte (`| head -c 1`).
        for keep in [0, 1] {
            let (code, err) = with_closed_stdout(&sb, &args, keep);
            assert_eq!(code, Some(0), "{args:?}: {err}");
            assert!(
                !err.contains("panicked") && !err.contains("error"),
                "{args:?}: {err}"
            );
        }
    }
}

#[test]
fn repeated_sweep_values_and_identical_configs_are_not_replicates() {
    let sb = Sandbox::new();
    for (sweep, expected) in [
        (
            "[sweep.grid]\n\"cam.threshold\" = [0.5, 0.5]",
            "key `sweep.grid.\"cam.threshold\"[1]`: repeats 0.5 (item 0)",
        ),
        // Variants that differ only in what changes nothing (a description) are one config.
        (
            "[sweep.grid]\n\"description\" = [\"a\", \"b\"]",
            "resolve to the same configuration",
        ),
        // A repeated zip tuple too.
        (
            "[sweep.zip]\n\"train.seed\" = [0, 0]\n\"split.seed\" = [1, 1]",
            "resolve to the same configuration",
        ),
    ] {
        let m = sb.write("m.toml", &format!("{MINIMAL}\n{sweep}\n"));
        let o = sb.run(&["validate", m.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{sweep}");
        assert!(stderr(&o).contains(expected), "{sweep}: {}", stderr(&o));
    }
}

#[test]
fn what_a_user_names_is_checked_where_it_is_given() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    assert_eq!(sb.run(&["run", m.to_str().unwrap()]).status.code(), Some(0));
    // An unknown image id for the report.
    let o = sb.run(&["report", "t", "--images", "P01/normal/P01_00,nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--images: no image `nope` in run"),
        "{}",
        stderr(&o)
    );
    // A name too long for a folder.
    let long = "x".repeat(240);
    let p = sb.write(
        "long.toml",
        &MINIMAL.replace("name = \"t\"", &format!("name = \"{long}\"")),
    );
    let o = sb.run(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("key `name`: is 240 characters long"),
        "{}",
        stderr(&o)
    );
    // An error found only after merging an `extends` chain names the files and the lists.
    sb.write(
        "base.toml",
        "name = \"b\"\n[sweep.zip]\n\"train.seed\" = [0, 1, 2]\n",
    );
    let c = sb.write(
        "child.toml",
        "name = \"c\"\nextends = \"base.toml\"\n[sweep.zip]\n\"split.seed\" = [0, 1]\n",
    );
    let o = sb.run(&["validate", c.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("base.toml")
            && err.contains("child.toml")
            && err.contains("`split.seed` has 2 (from")
            && err.contains("`train.seed` has 3 (from"),
        "{err}"
    );
}

#[test]
fn masks_with_upper_case_extensions_are_found() {
    let sb = Sandbox::new();
    let root = sb.path().join("ds");
    let o = sb.run(&[
        "synth",
        root.to_str().unwrap(),
        "--patients-per-class",
        "2",
        "--images-per-patient",
        "1",
        "--size",
        "32",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for e in walkdir::WalkDir::new(root.join("masks"))
        .into_iter()
        .flatten()
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "png") {
            std::fs::rename(p, p.with_extension("PNG")).unwrap();
        }
    }
    let reg = sb.write("reg.toml", REG);
    let o = sb
        .cmd()
        .env("WSSS_DATASETS", &reg)
        .args(["datasets", "ds", "--verify"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}
