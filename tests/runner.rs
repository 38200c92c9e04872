//! The runner end to end on tiny synthetic data: plans, caching, resume after a crash,
//! never-overwritten run directories.

mod common;
use common::*;

use std::path::Path;

fn ablation() -> String {
    repo()
        .join("experiments/ablation-threshold-loss.toml")
        .display()
        .to_string()
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn fake_replicates_are_refused_before_the_synthetic_data_exists() {
    // Under `loss.variant = "ce"` nothing reads `loss.focal_gamma`. The synthetic dataset is
    // not generated yet, so the keys are told apart on its registry entry; `plan` used to
    // list these variants and `validate` to accept them.
    let sb = Sandbox::new();
    let m = sb.write(
        "m.toml",
        &format!(
            "extends = {:?}\n[sweep.grid]\n\"loss.focal_gamma\" = [1.0, 2.0]\n",
            ablation()
        ),
    );
    for cmd in ["validate", "plan"] {
        let o = sb.run(&[cmd, m.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("compute the same thing") && err.contains("`loss.focal_gamma`"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn plan_lists_every_variant_and_shared_stages_and_a_second_run_does_nothing() {
    let sb = Sandbox::new();
    let o = sb.run(&["plan", &ablation()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("20 variant(s)"), "{out}");
    for t in ["0.5", "0.6", "0.7", "0.8", "0.9"] {
        for l in ["ce", "focal", "equivariance", "cam-area"] {
            assert!(
                out.contains(&format!("cam.threshold={t},loss.variant={l}")),
                "missing {t}/{l}"
            );
        }
    }
    assert!(out.contains("is generated on first run"), "{out}");

    let a = ablation();
    let run_args: Vec<&str> = ["run", a.as_str()]
        .into_iter()
        .chain(TINY.iter().copied())
        .collect();
    let plan_args: Vec<&str> = ["plan", a.as_str()]
        .into_iter()
        .chain(TINY.iter().copied())
        .collect();
    let o = sb.run(&run_args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    // The threshold does not reach the classifier: one training per loss variant.
    assert!(
        out.contains("stage data: 1 distinct computation(s) for 20 variant(s)"),
        "{out}"
    );
    assert!(
        out.contains("stage classify: 4 distinct computation(s) for 20 variant(s)"),
        "{out}"
    );
    // CAMs depend on the classifier, not on the threshold: computed once per classifier.
    assert!(
        out.contains("stage cam: 4 distinct computation(s) for 20 variant(s)"),
        "{out}"
    );
    assert!(
        out.contains("stage pseudo: 20 distinct computation(s) for 20 variant(s)"),
        "{out}"
    );
    assert!(
        out.contains("stage segment: 20 distinct computation(s) for 20 variant(s)"),
        "{out}"
    );
    assert!(out.contains("69 stage run(s), 51 cached"), "{out}");

    // One results table with a row per variant: swept values and every stage's numbers.
    let mut rdr =
        csv::Reader::from_path(sb.work().join("ablation-threshold-loss/results.csv")).unwrap();
    let header: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    for col in [
        "cam.threshold",
        "loss.variant",
        "status",
        "classify.valid_accuracy",
        "cam.cam_images_per_s",
        "pseudo.valid_miou",
        "pseudo.positive_fg_fraction",
    ] {
        assert!(
            header.iter().any(|h| h == col),
            "{col} missing from {header:?}"
        );
    }
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 20);
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
    // A higher threshold never labels more foreground (same classifier, same CAMs).
    for loss in ["ce", "focal", "equivariance", "cam-area"] {
        let mut by_t: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| &r[col("loss.variant")] == loss)
            .map(|r| {
                (
                    r[col("cam.threshold")].parse().unwrap(),
                    r[col("pseudo.positive_fg_fraction")].parse().unwrap(),
                )
            })
            .collect();
        by_t.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(by_t.len(), 5);
        assert!(
            by_t.windows(2).all(|w| w[1].1 <= w[0].1),
            "{loss}: {by_t:?}"
        );
    }

    let o = sb.run(&plan_args);
    let out = stdout(&o);
    assert!(!out.contains("to run"), "{out}");
    assert_eq!(out.matches("cached").count(), 120, "{out}");

    let entry = first_dir(sb.work().join(".cache/data"));
    let before = std::fs::metadata(entry.join("split.parquet"))
        .unwrap()
        .modified()
        .unwrap();
    let o = sb.run(&run_args);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("0 stage run(s), 120 cached"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        std::fs::metadata(entry.join("split.parquet"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );

    let exp = json(&sb.work().join("ablation-threshold-loss/experiment.json"));
    assert_eq!(exp["variants"].as_array().unwrap().len(), 20);
}

#[test]
fn run_directory_records_config_seed_versions_device_and_fingerprint() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    let o = sb.run(&["run", m.to_str().unwrap(), "--set", "train.seed=42"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let exp = sb.work().join("t");
    let dirs: Vec<_> = std::fs::read_dir(&exp)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(dirs.len(), 1);
    let rd = dirs[0].path();
    assert!(dirs[0]
        .file_name()
        .to_string_lossy()
        .starts_with("default-"));
    let info = json(&rd.join("run.json"));
    assert_eq!(info["status"], "complete");
    assert_eq!(info["seed"], 42);
    assert_eq!(info["device"], "cpu");
    assert_eq!(
        info["versions"]["candle"]
            .as_str()
            .unwrap()
            .split('.')
            .count(),
        3
    );
    assert_eq!(info["dataset"]["fingerprint"].as_str().unwrap().len(), 64);
    assert_eq!(info["dataset"]["images"], 18);
    let cfg = std::fs::read_to_string(rd.join("config.toml")).unwrap();
    assert!(cfg.contains("seed = 42"), "{cfg}");
    // The saved config is itself a valid manifest that resolves to the same hash.
    let o = sb.run(&["plan", rd.join("config.toml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(info["config_hash"].as_str().unwrap()),
        "{}",
        stdout(&o)
    );
    // The split table: every image once, no patient in two splits.
    let csv = std::fs::read_to_string(rd.join("split.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "id,patient,class,split,image,mask,width,height"
    );
    let mut by_patient =
        std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    let mut n = 0;
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        by_patient
            .entry(f[1].into())
            .or_default()
            .insert(f[3].into());
        assert_eq!(f[6], "64");
        n += 1;
    }
    assert_eq!(n, 18);
    assert!(by_patient.values().all(|s| s.len() == 1));
    assert!(by_patient.values().any(|s| s.contains("valid")));
}

#[test]
fn killed_run_resumes_to_the_same_outputs() {
    let clean = Sandbox::new();
    let m = clean.write("m.toml", MINIMAL);
    assert_eq!(
        clean.run(&["run", m.to_str().unwrap()]).status.code(),
        Some(0)
    );

    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    // The process dies (SIGABRT: no destructors, no clean-up) just before the stage commits.
    let o = sb
        .cmd()
        .args(["run", m.to_str().unwrap()])
        .env("WSSS_CRASH_AT", "data")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let cache = sb.work().join(".cache/data");
    let names: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with(".partial-")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.len() == 64),
        "no committed entry after the crash: {names:?}"
    );
    let rd = first_dir(sb.work().join("t"));
    assert_eq!(json(&rd.join("run.json"))["status"], "running");

    let o = sb.run(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&rd.join("run.json"))["status"], "complete");
    let names: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(".partial-")),
        "leftovers removed: {names:?}"
    );

    let crd = first_dir(clean.work().join("t"));
    assert_eq!(rd.file_name(), crd.file_name());
    for f in [
        "split.csv",
        "split.parquet",
        "data_summary.json",
        "predictions.csv",
        "classify_metrics.csv",
    ] {
        assert_eq!(
            std::fs::read(rd.join(f)).unwrap(),
            std::fs::read(crd.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

#[test]
fn training_killed_before_commit_resumes_from_its_checkpoint_to_identical_outputs() {
    let clean = Sandbox::new();
    let m = clean.write("m.toml", MINIMAL);
    assert_eq!(
        clean.run(&["run", m.to_str().unwrap()]).status.code(),
        Some(0)
    );

    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    let o = sb
        .cmd()
        .args(["run", m.to_str().unwrap()])
        .env("WSSS_CRASH_AT", "classify")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let scratch: Vec<_> = std::fs::read_dir(sb.work().join(".cache/classify"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".work-"))
        .collect();
    assert_eq!(scratch.len(), 1);
    let ckpt = scratch[0].path().join("last.ckpt");
    let committed = std::fs::read_to_string(ckpt.join("COMMITTED")).unwrap();
    assert_eq!(committed, "epoch-00002");
    let progress = json(&ckpt.join(committed).join("progress.json"));
    assert_eq!(progress["epochs_done"], 2);

    let o = sb.run(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        !scratch[0].path().exists(),
        "scratch is removed once the entry is committed"
    );
    let rd = first_dir(sb.work().join("t"));
    let crd = first_dir(clean.work().join("t"));
    // Same seed, same data → the same weights and predictions, across processes.
    for f in ["predictions.csv", "classify_metrics.csv", "history.csv"] {
        let a = std::fs::read_to_string(rd.join(f)).unwrap();
        let b = std::fs::read_to_string(crd.join(f)).unwrap();
        if f == "history.csv" {
            let strip = |s: &str| {
                s.lines()
                    .map(|l| l.rsplit_once(',').map_or(l, |x| x.0).to_string())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                strip(&a),
                strip(&b),
                "history differs (seconds column ignored)"
            );
        } else {
            assert_eq!(a, b, "{f} differs");
        }
    }
}

#[test]
fn classify_stage_writes_history_metrics_and_predictions() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    assert_eq!(sb.run(&["run", m.to_str().unwrap()]).status.code(), Some(0));
    let rd = first_dir(sb.work().join("t"));
    let hist = std::fs::read_to_string(rd.join("history.csv")).unwrap();
    assert_eq!(hist.lines().count(), 3, "header + 2 epochs:\n{hist}");
    assert!(hist.starts_with("epoch,lr,train_loss,train_accuracy,grad_norm,valid_loss,valid_accuracy,valid_balanced_accuracy,valid_auc,seconds"), "{hist}");
    let preds = std::fs::read_to_string(rd.join("predictions.csv")).unwrap();
    assert!(
        preds.starts_with("id,patient,class,split,p_normal,p_malignant,predicted,correct"),
        "{preds}"
    );
    assert_eq!(preds.lines().count(), 19);
    for l in preds.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        let (a, b): (f64, f64) = (f[4].parse().unwrap(), f[5].parse().unwrap());
        assert!((a + b - 1.0).abs() < 1e-5, "probabilities sum to 1: {l}");
        assert_eq!(f[7] == "true", f[2] == f[6]);
    }
    let metrics = std::fs::read_to_string(rd.join("classify_metrics.csv")).unwrap();
    for k in [
        "valid,image,accuracy",
        "valid,patient,auc",
        "train,image,f1",
    ] {
        assert!(metrics.contains(k), "{k} missing:\n{metrics}");
    }
    let info = json(&rd.join("run.json"));
    assert_eq!(info["stages"][1]["stage"], "classify");
    assert!(
        std::path::Path::new(info["stages"][1]["entry"].as_str().unwrap())
            .join("classifier.safetensors")
            .is_file()
    );
}

#[test]
fn fresh_moves_the_old_run_aside_and_changed_data_is_refused() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    assert_eq!(sb.run(&["run", m.to_str().unwrap()]).status.code(), Some(0));
    let o = sb.run(&["run", m.to_str().unwrap(), "--fresh"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("6 stage run(s), 0 cached"),
        "{}",
        stdout(&o)
    );
    let names: Vec<String> = std::fs::read_dir(sb.work().join("t"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.contains(".replaced-")), "{names:?}");

    // A different config never lands in the same run directory.
    assert_eq!(
        sb.run(&["run", m.to_str().unwrap(), "--set", "cam.threshold=0.6"])
            .status
            .code(),
        Some(0)
    );
    let dirs = std::fs::read_dir(sb.work().join("t"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().contains("replaced"))
        .count();
    assert_eq!(dirs, 2);

    // Same config, changed data: refused rather than silently overwritten.
    let img = walkdir::WalkDir::new(sb.path().join("data/synthetic/images"))
        .into_iter()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "png"))
        .unwrap();
    let mut bytes = std::fs::read(img.path()).unwrap();
    bytes.extend_from_slice(b"trailing");
    std::fs::write(img.path(), bytes).unwrap();
    let o = sb.run(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("the data changed"), "{}", stderr(&o));
}

#[test]
fn bad_images_are_reported_with_their_paths() {
    let sb = Sandbox::new();
    let root = sb.path().join("ds");
    let o = sb.run(&[
        "synth",
        root.to_str().unwrap(),
        "--patients-per-class",
        "2",
        "--images-per-patient",
        "2",
        "--size",
        "48",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    sb.write("reg.toml", "[ds]\nlayout = \"folder\"\nroot = \"ds\"\nmasks_dir = \"masks\"\nclasses = [\"normal\", \"malignant\"]\n");
    let m = sb.write(
        "m.toml",
        "name = \"b\"\ndataset = \"ds\"\n[split]\nvalid_fraction = 0.5\n[backbone]\nwidth = 0.0625\n[train]\nimage_size = 32\nepochs = 1\n[segmentation]\nwidth = 0.0625\ncrop_size = 32\nepochs = 1\n",
    );
    let reg = sb.path().join("reg.toml");
    let o = sb
        .cmd()
        .env("WSSS_DATASETS", &reg)
        .args(["run", m.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Truncate one image, resize one mask.
    let img = root.join("images/normal/P01/P01_00.png");
    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(&img, &bytes[..bytes.len() / 2]).unwrap();
    let mask = root.join("masks/malignant/P03/P03_01.png");
    image::GrayImage::new(10, 10).save(&mask).unwrap();
    let o = sb
        .cmd()
        .env("WSSS_DATASETS", &reg)
        .args(["run", m.to_str().unwrap(), "--fresh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("P01_00.png: cannot decode"), "{err}");
    assert!(err.contains("P03_01.png is 10×10 but its image"), "{err}");

    // A class folder with no images, and an image without its mask (reported together).
    std::fs::remove_dir_all(root.join("images/malignant")).unwrap();
    std::fs::create_dir_all(root.join("images/malignant/P09")).unwrap();
    std::fs::copy(
        root.join("images/normal/P02/P02_00.png"),
        root.join("images/normal/P01/P02_00.png"),
    )
    .unwrap();
    let o = sb
        .cmd()
        .env("WSSS_DATASETS", &reg)
        .args(["datasets", "ds"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("class `malignant` has no images"), "{err}");
    assert!(
        err.contains("images/normal/P01/P02_00.png has no mask"),
        "{err}"
    );
}

#[test]
fn split_that_leaves_a_class_without_patients_is_bad_input() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", "name = \"t\"\n[split]\nmethod = \"patients\"\ntrain_patients = [\"P01\", \"P02\", \"P04\"]\nvalid_patients = [\"P03\"]\n");
    let o = sb.run(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("m.toml: key `split.valid_patients`"), "{err}");
    assert!(err.contains("without images in `valid`"), "{err}");
}

#[test]
fn stage_keys_depend_only_on_what_the_stage_reads() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    let m = m.to_str().unwrap();
    assert_eq!(sb.run(&["run", m]).status.code(), Some(0));
    let states = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["plan", m, "--json"];
        args.extend_from_slice(extra);
        let o = sb.run(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["variants"][0]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap().to_string())
            .collect()
    };
    const C: &str = "cached";
    const R: &str = "to run";
    // Which layer or method the CAM uses does not retrain the classifier.
    assert_eq!(
        states(&[
            "--set",
            "backbone.cam_layer=\"3\"",
            "--set",
            "cam.method=\"gradcam\""
        ]),
        [C, C, R, R, R, R]
    );
    // The threshold and refinement redo the pseudo labels and what learns from them.
    assert_eq!(states(&["--set", "cam.threshold=0.5"]), [C, C, C, R, R, R]);
    assert_eq!(
        states(&["--set", "cam.refine=\"slic\""]),
        [C, C, C, R, R, R]
    );
    // Segmenter settings leave the CAM side alone; inference settings only re-evaluate.
    assert_eq!(
        states(&["--set", "segmentation.epochs=2"]),
        [C, C, C, C, R, R]
    );
    assert_eq!(
        states(&["--set", "segmentation.tta=true"]),
        [C, C, C, C, C, R]
    );
    // Stain augmentation: the segmenter's retrains the segmenter only, the classifier's
    // everything from the classifier on; its defaults written out change no key.
    assert_eq!(
        states(&["--set", "segmentation.stain_augment=\"hed\""]),
        [C, C, C, C, R, R]
    );
    assert_eq!(
        states(&["--set", "segmentation.crop_sampling=\"label-ratio\""]),
        [C, C, C, C, R, R]
    );
    assert_eq!(
        states(&["--set", "train.stain_augment=\"hed\""]),
        [C, R, R, R, R, R]
    );
    // Self-training retrains the segmenter from the same pseudo labels; 0 is the default.
    assert_eq!(
        states(&["--set", "segmentation.self_training_rounds=1"]),
        [C, C, C, C, R, R]
    );
    assert_eq!(
        states(&["--set", "segmentation.self_training_rounds=0"]),
        [C, C, C, C, C, C]
    );
    assert_eq!(
        states(&[
            "--set",
            "segmentation.stain_augment=\"channel\"",
            "--set",
            "train.stain_augment_strength=0.05",
            "--set",
            "segmentation.crop_sampling=\"uniform\""
        ]),
        [C, C, C, C, C, C]
    );
    // The training seed retrains everything after the data stage.
    assert_eq!(states(&["--set", "train.seed=7"]), [C, R, R, R, R, R]);
    // The split seed changes the data stage and everything downstream.
    assert_eq!(states(&["--set", "split.seed=3"]), [R, R, R, R, R, R]);
    // A fully supervised segmenter does not read pseudo labels: once trained, a threshold
    // change re-evaluates (pseudo vs truth is reported beside it) but does not retrain it.
    let full = ["--set", "segmentation.supervision=\"full\""];
    let mut args = vec!["run", m];
    args.extend_from_slice(&full);
    assert_eq!(sb.run(&args).status.code(), Some(0));
    assert_eq!(
        states(&[full[0], full[1], "--set", "cam.threshold=0.5"]),
        [C, C, C, R, C, R]
    );
    // Masks are not relabelled: under full supervision self-training is out of the key.
    assert_eq!(
        states(&[
            full[0],
            full[1],
            "--set",
            "segmentation.self_training_rounds=2"
        ]),
        [C, C, C, C, C, C]
    );
}

#[test]
fn self_training_records_every_round_and_relabels_only_positive_images() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    let o = sb.run(&[
        "run",
        m.to_str().unwrap(),
        "--no-report",
        "--set",
        "segmentation.self_training_rounds=1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("self-training round 2"), "{err}");
    let rd = first_dir(sb.work().join("t"));
    let summary = json(&rd.join("segment_summary.json"));
    let epochs = summary["epochs"].as_u64().unwrap();
    assert_eq!(summary["rounds"], 2, "{summary}");
    let rel = &summary["self_training"][0];
    assert_eq!(rel["round"], 2, "{summary}");
    // Every training image is relabelled or kept as an image-level negative (all background).
    let r = &rel["relabelled"];
    let (relabelled, kept) = (r["images"].as_u64().unwrap(), r["kept"].as_u64().unwrap());
    assert_eq!(relabelled + kept, summary["train_images"].as_u64().unwrap());
    assert!(relabelled > 0 && kept > 0, "{summary}");
    // The history holds both rounds, numbered on, with the round before the seconds (last);
    // the kept epoch is one of the last round's.
    let text = std::fs::read_to_string(rd.join("segment_history.csv")).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().ends_with(",round,seconds"));
    let rows: Vec<(u64, u64)> = lines
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            (c[0].parse().unwrap(), c[c.len() - 2].parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len() as u64, epochs);
    let half = epochs / 2;
    assert!(half > 0 && epochs == 2 * half, "{rows:?}");
    for (k, &(e, round)) in rows.iter().enumerate() {
        assert_eq!(e, k as u64 + 1);
        assert_eq!(round, if e <= half { 1 } else { 2 });
    }
    assert!(
        summary["selected_epoch"].as_u64().unwrap() > half,
        "{summary}"
    );
}

/// `ignored-pixels`: every round fills in the round-1 pseudo labels' ignored pixels, so
/// rounds 2 and 3 relabel the same maps and the same pixels, start from the same foreground
/// share, and leave every map without an ignored pixel as it was.
#[test]
fn self_training_on_ignored_pixels_fills_the_same_pixels_every_round() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    let o = sb.run(&[
        "run",
        m.to_str().unwrap(),
        "--no-report",
        "--set",
        "segmentation.self_training_rounds=2",
        "--set",
        "segmentation.self_training_relabel=\"ignored-pixels\"",
        "--set",
        "cam.threshold=0.6",
        "--set",
        "cam.background_threshold=0.2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rd = first_dir(sb.work().join("t"));
    let summary = json(&rd.join("segment_summary.json"));
    assert_eq!(summary["rounds"], 3, "{summary}");
    assert_eq!(
        summary["self_training_relabel"], "ignored-pixels",
        "{summary}"
    );
    let (a, b) = (
        &summary["self_training"][0]["relabelled"],
        &summary["self_training"][1]["relabelled"],
    );
    for k in ["images", "kept", "pixels_relabelled", "foreground_before"] {
        assert_eq!(a[k], b[k], "{k}: {summary}");
    }
    let n = a["images"].as_u64().unwrap() + a["kept"].as_u64().unwrap();
    assert_eq!(n, summary["train_images"].as_u64().unwrap());
    assert!(a["pixels_relabelled"].as_u64().unwrap() > 0, "{summary}");
}

#[test]
fn evaluate_scores_segmenter_beside_pseudo_labels_and_predict_segments_new_images() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    let o = sb.run(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rd = first_dir(sb.work().join("t"));
    let metrics = std::fs::read_to_string(rd.join("seg_metrics.csv")).unwrap();
    for k in [
        "valid,segmenter,miou,",
        "valid,pseudo,miou,",
        "train,segmenter,dice_foreground,",
        "valid,segmenter,fwiou,",
    ] {
        assert!(metrics.contains(k), "{k} missing:\n{metrics}");
    }
    let summary = json(&rd.join("evaluate_summary.json"));
    let miou = summary["valid_miou"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&miou), "{summary}");
    // One prediction and one overlay per image, both viewable PNGs of the image's size.
    // Files mirror the ids (`patient/class/stem`): count the PNGs below each folder.
    let n = |d: &str| {
        walkdir::WalkDir::new(rd.join(d))
            .follow_links(true)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .count()
    };
    assert_eq!(n("predictions"), 18);
    assert_eq!(n("overlays"), 18);
    assert_eq!(n("pseudo_labels"), 18);
    assert_eq!(n("cams"), 18);
    let p = image::open(rd.join("predictions/P01/normal/P01_00.png")).unwrap();
    assert_eq!((p.width(), p.height()), (64, 64));
    assert!(rd.join("segmenter.safetensors").is_file());

    // `wsss predict` on a folder of new images (one of them broken: skipped, exit 1).
    let imgs = sb.path().join("new");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    let src = sb.path().join("data/images/malignant/P04/P04_00.png");
    let src = if src.is_file() {
        src
    } else {
        first_png(sb.path())
    };
    std::fs::copy(&src, imgs.join("a.png")).unwrap();
    std::fs::copy(&src, imgs.join("sub/b.png")).unwrap();
    let out = sb.path().join("pred");
    let predict = |run: &Path| {
        sb.run(&[
            "predict",
            "--run",
            run.to_str().unwrap(),
            "--images",
            imgs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let o = predict(&rd);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("segmented 2 image(s)"),
        "{}",
        stdout(&o)
    );
    assert!(out.join("labels/a.png").is_file() && out.join("labels/sub/b.png").is_file());
    assert!(out.join("overlays/sub/b.png").is_file());
    let table = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    assert!(table.starts_with("image,label,fg_fraction\n"), "{table}");
    std::fs::write(imgs.join("broken.png"), b"not a png").unwrap();
    let o = predict(&rd);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("broken.png"), "{}", stdout(&o));
    // Not a run directory: bad input.
    let o = predict(sb.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("config.toml"), "{}", stderr(&o));
}

fn first_png(root: &std::path::Path) -> std::path::PathBuf {
    walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .map(|e| e.into_path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "png") && p.to_string_lossy().contains("images")
        })
        .unwrap()
}

/// Patch-level labels (the OEEM protocol) on the synthetic data: window labels match the
/// masks, the classifier is multi-label, and on training images every window that holds one
/// class only is that class in the pseudo label (the stitched CAM obeys the window labels,
/// also after `cam.balance` recentres the rest).
#[test]
fn patch_labels_train_a_multi_label_classifier_whose_windows_decide_pseudo_labels() {
    let sb = Sandbox::new();
    let text = format!(
        "{MINIMAL}\n[labels]\nlevel = \"patch\"\npatch_size = 16\npatch_stride = 16\n[loss]\nvariant = \"bce\"\n[cam]\nthreshold = 0.5\nbalance = \"median\"\n"
    );
    let m = sb.write("m.toml", &text);
    let o = sb.run(&["run", m.to_str().unwrap(), "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rd = first_dir(sb.work().join("t"));
    let root = sb.path().join("data/synthetic");
    let split = wsss::table::read_parquet(&rd.join("split.parquet")).unwrap();
    let col = |name: &str| wsss::report::data::strs(&split, name).unwrap();
    let (ids, sp, masks) = (col("id"), col("split"), col("mask"));
    let mask_of = |i: usize| image::open(root.join(&masks[i])).unwrap().into_luma8();

    // Held-out windows and their labels, recounted from the masks here.
    let p = wsss::table::read_parquet(&rd.join("patches.parquet")).unwrap();
    let (pi, px, py) = (
        wsss::report::data::strs(&p, "image").unwrap(),
        wsss::report::data::nums(&p, "x").unwrap(),
        wsss::report::data::nums(&p, "y").unwrap(),
    );
    let (pb, pf) = (
        wsss::report::data::strs(&p, "has_background").unwrap(),
        wsss::report::data::strs(&p, "has_foreground").unwrap(),
    );
    let held_out = sp.iter().filter(|s| *s != "train").count();
    assert_eq!(
        p.height(),
        held_out * 16,
        "4×4 windows of 16 px per 64² image"
    );
    for r in 0..p.height() {
        let i = ids.iter().position(|x| *x == pi[r]).unwrap();
        let mk = mask_of(i);
        let (x0, y0) = (px[r] as u32, py[r] as u32);
        let fg = (0..256)
            .filter(|k| mk.get_pixel(x0 + k % 16, y0 + k / 16).0[0] > 0)
            .count();
        assert_eq!(pf[r] == "true", fg > 0, "window {r}");
        assert_eq!(pb[r] == "true", fg < 256, "window {r}");
    }
    let preds = std::fs::read_to_string(rd.join("predictions.csv")).unwrap();
    assert!(preds.starts_with(
        "id,image,patient,class,split,x,y,has_background,p_background,p_foreground,predicted,correct"
    ));
    let metrics = std::fs::read_to_string(rd.join("classify_metrics.csv")).unwrap();
    assert!(metrics.contains("valid,patch,auc") && metrics.contains("valid,patch-background,auc"));

    // Training images: single-class windows decide their pixels.
    let mut checked = 0;
    for i in (0..ids.len()).filter(|&i| sp[i] == "train") {
        let mk = mask_of(i);
        let pl = wsss::cam::read_labels(&wsss::cam::sample_file(
            &rd.join("pseudo_labels"),
            &ids[i],
            "png",
        ))
        .unwrap();
        for (wx, wy) in (0..16).map(|k| ((k % 4) * 16, (k / 4) * 16)) {
            let px: Vec<(u32, u32)> = (0..256).map(|k| (wx + k % 16, wy + k / 16)).collect();
            let fg = px
                .iter()
                .filter(|&&(x, y)| mk.get_pixel(x, y).0[0] > 0)
                .count();
            if fg == 0 || fg == 256 {
                let want = u8::from(fg == 256);
                assert!(
                    px.iter().all(|&(x, y)| pl.get_pixel(x, y).0[0] == want),
                    "{} window ({wx},{wy})",
                    ids[i]
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 50, "only {checked} single-class windows");

    // Multi-label windows need a multi-label loss: anything else is bad input naming the key.
    let bad = sb.write(
        "bad.toml",
        &text.replace("variant = \"bce\"", "variant = \"ce\""),
    );
    let o = sb.run(&["validate", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("loss.variant") && e.contains("bce"), "{e}");
}

/// Image labels learned on windows (`labels.level = "image-windows"`) on the synthetic data:
/// the classifier is trained and scored on windows that carry their image's class (the
/// confusion counts add up to the window grid), images get one prediction each, the CAM is a
/// map at each image's size, negative images are all background in their pseudo labels, and
/// the window grid is part of the classifier's cache key while the CAM contrast is not.
#[test]
fn image_labels_on_windows_train_on_windows_and_map_whole_images() {
    let sb = Sandbox::new();
    let text = format!(
        "{MINIMAL}\n[labels]\nlevel = \"image-windows\"\npatch_size = 32\npatch_stride = 16\n"
    );
    let m = sb.write("m.toml", &text);
    let o = sb.run(&["run", m.to_str().unwrap(), "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rd = first_dir(sb.work().join("t"));
    let split = wsss::table::read_parquet(&rd.join("split.parquet")).unwrap();
    let col = |name: &str| wsss::report::data::strs(&split, name).unwrap();
    let (ids, sp, classes) = (col("id"), col("split"), col("class"));

    // Window-level metrics count every window of the held-out images: 64² images, 32-px
    // windows every 16 px → 3 × 3 per image; image-level rows count the images.
    let cm = wsss::table::read_parquet(&rd.join("classify_metrics.parquet")).unwrap();
    let (ms, ml, mm, mv) = (
        wsss::report::data::strs(&cm, "split").unwrap(),
        wsss::report::data::strs(&cm, "level").unwrap(),
        wsss::report::data::strs(&cm, "metric").unwrap(),
        wsss::report::data::nums(&cm, "value").unwrap(),
    );
    let count = |level: &str| -> f64 {
        (0..cm.height())
            .filter(|&i| ms[i] == "valid" && ml[i] == level)
            .filter(|&i| ["tn", "fp", "fn", "tp"].contains(&mm[i].as_str()))
            .map(|i| mv[i])
            .sum()
    };
    let held_out = sp.iter().filter(|s| *s == "valid").count() as f64;
    assert!(held_out > 0.0);
    assert_eq!(count("window"), held_out * 9.0);
    assert_eq!(count("image"), held_out);

    // One prediction per image, probabilities summing to one.
    let p = wsss::table::read_parquet(&rd.join("predictions.parquet")).unwrap();
    assert_eq!(p.height(), ids.len());
    let (pa, pb) = (
        wsss::report::data::nums(&p, "p_normal").unwrap(),
        wsss::report::data::nums(&p, "p_malignant").unwrap(),
    );
    assert!(pa.iter().zip(&pb).all(|(a, b)| (a + b - 1.0).abs() < 1e-5));

    // CAMs at each image's size; negative images all background in their pseudo labels,
    // positive ones with foreground (min-max normalised maps reach 1).
    let mut positives = 0;
    for i in (0..ids.len()).filter(|&i| sp[i] == "train") {
        let cam = image::open(wsss::cam::sample_file(&rd.join("cams"), &ids[i], "png")).unwrap();
        assert_eq!((cam.width(), cam.height()), (64, 64));
        let pl = wsss::cam::read_labels(&wsss::cam::sample_file(
            &rd.join("pseudo_labels"),
            &ids[i],
            "png",
        ))
        .unwrap();
        let fg = pl.pixels().filter(|v| v.0[0] == 1).count();
        if classes[i] == "malignant" {
            assert!(fg > 0, "{}", ids[i]);
            positives += 1;
        } else {
            assert_eq!(fg, 0, "{}", ids[i]);
        }
    }
    assert!(positives > 0);

    // The window grid changes the classifier; the CAM contrast only the CAM and later stages.
    let o = sb.run(&[
        "run",
        m.to_str().unwrap(),
        "--no-report",
        "--set",
        "cam.contrast=true",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("4 stage run(s), 2 cached"), "{out}");
    let o = sb.run(&[
        "plan",
        m.to_str().unwrap(),
        "--set",
        "labels.patch_stride=32",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.matches("to run").count(), 5, "{out}");
    assert_eq!(out.matches("cached").count(), 1, "{out}");

    // A stride larger than the window would leave pixels out: bad input naming the key.
    let bad = sb.write(
        "bad.toml",
        &text.replace("patch_stride = 16", "patch_stride = 40"),
    );
    let o = sb.run(&["validate", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("labels.patch_stride"), "{e}");
}

/// `stain.normalize = "reinhard"`: the normaliser is fitted on the training split's images
/// only, recorded in the run directory, and applied to every image — by `wsss predict` too, so
/// predicting a dataset image gives the label map the evaluate stage wrote for it.
#[test]
fn stain_normalisation_is_fitted_on_training_images_and_applied_by_predict() {
    let sb = Sandbox::new();
    // A segmenter that learns (a collapsed one predicts background with or without stain
    // normalisation, and the comparison below would say nothing).
    let text = format!(
        "{}\n[stain]\nnormalize = \"reinhard\"\n",
        MINIMAL.replace(
            "[segmentation]\nwidth = 0.0625\ncrop_size = 32\nepochs = 1\n",
            "[segmentation]\nwidth = 0.25\ncrop_size = 32\nepochs = 8\nbatch_size = 2\nlr = 0.03\nsupervision = \"full\"\nloss = \"balanced-ce\"\n",
        )
    );
    assert!(text.contains("epochs = 8"), "MINIMAL changed: {text}");
    let m = sb.write("m.toml", &text);
    let o = sb.run(&["run", m.to_str().unwrap(), "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rd = first_dir(sb.work().join("t"));
    let stain = json(&rd.join("stain.json"));
    let split = std::fs::read_to_string(rd.join("split.csv")).unwrap();
    let train = split.lines().filter(|l| l.contains(",train,")).count();
    assert_eq!(stain["method"], "reinhard");
    assert_eq!(
        stain["reinhard"]["images"].as_u64(),
        Some(train as u64),
        "{stain}"
    );
    let l_mean = stain["reinhard"]["mean"][0].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&l_mean), "{stain}");

    let id = "P04/malignant/P04_00";
    let src = sb
        .path()
        .join("data/synthetic/images/malignant/P04/P04_00.png");
    assert!(src.is_file(), "{}", src.display());
    let imgs = sb.path().join("new");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::copy(&src, imgs.join("a.png")).unwrap();
    let out = sb.path().join("pred");
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
    let a = image::open(out.join("labels/a.png")).unwrap().into_luma8();
    let b = image::open(rd.join(format!("predictions/{id}.png")))
        .unwrap()
        .into_luma8();
    assert_eq!(a.as_raw(), b.as_raw(), "predict and evaluate disagree");
    assert!(
        a.as_raw().contains(&0) && a.as_raw().iter().any(|&v| v != 0),
        "the segmenter predicts one class: the comparison says nothing"
    );
}

/// `results.csv` of an experiment as (header, rows), without the columns that measure time or
/// speed or name a folder (they differ between any two runs).
fn results_without_times(exp_dir: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(exp_dir.join("results.csv")).unwrap();
    let h: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let keep: Vec<usize> = (0..h.len())
        .filter(|&i| {
            let c = &h[i];
            !(c.ends_with("seconds") || c.ends_with("_per_s") || c == "run_dir")
        })
        .collect();
    let rows = r
        .records()
        .map(|rec| {
            let rec = rec.unwrap();
            keep.iter().map(|&i| rec[i].to_string()).collect()
        })
        .collect();
    (keep.iter().map(|&i| h[i].clone()).collect(), rows)
}

fn cache_entries(work: &Path, stage: &str) -> usize {
    std::fs::read_dir(work.join(".cache").join(stage))
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

#[test]
fn two_variant_processes_at_once_equal_one_sequential_run() {
    let manifest = format!("{MINIMAL}\n[sweep.grid]\n\"cam.threshold\" = [0.5, 0.7]\n");
    // One process, both variants.
    let seq = Sandbox::new();
    let m = seq.write("m.toml", &manifest);
    let o = seq.run(&["run", m.to_str().unwrap(), "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Two processes at once, one variant each: they share the data, classify and cam stages.
    let par = Sandbox::new();
    let m = par.write("m.toml", &manifest);
    let children: Vec<_> = ["cam.threshold=0.5", "cam.threshold=0.7"]
        .iter()
        .map(|id| {
            par.std_cmd()
                .args(["run", m.to_str().unwrap(), "--no-report", "--variant", id])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The classifier was trained once, and each process's files name both variants.
    for stage in ["data", "classify", "cam"] {
        assert_eq!(cache_entries(&par.work(), stage), 1, "{stage}");
    }
    assert_eq!(cache_entries(&par.work(), "pseudo"), 2);
    let exp = json(&par.work().join("t/experiment.json"));
    let ids: Vec<&str> = exp["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cam.threshold=0.5", "cam.threshold=0.7"]);
    // The same numbers as the sequential run.
    assert_eq!(
        results_without_times(&par.work().join("t")),
        results_without_times(&seq.work().join("t"))
    );
}

#[test]
fn shards_run_disjoint_variants_and_the_results_grow_with_each() {
    let sb = Sandbox::new();
    let m = sb.write(
        "m.toml",
        &format!("{MINIMAL}\n[sweep.grid]\n\"cam.threshold\" = [0.4, 0.5, 0.7]\n"),
    );
    let m = m.to_str().unwrap();
    let listed = |sb: &Sandbox| -> Vec<String> {
        json(&sb.work().join("t/experiment.json"))["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    };
    let o = sb.run(&["run", m, "--no-report", "--shard", "2/2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(listed(&sb), ["cam.threshold=0.5"]);
    let o = sb.run(&["run", m, "--no-report", "--shard", "1/2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        listed(&sb),
        [
            "cam.threshold=0.4",
            "cam.threshold=0.5",
            "cam.threshold=0.7"
        ]
    );
    // Bad selections are bad input (exit 2), named.
    let o = sb.run(&["run", m, "--variant", "cam.threshold=0.9"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("`cam.threshold=0.9`") && err.contains("`cam.threshold=0.4`"),
        "{err}"
    );
    let o = sb.run(&["run", m, "--shard", "3/2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
