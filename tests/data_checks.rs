//! Numbers you can trust: masks read as stored, every dataset problem reported at once, no
//! training stage that trains nothing, geometry that fits small tiles, ids unique by
//! construction, linked folders followed, one verdict in every command.
//!
//! The datasets are made here, tile by tile, so every expected value is worked out by hand.

mod common;
use common::*;

use std::path::{Path, PathBuf};

const N: u32 = 32;

/// An RGB tile with a dark blob where `fg` says (so the networks have something to learn).
fn tile(w: u32, h: u32, fg: impl Fn(u32, u32) -> bool, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let n = ((x * 7 + y * 13 + seed * 31) % 17) as u8;
        if fg(x, y) {
            image::Rgb([90 + n, 40 + n, 120 + n])
        } else {
            image::Rgb([230 - n, 200 - n, 220 - n])
        }
    })
}

/// Write an 8-bit palette PNG of `indices` with a VOC-style palette (1 = dark red, 255 = a
/// light grey whose luma is 222: read as colours, the ignore index becomes foreground).
fn palette_png(path: &Path, w: u32, h: u32, indices: &[u8]) {
    let mut pal = vec![0u8; 256 * 3];
    pal[3..6].copy_from_slice(&[128, 0, 0]);
    pal[765..768].copy_from_slice(&[224, 224, 192]);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette(pal);
    enc.write_header()
        .unwrap()
        .write_image_data(indices)
        .unwrap();
}

