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

#[test]
fn glas_data_stage_runs_through_the_cli() {
    require_glas!();
    let sb = Sandbox::new();
    let m = sb.write(
        "g.toml",
        "name = \"g\"\ndataset = \"glas\"\n[split]\nvalid_fraction = 0.2\ntest_fraction = 0.2\n[backbone]\nwidth = 0.0625\n[train]\nimage_size = 32\nepochs = 1\nbatch_size = 16\n[segmentation]\nwidth = 0.0625\ncrop_size = 256\nepochs = 1\n",
    );
    let o = sb
        .cmd()
        .env("WSSS_DATASETS", repo().join("datasets.toml"))
        .env("WSSS_SHARED_DATA", shared_data().unwrap())
        .args(["run", m.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rd = first_dir(sb.work().join("g"));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rd.join("data_summary.json")).unwrap()).unwrap();
    assert_eq!(summary["images"], 129);
    assert_eq!(summary["patients"], 14);
    assert_eq!(summary["max_size"], serde_json::json!([775, 522]));
}
