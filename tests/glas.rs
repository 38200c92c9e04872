//! The real GlaS copy in `../shared/data` (or `WSSS_SHARED_DATA`), through `datasets.toml`.
//! Skipped, with a message saying so, when the data is absent.

mod common;
use common::*;

use wsss::config::{SplitConfig, SplitMethod};
use wsss::data::{self, split, Registry};

macro_rules! require_glas {
    () => {
        match shared_data() {
            Some(p) => p,
            None => {
                eprintln!("SKIPPED: GlaS not found at ../shared/data/glas (set WSSS_SHARED_DATA to run this test)");
                return;
            }
        }
    };
}

fn glas_index() -> data::DatasetIndex {
    // The registry's root is `${WSSS_SHARED_DATA:-../shared/data}/glas`, the same place
    // `shared_data()` looks.
    let reg = Registry::load(&repo().join("datasets.toml")).unwrap();
    data::open(reg.get("glas").unwrap()).unwrap()
}

#[test]
fn glas_scans_to_129_images_of_14_patients() {
    require_glas!();
    let idx = glas_index();
    assert_eq!(idx.samples.len(), 129);
    assert_eq!(idx.patients().len(), 14);
    let counts = idx.class_counts();
    assert_eq!(counts["benign"], 58);
    assert_eq!(counts["malignant"], 71);
    let s = idx.samples.iter().find(|s| s.id == "train_1").unwrap();
    assert_eq!(s.patient, "2");
    assert_eq!(idx.spec.classes[s.class], "malignant");
    assert!(s.mask.as_ref().unwrap().ends_with("masks/train_1_anno.png"));
    let p10 = idx.samples.iter().filter(|s| s.patient == "10").count();
    assert_eq!(p10, 23, "patient 10: 19 benign + 4 malignant");
}

#[test]
fn glas_patient_splits_never_leak() {
    require_glas!();
    let idx = glas_index();
    for seed in 0..10 {
        for cfg in [
            SplitConfig {
                seed,
                valid_fraction: 0.2,
                test_fraction: 0.2,
                ..Default::default()
            },
            SplitConfig {
                seed,
                method: SplitMethod::Kfold,
                folds: 3,
                fold: (seed % 3) as u32,
                ..Default::default()
            },
        ] {
            let a = split::assign(&idx, &cfg, "test").unwrap();
            let rows = split::rows(&idx, &a);
            split::check_no_leakage(&rows).unwrap();
            for s in ["train", "valid"] {
                for c in ["benign", "malignant"] {
                    assert!(
                        rows.iter().any(|r| r.split.as_str() == s && r.class == c),
                        "seed {seed}: {s} lacks {c}"
                    );
                }
            }
        }
    }
}

#[test]
fn glas_masks_follow_the_talk_protocol() {
    require_glas!();
    let idx = glas_index();
    let benign = idx
        .samples
        .iter()
        .find(|s| idx.spec.classes[s.class] == "benign")
        .unwrap();
    let gt = data::mask::ground_truth(&idx.spec, benign)
        .unwrap()
        .unwrap();
    assert!(
        gt.pixels().all(|p| p.0[0] == 0),
        "benign images are all background"
    );
    let malignant = idx.samples.iter().find(|s| s.id == "train_1").unwrap();
    let gt = data::mask::ground_truth(&idx.spec, malignant)
        .unwrap()
        .unwrap();
    let fg = gt.pixels().filter(|p| p.0[0] == 1).count() as f64 / (gt.width() * gt.height()) as f64;
    assert!(
        (fg - 0.4267).abs() < 0.01,
        "gland fraction of train_1 per labels.csv is 0.4267, got {fg}"
    );
}

/// Run a shipped GlaS manifest through the CLI with test-size overrides (`TINY` + `extra`);
/// returns the sandbox and the run directory of its seed-0 pseudo-label variant.
fn run_reduced(
    shared: &std::path::Path,
    manifest: &str,
    extra: &[&str],
) -> (Sandbox, std::path::PathBuf) {
    let sb = Sandbox::new();
    let manifest = repo().join("experiments").join(manifest);
    let mut args: Vec<&str> = vec!["run", manifest.to_str().unwrap()];
    args.extend(TINY);
    args.extend(extra);
    let o = sb
        .cmd()
        .env("WSSS_DATASETS", repo().join("datasets.toml"))
        .env("WSSS_SHARED_DATA", shared)
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let name = manifest.file_stem().unwrap().to_string_lossy().to_string();
    let rd = std::fs::read_dir(sb.work().join(name))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.to_string_lossy()
                .contains("supervision=pseudo,train.seed=0")
        })
        .unwrap();
    (sb, rd)
}