fn save(img: &image::RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// Malignant foreground: columns 8..24, rows 4..32 (16 × 28 = 448 pixels); rows 0..4 are the
/// ignore band (4 × 32 = 128 pixels) in the palette masks.
fn fg_box(x: u32, y: u32) -> bool {
    (8..24).contains(&x) && (4..32).contains(&y)
}

/// The issue's layout: classes normal/malignant, patients n1–n3 / m1–m3, two 32×32 tiles
/// each, palette masks (0 background, 1 foreground, 255 ignore band) under `masks/`.
fn palette_dataset(root: &Path) {
    for (class, pats) in [
        ("normal", ["n1", "n2", "n3"]),
        ("malignant", ["m1", "m2", "m3"]),
    ] {
        for (pi, p) in pats.iter().enumerate() {
            for t in 0..2u32 {
                let pos = class == "malignant";
                let img = tile(N, N, |x, y| pos && fg_box(x, y), pi as u32 * 2 + t);
                save(&img, &root.join(format!("images/{class}/{p}/t{t}.png")));
                let idx: Vec<u8> = (0..N * N)
                    .map(|i| {
                        let (x, y) = (i % N, i / N);
                        match (pos, y < 4, fg_box(x, y)) {
                            (false, _, _) => 0,
                            (true, true, _) => 255,
                            (true, false, true) => 1,
                            (true, false, false) => 0,
                        }
                    })
                    .collect();
                palette_png(
                    &root.join(format!("masks/{class}/{p}/t{t}.png")),
                    N,
                    N,
                    &idx,
                );
            }
        }
    }
}

fn registry(sb: &Sandbox, entry: &str) -> PathBuf {
    sb.write("reg.toml", entry)
}

const FOLDER_INDEX: &str = "[ds]\nlayout = \"folder\"\nroot = \"ds\"\nmasks_dir = \"masks\"\nclasses = [\"normal\", \"malignant\"]\npositive_class = \"malignant\"\nmask_encoding = \"index\"\n";

fn run_with(sb: &Sandbox, reg: &Path, args: &[&str]) -> std::process::Output {
    sb.cmd()
        .env("WSSS_DATASETS", reg)
        .args(args)
        .output()
        .unwrap()
}

fn csv_rows(p: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(p)
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn palette_masks_are_read_as_indices_with_the_exact_baseline_scores() {
    let sb = Sandbox::new();
    palette_dataset(&sb.path().join("ds"));
    let reg = registry(&sb, FOLDER_INDEX);
    let m = sb.write("m.toml", SIX_PATIENTS);
    let o = run_with(&sb, &reg, &["run", m.to_str().unwrap(), "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let run = first_dir(sb.work().join("m"));
    // Valid: 2 normal tiles (1024 background pixels each) and 2 malignant tiles (448
    // foreground, 448 background, 128 ignored each): 3840 counted pixels, 896 foreground.
    // All background: IoU_bg = 2944/3840, IoU_fg = 0 → 0.383333. All foreground: IoU_fg =
    // 896/3840 → 0.116667. (Read as colours, the band was foreground: 0.359375 / 0.140625.)
    let bg = seg_metric(&run, "valid", "all_background", "miou");
    let fg = seg_metric(&run, "valid", "all_foreground", "miou");
    assert!((bg - 2944.0 / 3840.0 / 2.0).abs() < 1e-9, "{bg}");
    assert!((fg - 896.0 / 3840.0 / 2.0).abs() < 1e-9, "{fg}");
    assert_eq!(format!("{bg:.6} {fg:.6}"), "0.383333 0.116667");
}

#[test]
fn colour_and_lossy_masks_are_refused_and_a_declared_threshold_binarises_jpeg() {
    let sb = Sandbox::new();
    let root = sb.path().join("ds");
    palette_dataset(&root);
    // One RGB mask and one JPEG mask (its PNG removed).
    let rgb = root.join("masks/malignant/m1/t0.png");
    image::RgbImage::from_pixel(N, N, image::Rgb([255, 255, 255]))
        .save(&rgb)
        .unwrap();
    let jpg_mask = root.join("masks/malignant/m2/t1.jpg");
    std::fs::remove_file(root.join("masks/malignant/m2/t1.png")).unwrap();
    image::GrayImage::from_fn(N, N, |x, y| {
        image::Luma([if fg_box(x, y) { 255 } else { 0 }])
    })
    .save(&jpg_mask)
    .unwrap();
    let reg = registry(&sb, FOLDER_INDEX);
    let o = run_with(&sb, &reg, &["datasets", "ds", "--verify"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("m1/t0.png: is a Rgb PNG"), "{err}");
    assert!(
        err.contains("m2/t1.jpg: is stored in a lossy format (JPEG)")
            && err.contains("lossy_mask_threshold"),
        "{err}"
    );
    // A threshold binarises: it cannot keep an index mask's ignore value, so it needs binary
    // masks.
    let reg = registry(&sb, &format!("{FOLDER_INDEX}lossy_mask_threshold = 127\n"));
    let o = run_with(&sb, &reg, &["datasets", "ds", "--verify"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("needs `mask_encoding = \"binary\"`"),
        "{}",
        stderr(&o)
    );
    // Binary masks (the RGB one replaced, no ignore band) and a declared threshold: the JPEG
    // mask is accepted.
    for e in walkdir::WalkDir::new(root.join("masks"))
        .into_iter()
        .flatten()
    {
        let p = e.path().to_path_buf();
        if p.extension().is_some_and(|x| x == "png") {
            let pos = p.to_string_lossy().contains("/malignant/");
            let idx: Vec<u8> = (0..N * N)
                .map(|i| u8::from(pos && fg_box(i % N, i / N)))
                .collect();
            palette_png(&p, N, N, &idx);
        }
    }
    let binary = FOLDER_INDEX.replace("\"index\"", "\"binary\"");
    let reg = registry(&sb, &format!("{binary}lossy_mask_threshold = 127\n"));
    let o = run_with(&sb, &reg, &["datasets", "ds", "--verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn batch_size_one_trains_and_tiles_smaller_than_the_geometry_are_handled() {
    let sb = Sandbox::new();
    let root = sb.path().join("ds");
    // 40×28 tiles; at segmentation.scale = 0.25 they are 10×7 (the encoder halves its input
    // five times): scaled up at inference as in training, never a failure after training.
    let (w, h) = (40, 28);
    for (class, pats) in [
        ("normal", ["n1", "n2", "n3"]),
        ("malignant", ["m1", "m2", "m3"]),
    ] {
        for (pi, p) in pats.iter().enumerate() {
            for t in 0..2u32 {
                let pos = class == "malignant";
                let f = |x: u32, y: u32| pos && (10..30).contains(&x) && (6..22).contains(&y);
                save(
                    &tile(w, h, f, pi as u32 * 2 + t),
                    &root.join(format!("images/{class}/{p}/t{t}.png")),
                );
                let m = image::GrayImage::from_fn(w, h, |x, y| image::Luma([u8::from(f(x, y))]));
                let mp = root.join(format!("masks/{class}/{p}/t{t}.png"));
                std::fs::create_dir_all(mp.parent().unwrap()).unwrap();
                m.save(&mp).unwrap();
            }
        }
    }
    let reg = registry(
        &sb,
        "[ds]\nlayout = \"folder\"\nroot = \"ds\"\nmasks_dir = \"masks\"\nclasses = [\"normal\", \"malignant\"]\n",
    );
    let m = sb.write("m.toml", SIX_PATIENTS);
    let o = run_with(
        &sb,
        &reg,
        &[
            "run",
            m.to_str().unwrap(),
            "--no-report",
            "--set",
            "segmentation.scale=0.25",
            "--set",
            "segmentation.batch_size=1",
            "--set",
            "train.batch_size=1",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let run = first_dir(sb.work().join("m"));
    // Batch size 1: every one of the 8 training crops made a step (none dropped).
    let hist = csv_rows(&run.join("segment_history.csv"));
    assert_eq!(hist.len(), 1);
    let loss: f64 = hist[0][2].parse().unwrap();
    let acc: f64 = hist[0][3].parse().unwrap();
    assert!(loss > 0.0 && acc > 0.0, "{:?}", hist[0]);
    let hist = csv_rows(&run.join("history.csv"));
    let train_loss: f64 = hist[0][2].parse().unwrap();
    assert!(train_loss > 0.0, "{:?}", hist[0]);
    // Predictions at each tile's own size.
    let pred = first_png(&run.join("predictions"));
    assert_eq!(image::image_dimensions(&pred).unwrap(), (w, h));
}

fn first_png(dir: &Path) -> PathBuf {
    walkdir::WalkDir::new(dir)
        .follow_links(true)
        .into_iter()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "png"))
        .map(|e| e.path().to_path_buf())
        .unwrap_or_else(|| panic!("no png under {}", dir.display()))
}

#[test]
fn a_training_stage_that_made_no_step_fails_the_run() {
    let sb = Sandbox::new();
    let root = sb.path().join("ds");
    // CSV layout; with full supervision only one training image has a mask, in batches of
    // two: the segmenter's only batch has one crop and is dropped — zero optimiser steps.
    let mut csv = String::from("image,class,patient,mask\n");
    for (class, pats) in [("normal", ["n1", "n2"]), ("malignant", ["m1", "m2"])] {
        for p in pats {
            for t in 0..2 {
                let rel = format!("img/{p}_{t}.png");
                let pos = class == "malignant";
                save(&tile(N, N, |x, y| pos && fg_box(x, y), t), &root.join(&rel));
                let mask = if p == "m1" && t == 0 {
                    let mp = format!("msk/{p}_{t}.png");
                    std::fs::create_dir_all(root.join("msk")).unwrap();
                    image::GrayImage::from_fn(N, N, |x, y| image::Luma([u8::from(fg_box(x, y))]))
                        .save(root.join(&mp))
                        .unwrap();
                    mp
                } else {
                    String::new()
                };
                csv.push_str(&format!("{rel},{class},{p},{mask}\n"));
            }
        }
    }
    std::fs::write(root.join("index.csv"), csv).unwrap();
    let reg = registry(
        &sb,
        "[ds]\nlayout = \"csv\"\nroot = \"ds\"\nindex = \"index.csv\"\nclasses = [\"normal\", \"malignant\"]\n",
    );
    let m = sb.write(
        "m.toml",
        r#"
name = "m"
dataset = "ds"
[split]
method = "patients"
train_patients = ["n1", "m1"]
valid_patients = ["n2", "m2"]
[backbone]
width = 0.0625
[train]
image_size = 32
epochs = 1
batch_size = 2
[segmentation]
supervision = "full"
width = 0.0625
crop_size = 32
epochs = 1
batch_size = 2
"#,
    );
    let o = run_with(&sb, &reg, &["run", m.to_str().unwrap(), "--no-report"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("stage `segment` failed: epoch 1 made no optimiser step: 1 training example(s) in batches of 2"),
        "{err}"
    );
    // No result: the run is recorded as failed, and no evaluation exists.
    let run = first_dir(sb.work().join("m"));
    assert!(!run.join("seg_metrics.csv").exists());
}

#[test]
fn same_file_names_in_different_patient_folders_get_qualified_ids() {
    let sb = Sandbox::new();
    let root = sb.path().join("ds");
    palette_dataset(&root);
    let reg = registry(&sb, FOLDER_INDEX);
    let o = run_with(&sb, &reg, &["datasets", "ds", "--verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("12 images, 6 patients"), "{out}");
    // Every tile is t0/t1 in every patient folder; ids are patient/class/stem.
    let m = sb.write("m.toml", SIX_PATIENTS);
    let o = run_with(&sb, &reg, &["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let run = first_dir(sb.work().join("m"));
    let ids: Vec<String> = csv_rows(&run.join("split.csv"))
        .iter()
        .map(|r| r[0].to_string())
        .collect();
    assert_eq!(ids.len(), 12);
    assert!(ids.contains(&"m1/malignant/t0".to_string()), "{ids:?}");
    assert!(ids.contains(&"n3/normal/t1".to_string()), "{ids:?}");
    // One prediction file per image, named without clashes.
    let preds = walkdir::WalkDir::new(run.join("predictions"))
        .follow_links(true)
        .into_iter()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .count();
    assert_eq!(preds, 12);
    // The report (galleries included) was written.
    assert!(sb.path().join("reports/m/index.html").is_file());
}

#[cfg(unix)]
#[test]
fn linked_patient_folders_and_images_are_followed() {
    let sb = Sandbox::new();
    let root = sb.path().join("ds");
    let store = sb.path().join("store");
    palette_dataset(&store);
    // images/normal is real, images/malignant/m1 is a linked folder, m2's tiles linked files.
    std::fs::create_dir_all(root.join("images/malignant/m2")).unwrap();
    std::fs::create_dir_all(root.join("images/malignant/m3")).unwrap();
    std::os::unix::fs::symlink(store.join("images/normal"), root.join("images/normal")).unwrap();
    std::os::unix::fs::symlink(store.join("masks"), root.join("masks")).unwrap();
    std::os::unix::fs::symlink(
        store.join("images/malignant/m1"),
        root.join("images/malignant/m1"),
    )
    .unwrap();
    for p in ["m2", "m3"] {
        for t in 0..2 {
            std::os::unix::fs::symlink(
                store.join(format!("images/malignant/{p}/t{t}.png")),
                root.join(format!("images/malignant/{p}/t{t}.png")),
            )
            .unwrap();
        }
    }
    let reg = registry(&sb, FOLDER_INDEX);
    let o = run_with(&sb, &reg, &["datasets", "ds", "--verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("12 images, 6 patients"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn an_empty_class_folder_is_refused_by_validate_plan_and_run_alike() {
    let sb = Sandbox::new();
    let root = sb.path().join("ds");
    palette_dataset(&root);
    std::fs::remove_dir_all(root.join("images/malignant")).unwrap();
    std::fs::create_dir_all(root.join("images/malignant/m1")).unwrap();
    let reg = registry(&sb, FOLDER_INDEX);
    let m = sb.write("m.toml", SIX_PATIENTS);
    for cmd in ["validate", "plan", "run"] {
        let o = run_with(&sb, &reg, &[cmd, m.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("class `malignant` has no images"),
            "{cmd}: {}",
            stderr(&o)
        );
    }
    assert!(!sb.work().join("m").exists());
}

#[test]
fn a_masks_folder_beside_the_images_is_used_and_said_so() {
    let sb = Sandbox::new();
    palette_dataset(&sb.path().join("ds"));
    let reg = registry(
        &sb,
        "[ds]\nlayout = \"folder\"\nroot = \"ds\"\nclasses = [\"normal\", \"malignant\"]\nmask_encoding = \"index\"\n",
    );
    let o = sb
        .cmd()
        .env("WSSS_DATASETS", &reg)
        .env("WSSS_LOG", "info")
        .args(["datasets", "ds", "--verify"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("masks_dir is not set in the registry; using the masks/ folder"),
        "{}",
        stderr(&o)
    );
    // And they are scored: a run has ground-truth metrics.
    let m = sb.write("m.toml", SIX_PATIENTS);
    let o = run_with(&sb, &reg, &["run", m.to_str().unwrap(), "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let run = first_dir(sb.work().join("m"));
    let bg = seg_metric(&run, "valid", "all_background", "miou");
    assert_eq!(format!("{bg:.6}"), "0.383333");
    // `masks_dir = ""` declares no masks: nothing is scored against truth.
    let reg = registry(
        &sb,
        "[ds]\nlayout = \"folder\"\nroot = \"ds\"\nmasks_dir = \"\"\nclasses = [\"normal\", \"malignant\"]\n",
    );
    let o = run_with(&sb, &reg, &["datasets", "ds", "--verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn gcn_seeds_must_not_overlap() {
    let sb = Sandbox::new();
    let ok = sb.write("ok.toml", &format!("{MINIMAL}\n[cam]\nrefine = \"gcn\"\n"));
    let o = sb.run(&["validate", ok.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = sb.write(
        "m.toml",
        &format!("{MINIMAL}\n[cam]\nrefine = \"gcn\"\nthreshold = 0.5\n[cam.gcn]\nbackground_seed = 0.6\n"),
    );
    let o = sb.run(&["validate", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("m.toml")
            && err.contains("cam.gcn.background_seed")
            && err.contains("0.6 is above cam.threshold = 0.5"),
        "{err}"
    );
}

#[test]
fn the_cam_stage_reads_no_threshold_and_counts_no_excluded_patient() {
    let sb = Sandbox::new();
    palette_dataset(&sb.path().join("ds"));
    let reg = registry(&sb, FOLDER_INDEX);
    // n3 and m3 are in no split.
    let m = sb.write(
        "m.toml",
        &(SIX_PATIENTS
            .replace(
                "valid_patients = [\"n3\", \"m3\"]",
                "valid_patients = [\"n2\", \"m2\"]",
            )
            .replace(
                "train_patients = [\"n1\", \"n2\", \"m1\", \"m2\"]",
                "train_patients = [\"n1\", \"m1\"]",
            )
            + "[sweep.grid]\n\"cam.threshold\" = [0.3, 0.7]\n"),
    );
    let o = run_with(&sb, &reg, &["run", m.to_str().unwrap(), "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("stage cam: 1 distinct computation(s) for 2 variant(s)"),
        "{out}"
    );
    for run in std::fs::read_dir(sb.work().join("m")).unwrap().flatten() {
        if !run.path().is_dir() {
            continue;
        }
        let q = csv_rows(&run.path().join("cam_quality.csv"));
        // Threshold-free only: nothing in it depends on which variant ran first.
        assert!(q.iter().all(|r| &r[1] != "miou_at_threshold"), "{q:?}");
        let count = |split: &str| -> f64 {
            q.iter()
                .find(|r| &r[0] == split && &r[1] == "images_with_masks")
                .map(|r| r[2].parse().unwrap())
                .unwrap_or(0.0)
        };
        // n1 and m1 (2 tiles each) in train, n2 and m2 in valid; n3 and m3 nowhere.
        assert_eq!((count("train"), count("valid")), (4.0, 4.0), "{q:?}");
        // The pseudo stage reports the threshold its labels were made with.
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.path().join("pseudo_summary.json")).unwrap())
                .unwrap();
        let t = s["threshold"].as_f64().unwrap();
        let id = run.file_name().to_string_lossy().into_owned();
        assert!(id.contains(&format!("cam.threshold={t}")), "{id}: {t}");
        // The nearly-empty count is the pseudo_images table's positive rows under 1 %.
        let imgs = csv_rows(&run.path().join("pseudo_images.csv"));
        let positive: Vec<f64> = imgs
            .iter()
            .filter(|r| &r[2] == "malignant")
            .map(|r| r[6].parse().unwrap())
            .collect();
        let empty = positive.iter().filter(|&&f| f < 0.01).count();
        assert_eq!(
            s["positive_nearly_empty"].as_u64(),
            Some(empty as u64),
            "{id}"
        );
        assert_eq!(positive.len(), 4, "{id}: {imgs:?}");
        if empty > 0 {
            assert!(
                stderr(&o).contains("positive images have less than 1 % foreground"),
                "{}",
                stderr(&o)
            );
        }
    }
}

#[test]
fn environment_variables_that_are_not_manifest_keys_are_left_alone() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    let o = sb
        .cmd()
        .env("WSSS_HOME", "/somewhere")
        .env("WSSS_SHARED_DATA", "/elsewhere")
        .args(["validate", m.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("ignoring"), "{}", stderr(&o));
    let o = sb
        .cmd()
        .env("WSSS_DEVIC", "cpu")
        .args(["validate", m.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("ignoring WSSS_DEVIC: not a manifest key (did you mean WSSS_DEVICE?"),
        "{}",
        stderr(&o)
    );
}

/// Every file of a dataset, with its bytes, to show a command changed nothing on disk.
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

#[cfg(unix)]
#[test]
fn a_corpus_of_planted_faults_is_reported_in_one_pass() {
    let sb = Sandbox::new();
    let root = sb.path().join("ds");
    palette_dataset(&root);
    let img = |c: &str, p: &str, t: &str| root.join(format!("images/{c}/{p}/{t}"));
    let msk = |c: &str, p: &str, t: &str| root.join(format!("masks/{c}/{p}/{t}"));
    // 1 truncated image.
    let b = std::fs::read(img("normal", "n1", "t0.png")).unwrap();
    std::fs::write(img("normal", "n1", "t0.png"), &b[..b.len() / 2]).unwrap();
    // 2 empty image.
    std::fs::write(img("normal", "n1", "t1.png"), b"").unwrap();
    // 3 not an image, named like one.
    std::fs::write(img("normal", "n2", "t0.png"), b"scanner export log\n").unwrap();
    // 4 mask of the wrong size.
    palette_png(&msk("normal", "n2", "t1.png"), 16, 16, &[0; 256]);
    // 5 missing mask.
    std::fs::remove_file(msk("normal", "n3", "t0.png")).unwrap();
    // 6 lossy mask.
    std::fs::remove_file(msk("malignant", "m1", "t0.png")).unwrap();
    image::GrayImage::new(N, N)
        .save(msk("malignant", "m1", "t0.jpg"))
        .unwrap();
    // 7 colour mask.
    image::RgbImage::new(N, N)
        .save(msk("malignant", "m1", "t1.png"))
        .unwrap();
    // 8 a symbolic link loop inside a class folder.
    std::os::unix::fs::symlink(
        root.join("images/malignant"),
        root.join("images/malignant/m2/loop"),
    )
    .unwrap();
    // 9 an image outside any patient folder.
    save(
        &tile(N, N, |_, _| false, 1),
        &img("normal", "", "stray.png"),
    );
    // (m3's palette masks with an ignore band are valid and must not be reported.)
    let reg = registry(&sb, FOLDER_INDEX);
    // And a split naming a patient the dataset does not have: reported in the same pass.
    let m = sb.write(
        "m.toml",
        &SIX_PATIENTS.replace("[\"n3\", \"m3\"]", "[\"n3\", \"m3\", \"m7\"]"),
    );
    let before = snapshot(&root);
    let expected = [
        "n1/t0.png: cannot decode",
        "n1/t1.png: is empty (0 bytes)",
        "n2/t0.png: is not an image file",
        "n2/t1.png is 16×16 but its image",
        "has no mask (looked for",
        "m1/t0.jpg: is stored in a lossy format",
        "m1/t1.png: is a Rgb PNG",
        "a link loops back to",
        "stray.png is not in a patient folder",
    ];
    for args in [
        vec!["datasets", "ds", "--verify"],
        vec!["run", m.to_str().unwrap()],
        vec!["plan", m.to_str().unwrap()],
        vec!["validate", m.to_str().unwrap()],
    ] {
        let o = run_with(&sb, &reg, &args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        for e in expected {
            assert!(err.contains(e), "{args:?}: missing `{e}` in\n{err}");
        }
        if args[0] != "datasets" {
            assert!(
                err.contains("key `split.valid_patients`: patient `m7` is not in dataset `ds`"),
                "{args:?}: {err}"
            );
        }
        assert!(
            !err.contains("m3/"),
            "{args:?}: valid files reported:\n{err}"
        );
    }
    assert_eq!(snapshot(&root), before, "a command changed the dataset");
    assert!(!sb.work().join("m").exists(), "a run directory was made");
}

#[test]
fn an_edited_mask_of_the_same_size_changes_the_fingerprint() {
    let sb = Sandbox::new();
    let root = sb.path().join("ds");
    palette_dataset(&root);
    // Uncompressed TIFF masks (binary, no ignore band) keep their byte size when relabelled.
    for e in walkdir::WalkDir::new(root.join("masks"))
        .into_iter()
        .flatten()
    {
        let p = e.path().to_path_buf();
        if p.extension().is_some_and(|x| x == "png") {
            let pos = p.to_string_lossy().contains("/malignant/");
            let g = image::GrayImage::from_fn(N, N, |x, y| {
                image::Luma([u8::from(pos && fg_box(x, y))])
            });
            std::fs::remove_file(&p).unwrap();
            g.save(p.with_extension("tif")).unwrap();
        }
    }
    let reg = registry(&sb, &FOLDER_INDEX.replace("\"index\"", "\"binary\""));
    let m = sb.write("m.toml", SIX_PATIENTS);
    let o = run_with(&sb, &reg, &["run", m.to_str().unwrap(), "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mask = root.join("masks/malignant/m3/t0.tif");
    let before = std::fs::metadata(&mask).unwrap().len();
    image::GrayImage::from_pixel(N, N, image::Luma([1]))
        .save(&mask)
        .unwrap();
    assert_eq!(std::fs::metadata(&mask).unwrap().len(), before, "same size");
    // The run directory holds results of other data: refused by plan and run alike (not
    // reported as cached), until --fresh moves it aside.
    for cmd in ["plan", "run"] {
        let o = run_with(
            &sb,
            &reg,
            &[cmd, m.to_str().unwrap(), "--no-report"][..2 + usize::from(cmd == "run")],
        );
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("the data changed"),
            "{cmd}: {}",
            stderr(&o)
        );
    }
    let o = run_with(
        &sb,
        &reg,
        &["run", m.to_str().unwrap(), "--no-report", "--fresh"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let run = first_dir(sb.work().join("m"));
    // m3's two tiles: t0 now all foreground (1024), t1 as before (448 of 896 counted).
    let fg = seg_metric(&run, "valid", "all_foreground", "iou_foreground");
    assert!(
        (fg - (1024.0 + 448.0) / (2048.0 + 1024.0 + 1024.0)).abs() < 1e-9,
        "{fg}"
    );
}

#[test]
fn sweeps_over_settings_nothing_reads_are_refused_as_fake_replicates() {
    let sb = Sandbox::new();
    palette_dataset(&sb.path().join("ds"));
    let reg = registry(&sb, FOLDER_INDEX);
    for (sweep, key) in [
        ("\"split.seed\" = [0, 1, 2]", "split.seed"),
        ("\"loss.focal_gamma\" = [1.0, 2.0]", "loss.focal_gamma"),
        (
            "\"split.valid_patients\" = [[\"n3\", \"m3\"], [\"m3\", \"n3\"]]",
            "split.valid_patients",
        ),
    ] {
        let m = sb.write("m.toml", &format!("{SIX_PATIENTS}[sweep.grid]\n{sweep}\n"));
        // `validate` refuses what `plan` and `run` refuse (it used to accept these).
        for cmd in ["validate", "plan", "run"] {
            let o = run_with(&sb, &reg, &[cmd, m.to_str().unwrap()]);
            assert_eq!(o.status.code(), Some(2), "{sweep} {cmd}: {}", stderr(&o));
            let err = stderr(&o);
            assert!(
                err.contains("compute the same thing") && err.contains(&format!("`{key}`")),
                "{sweep} {cmd}: {err}"
            );
        }
    }
    assert!(!sb.work().join("m").exists());
    // Also when the dataset is not on this machine: the keys are told apart on its registry
    // entry alone.
    std::fs::rename(sb.path().join("ds"), sb.path().join("elsewhere")).unwrap();
    let m = sb.write(
        "m.toml",
        &format!("{SIX_PATIENTS}[sweep.grid]\n\"split.seed\" = [0, 1]\n"),
    );
    let o = run_with(&sb, &reg, &["validate", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("compute the same thing") && err.contains("`split.seed`"),
        "{err}"
    );
    let ok = sb.write(
        "ok.toml",
        &format!("{SIX_PATIENTS}[sweep.grid]\n\"train.seed\" = [0, 1]\n"),
    );
    let o = run_with(&sb, &reg, &["validate", ok.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("is not on this machine"),
        "{}",
        stdout(&o)
    );
}

#[cfg(unix)]
#[test]
fn one_file_is_one_image_and_one_image_has_one_mask() {
    let sb = Sandbox::new();
    let root = sb.path().join("ds");
    palette_dataset(&root);
    // A linked copy of a valid tile under a training patient, a second mask for one image,
    // and a mask in a format masks are not read from.
    std::os::unix::fs::symlink(
        root.join("images/malignant/m3/t0.png"),
        root.join("images/malignant/m1/copy.png"),
    )
    .unwrap();
    std::fs::copy(
        root.join("masks/malignant/m3/t0.png"),
        root.join("masks/malignant/m1/copy.png"),
    )
    .unwrap();
    std::fs::copy(
        root.join("masks/malignant/m2/t0.png"),
        root.join("masks/malignant/m2/t0.tif"),
    )
    .unwrap();
    std::fs::rename(
        root.join("masks/normal/n1/t1.png"),
        root.join("masks/normal/n1/t1.gif"),
    )
    .unwrap();
    let reg = registry(&sb, FOLDER_INDEX);
    let o = run_with(&sb, &reg, &["datasets", "ds", "--verify"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(
            "is image `m1/malignant/copy` (patient m1) and image `m3/malignant/t0` (patient m3)"
        ) || err.contains(
            "is image `m3/malignant/t0` (patient m3) and image `m1/malignant/copy` (patient m1)"
        ),
        "{err}"
    );
    assert!(err.contains("m2/t0.png has several masks"), "{err}");
    assert!(err.contains("t1.gif, not a mask format"), "{err}");
}