/// The talk's protocol manifest itself (`experiments/glas-talk.toml`: 3 seeds × weak/full),
/// shrunk to test size with overrides, end to end through the CLI: every stage, the baselines
/// and the report — so the real-data path cannot silently break.
#[test]
fn glas_talk_manifest_runs_end_to_end_reduced() {
    let shared = require_glas!();
    let (sb, rd) = run_reduced(
        &shared,
        "glas-talk.toml",
        &["--set", "segmentation.crop_size=64"],
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rd.join("data_summary.json")).unwrap()).unwrap();
    assert_eq!(summary["images"], 129);
    assert_eq!(summary["patients"], 14);
    assert_eq!(summary["max_size"], serde_json::json!([775, 522]));
    // image labels learned on windows: window- and image-level metrics, one prediction and
    // one full-size CAM per image
    let metrics = std::fs::read_to_string(rd.join("classify_metrics.csv")).unwrap();
    assert!(metrics.contains("valid,window,auc") && metrics.contains("valid,image,auc"));
    let preds = wsss::table::read_parquet(&rd.join("predictions.parquet")).unwrap();
    assert_eq!(preds.height(), 129);
    let mut cams = 0;
    for e in std::fs::read_dir(rd.join("cams")).unwrap().flatten() {
        let tile = shared.join("glas/images").join(e.file_name());
        let dims = image::image_dimensions(e.path()).unwrap();
        assert_eq!(dims, image::image_dimensions(&tile).unwrap(), "{tile:?}");
        cams += 1;
    }
    assert_eq!(cams, 129);
    // held-out patients are reported, and none of them trains
    let valid = summary["patients_per_split"]["valid"].as_array().unwrap();
    let train = summary["patients_per_split"]["train"].as_array().unwrap();
    assert_eq!(valid.len() + train.len(), 14);
    assert!(valid.iter().all(|p| !train.contains(p)));
    // the report: 6 variants, baselines beside the segmenter
    let rep = sb.path().join("reports/glas-talk");
    let df = wsss::table::read_parquet(&rep.join("summary.parquet")).unwrap();
    assert_eq!(df.height(), 6);
    for c in [
        "seg_miou",
        "pseudo_miou",
        "otsu_miou",
        "gated_otsu_miou",
        "all_background_miou",
        "all_foreground_miou",
        "gated_segmenter_miou",
    ] {
        let v = wsss::report::data::nums(&df, c).unwrap_or_else(|| panic!("no column {c}"));
        assert!(v.iter().all(|x| (0.0..=1.0).contains(x)), "{c}: {v:?}");
    }
    // baselines do not depend on the variant; all-background mIoU = bg IoU / 2 exactly
    let otsu = wsss::report::data::nums(&df, "otsu_miou").unwrap();
    assert!(otsu.iter().all(|x| (x - otsu[0]).abs() < 1e-12));
    let m = wsss::table::read_parquet(&rd.join("seg_metrics.parquet")).unwrap();
    let get = |source: &str, metric: &str| {
        let s = wsss::report::data::strs(&m, "source").unwrap();
        let sp = wsss::report::data::strs(&m, "split").unwrap();
        let me = wsss::report::data::strs(&m, "metric").unwrap();
        let v = wsss::report::data::nums(&m, "value").unwrap();
        (0..s.len())
            .find(|&i| s[i] == source && sp[i] == "valid" && me[i] == metric)
            .map(|i| v[i])
            .unwrap()
    };
    let bg = get("all_background", "iou_background");
    assert!((get("all_background", "miou") - bg / 2.0).abs() < 1e-12);
    assert!(rep.join("index.html").is_file());
}

/// The OEEM protocol manifest itself (`experiments/glas-oeem.toml`: patch-level labels from the
/// gland masks, 3 seeds × weak/full), shrunk to test size (larger, fewer windows), end to end:
/// windows and their labels, the multi-label classifier's metrics, pseudo labels with glands on
/// benign images too (every gland is foreground), baselines and the report.
#[test]
fn glas_oeem_manifest_runs_end_to_end_reduced() {
    let shared = require_glas!();
    let (sb, rd) = run_reduced(
        &shared,
        "glas-oeem.toml",
        &[
            "--set",
            "labels.patch_size=128",
            "--set",
            "labels.patch_stride=128",
        ],
    );
    use wsss::report::data::{nums, strs};
    // Held-out windows of 128 px every 128 px: ⌈(side − 128) / 128⌉ + 1 per axis (7 × 5 on a
    // 775×522 tile), the last row and column ending at the border.
    let p = wsss::table::read_parquet(&rd.join("patches.parquet")).unwrap();
    let split = wsss::table::read_parquet(&rd.join("split.parquet")).unwrap();
    let (ids, sps) = (strs(&split, "id").unwrap(), strs(&split, "split").unwrap());
    let (ws, hs) = (
        nums(&split, "width").unwrap(),
        nums(&split, "height").unwrap(),
    );
    let per_axis = |l: f64| ((l - 128.0) / 128.0).ceil() as usize + 1;
    let want: usize = (0..ids.len())
        .filter(|&i| sps[i] == "valid")
        .map(|i| per_axis(ws[i]) * per_axis(hs[i]))
        .sum();
    assert_eq!(p.height(), want);
    assert_eq!(per_axis(775.0) * per_axis(522.0), 35);
    let (b, f) = (
        strs(&p, "has_background").unwrap(),
        strs(&p, "has_foreground").unwrap(),
    );
    assert!((0..b.len()).all(|i| b[i] == "true" || f[i] == "true"));
    let m = std::fs::read_to_string(rd.join("classify_metrics.csv")).unwrap();
    assert!(m.contains("valid,patch,auc") && m.contains("valid,patch-background,auc"));
    // Benign tiles have glands in this protocol, and their pseudo labels show them.
    let pi = wsss::table::read_parquet(&rd.join("pseudo_images.parquet")).unwrap();
    let (cls, sp, fg) = (
        strs(&pi, "class").unwrap(),
        strs(&pi, "split").unwrap(),
        nums(&pi, "fg_fraction").unwrap(),
    );
    assert!((0..cls.len()).any(|i| cls[i] == "benign" && sp[i] == "train" && fg[i] > 0.0));
    // The report: 6 variants, the patch-level accuracy and the baselines beside the segmenter.
    let df =
        wsss::table::read_parquet(&sb.path().join("reports/glas-oeem/summary.parquet")).unwrap();
    assert_eq!(df.height(), 6);
    for c in [
        "accuracy",
        "seg_miou",
        "pseudo_miou",
        "otsu_miou",
        "all_foreground_miou",
    ] {
        let v = nums(&df, c).unwrap_or_else(|| panic!("no column {c}"));
        assert!(v.iter().all(|x| (0.0..=1.0).contains(x)), "{c}: {v:?}");
    }
}
