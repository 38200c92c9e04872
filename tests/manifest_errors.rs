//! `wsss validate` rejects bad manifests with the file and the key in the message, exit code
//! 2, every problem listed, and no panic.

mod common;
use common::*;

/// A valid manifest with no sections but `[split]`, so cases can append their own tables.
const BASE: &str = "name = \"t\"\ndataset = \"synthetic\"\n[split]\nvalid_fraction = 0.34\n";

/// (case name, manifest text, [--set …], substrings the error must contain)
fn cases() -> Vec<(&'static str, String, Vec<&'static str>, Vec<&'static str>)> {
    // `m` appends a section; `top` puts top-level keys before the manifest's first table.
    let m = |extra: &str| format!("{BASE}\n{extra}");
    let top = |extra: &str| format!("{extra}\n{BASE}");
    vec![
        ("syntax error", "name = \"t\"\ndataset = \n".into(), vec![], vec!["bad.toml:2:", "TOML syntax error"]),
        ("unknown top-level key", top("datset = \"x\""), vec![], vec!["key `datset`", "did you mean `dataset`"]),
        ("unknown nested key", m("[cam]\ntreshold = 0.5"), vec![], vec!["key `cam.treshold`", "did you mean `cam.threshold`"]),
        ("key in the wrong section", top("threshold = 0.5"), vec![], vec!["key `threshold`", "did you mean `cam.threshold`"]),
        ("wrong type", m("[train]\nepochs = \"ten\""), vec![], vec!["key `train.epochs`", "expected an integer"]),
        ("threshold out of range", m("[cam]\nthreshold = 1.5"), vec![], vec!["key `cam.threshold`", "out of range", "[0, 1]"]),
        ("negative learning rate", m("[train]\nlr = -0.1"), vec![], vec!["key `train.lr`", "a number > 0"]),
        ("unknown choice", m("[loss]\nvariant = \"focl\""), vec![], vec!["key `loss.variant`", "did you mean `focal`", "label-smoothing"]),
        ("section given a value", top("cam = 3"), vec![], vec!["key `cam`", "is a section"]),
        ("empty sweep list", m("[sweep.grid]\n\"cam.threshold\" = []"), vec![], vec!["key `sweep.grid.\"cam.threshold\"`", "empty sweep list"]),
        ("sweep of an unknown key", m("[sweep.grid]\n\"cam.treshold\" = [0.5]"), vec![], vec!["sweep.grid.\"cam.treshold\"", "did you mean `cam.threshold`"]),
        ("sweep value out of range", m("[sweep.grid]\n\"cam.threshold\" = [0.5, 1.2]"), vec![], vec!["key `sweep.grid.\"cam.threshold\"[1]`", "out of range"]),
        ("zip lengths differ", m("[sweep.zip]\n\"train.seed\" = [1, 2]\n\"split.seed\" = [1, 2, 3]"), vec![], vec!["sweep.zip", "equal lengths"]),
        ("unknown sweep mode", m("[sweep.grdi]\n\"cam.threshold\" = [0.5]"), vec![], vec!["key `sweep.grdi`", "did you mean `sweep.grid`"]),
        ("background above threshold", m("[cam]\nthreshold = 0.5\nbackground_threshold = 0.6"), vec![], vec!["key `cam.background_threshold`", "≤ the foreground threshold"]),
        ("fold out of range", m("[split]\nmethod = \"kfold\"\nfolds = 3\nfold = 3").replace("[split]\nvalid_fraction = 0.34\n", ""), vec![], vec!["key `split.fold`", "[0, 2]"]),
        ("patient in two splits", "name = \"t\"\n[split]\nmethod = \"patients\"\ntrain_patients = [\"P01\", \"P04\"]\nvalid_patients = [\"P01\", \"P05\"]\n".into(), vec![], vec!["key `split.valid_patients`", "patient `P01`", "leakage"]),
        ("patients split without valid", "name = \"t\"\n[split]\nmethod = \"patients\"\ntrain_patients = [1, 2]\n".into(), vec![], vec!["key `split.valid_patients`", "non-empty"]),
        ("fractions leave no training", "name = \"t\"\n[split]\nvalid_fraction = 0.6\ntest_fraction = 0.5\n".into(), vec![], vec!["key `split.test_fraction`", "sum must be < 1"]),
        ("missing name", "dataset = \"synthetic\"\n".into(), vec![], vec!["key `name`", "missing required key"]),
        ("unregistered dataset", m("").replace("\"synthetic\"", "\"glsa\""), vec![], vec!["key `dataset`", "`glsa` is not registered", "synthetic"]),
        ("bad device", top("device = \"gpu0\""), vec![], vec!["key `device`", "`cpu`, `auto` or `cuda:N`"]),
        ("tf32 on the CPU", top("precision = \"tf32\""), vec![], vec!["key `precision`", "needs device"]),
        ("bf16 not offered", top("precision = \"bf16\""), vec![], vec!["key `precision`", "auto", "fp32", "tf32"]),
        ("output stride not allowed", m("[segmentation]\noutput_stride = 12"), vec![], vec!["key `segmentation.output_stride`", "one of 8, 16"]),
        ("relabel ignored pixels without a band", m("[segmentation]\nself_training_rounds = 1\nself_training_relabel = \"ignored-pixels\""), vec![], vec!["key `segmentation.self_training_relabel`", "without an ignore band", "cam.background_threshold = unset"]),
        ("band between two 8-bit levels", m("[cam]\nthreshold = 0.5\nbackground_threshold = 0.499"), vec![], vec!["key `cam.background_threshold`", "holds no level", "[0.499, 0.5)"]),
        ("a swept band without room for relabelling", m("[segmentation]\nself_training_rounds = 1\nself_training_relabel = \"ignored-pixels\"\n[cam]\nthreshold = 0.6\n[sweep.grid]\n\"cam.background_threshold\" = [0.2, 0.6]"), vec![], vec!["[sweep variant cam.background_threshold=0.6]", "key `cam.background_threshold`", "without an ignore band"]),
        ("bad --set key", BASE.into(), vec!["--set", "cam.threshhold=0.5"], vec!["--set cam.threshhold=0.5", "key `cam.threshhold`", "did you mean `cam.threshold`"]),
        ("bad --set value", BASE.into(), vec!["--set", "train.batch_size=0"], vec!["--set train.batch_size=0", "key `train.batch_size`", "out of range"]),
        ("missing extends file", top("extends = \"nope.toml\""), vec![], vec!["bad.toml", "key `extends`", "nope.toml"]),
        ("missing pretrained weights", m("[backbone]\npretrained = \"w.safetensors\""), vec![], vec!["key `backbone.pretrained`", "not found"]),
        ("pretrained segmenter without a file", m("[segmentation]\ninit = \"pretrained\""), vec![], vec!["key `segmentation.init`", "set segmentation.pretrained"]),
        ("missing segmenter weights", m("[segmentation]\ninit = \"pretrained\"\npretrained = \"w.pth\""), vec![], vec!["key `segmentation.pretrained`", "not found"]),
        ("key swept in grid and zip", m("[sweep.grid]\n\"train.seed\" = [1]\n[sweep.zip]\n\"train.seed\" = [2]"), vec![], vec!["sweep.zip.\"train.seed\"", "both"]),
    ]
}

#[test]
fn every_bad_manifest_is_rejected_with_file_and_key() {
    let sb = Sandbox::new();
    let mut failures = vec![];
    for (name, text, extra, needles) in cases() {
        let p = sb.write("bad.toml", &text);
        let mut args = vec!["validate", p.to_str().unwrap()];
        args.extend(extra.iter());
        let o = sb.run(&args);
        let err = stderr(&o);
        let ok = o.status.code() == Some(2)
            && needles.iter().all(|n| err.contains(n))
            && !err.contains("panicked")
            && !err.contains("RUST_BACKTRACE");
        if !ok {
            failures.push(format!("[{name}] exit {:?}\n{err}", o.status.code()));
        }
    }
    assert!(cases().len() >= 15);
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A sweep is checked variant by variant: a check of several keys that fails on the unswept
/// base but holds in every variant passes, and a problem of unswept keys, found in every
/// variant alike, is reported once.
#[test]
fn sweeps_are_checked_per_variant_and_each_problem_once() {
    let sb = Sandbox::new();
    let p = sb.write(
        "band.toml",
        &format!(
            "{BASE}[segmentation]\nself_training_rounds = 1\nself_training_relabel = \"ignored-pixels\"\n[cam]\nthreshold = 0.6\n[sweep.grid]\n\"cam.background_threshold\" = [0.2, 0.4]\n"
        ),
    );
    let o = sb.run(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let p = sb.write(
        "thr.toml",
        &format!(
            "{BASE}[cam]\nbackground_threshold = 0.75\n[sweep.grid]\n\"cam.threshold\" = [0.8, 0.9]\n"
        ),
    );
    let o = sb.run(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Three variants share one bad unswept setting: one error.
    let p = sb.write(
        "once.toml",
        &format!("{BASE}[cam]\nbalance = \"median\"\n[sweep.grid]\n\"train.seed\" = [0, 1, 2]\n"),
    );
    let o = sb.run(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("key `cam.balance`").count(), 1, "{err}");
    assert!(err.contains("1 manifest error"), "{err}");
}

#[test]
fn all_problems_are_reported_not_just_the_first() {
    let sb = Sandbox::new();
    let p = sb.write("many.toml", "name = \"t\"\ndatset = 1\n[cam]\nthreshold = 2.0\n[train]\nlr = -1\noptimizer = \"adma\"\n");
    let o = sb.run(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("4 manifest errors"), "{err}");
    for k in [
        "`datset`",
        "`cam.threshold`",
        "`train.lr`",
        "`train.optimizer`",
    ] {
        assert!(err.contains(k), "missing {k} in {err}");
    }
}

#[test]
fn errors_name_the_file_of_the_extends_chain_that_set_the_key() {
    let sb = Sandbox::new();
    sb.write("base/b.toml", "[cam]\nthreshold = 7\n");
    let p = sb.write("child.toml", "name = \"t\"\nextends = \"base/b.toml\"\n");
    let o = sb.run(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("b.toml: key `cam.threshold`"), "{err}");

    let p2 = sb.write("cyc1.toml", "name = \"t\"\nextends = \"cyc2.toml\"\n");
    sb.write("cyc2.toml", "extends = \"cyc1.toml\"\n");
    let o = sb.run(&["validate", p2.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cycle"), "{}", stderr(&o));
}

#[test]
fn environment_overrides_are_checked_and_named() {
    let sb = Sandbox::new();
    let p = sb.write("ok.toml", BASE);
    let o = sb
        .cmd()
        .args(["validate", p.to_str().unwrap()])
        .env("WSSS_CAM__THRESHOLD", "abc")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("environment variable WSSS_CAM__THRESHOLD: key `cam.threshold`"),
        "{err}"
    );
    let o = sb
        .cmd()
        .args(["validate", p.to_str().unwrap()])
        .env("WSSS_CAM__THRESHOLD", "0.4")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn shipped_manifests_validate() {
    let sb = Sandbox::new();
    let ex = repo().join("experiments");
    // Every manifest shipped in experiments/ (not base/, which holds fragments), so a new one
    // cannot be forgotten.
    let mut names: Vec<String> = std::fs::read_dir(&ex)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "{names:?}");
    for name in names {
        let o = sb
            .cmd()
            .env_remove("WSSS_DATASETS")
            .args(["validate", ex.join(&name).to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
    }
}

#[test]
fn a_child_manifest_overrides_the_sweep_key_by_key_and_can_clear_a_mode() {
    let sb = Sandbox::new();
    sb.write(
        "base.toml",
        "name = \"b\"\n[sweep.grid]\n\"train.seed\" = [0, 1]\n[sweep.zip]\n\"cam.threshold\" = [0.5, 0.7]\n\"loss.variant\" = [\"ce\", \"focal\"]\n",
    );
    // The child moves `loss.variant` to the grid and clears the zip: 2 seeds × 3 losses.
    let p = sb.write(
        "child.toml",
        "name = \"c\"\nextends = \"base.toml\"\n[sweep]\nzip = {}\n[sweep.grid]\n\"loss.variant\" = [\"ce\", \"focal\", \"bce\"]\n",
    );
    let o = sb.run(&["plan", p.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<&str> = v["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 6, "{ids:?}");
    assert!(ids.iter().all(|i| !i.contains("cam.threshold")), "{ids:?}");
    // Without clearing, a key the child puts in the grid leaves the parent's zip.
    let p = sb.write(
        "child2.toml",
        "name = \"c\"\nextends = \"base.toml\"\n[sweep.grid]\n\"loss.variant\" = [\"ce\", \"bce\"]\n",
    );
    let o = sb.run(&["plan", p.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["variants"].as_array().unwrap().len(), 8); // 2 seeds × 2 losses × 2 thresholds
                                                            // One manifest sweeping a key both ways is an error naming the key.
    let p = sb.write(
        "both.toml",
        "name = \"c\"\n[sweep.grid]\n\"train.seed\" = [0, 1]\n[sweep.zip]\n\"train.seed\" = [2, 3]\n",
    );
    let o = sb.run(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("sweep.zip.\"train.seed\"") && e.contains("both"),
        "{e}"
    );
}

#[test]
fn a_setting_no_stage_reads_is_noted_with_its_source() {
    let sb = Sandbox::new();
    // Two of the four variants are fully supervised: their rounds are not run.
    let p = sb.write(
        "st.toml",
        &format!(
            "{BASE}[segmentation]\nself_training_rounds = 2\n[sweep.grid]\n\"train.seed\" = [0, 1]\n\"segmentation.supervision\" = [\"pseudo\", \"full\"]\n"
        ),
    );
    let o = sb.run(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let note = out
        .lines()
        .find(|l| l.contains("self_training_rounds"))
        .unwrap_or_else(|| panic!("no note in {out}"));
    assert!(
        note.contains("= 2 (") && note.contains("st.toml") && note.contains("2 of 4 variant(s)"),
        "{note}"
    );
    // A refinement's own table under another method is noted the same way.
    let p = sb.write(
        "h.toml",
        &format!(
            "{BASE}[cam.haematoxylin]\nsigma = 4.0\n[sweep.grid]\n\"cam.refine\" = [\"none\", \"haematoxylin\", \"slic\"]\n"
        ),
    );
    let o = sb.run(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("[cam.haematoxylin] (")
            && out.contains("h.toml")
            && out.contains("2 of 3 variant(s) use another method"),
        "{out}"
    );
    // What a round relabels, set where no round runs, is noted with its source.
    let p = sb.write(
        "r.toml",
        &format!(
            "{BASE}[segmentation]\nself_training_relabel = \"ignored-pixels\"\n[cam]\nthreshold = 0.5\nbackground_threshold = 0.3\n[sweep.grid]\n\"segmentation.self_training_rounds\" = [0, 1]\n"
        ),
    );
    let o = sb.run(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let note = out
        .lines()
        .find(|l| l.contains("self_training_relabel"))
        .unwrap_or_else(|| panic!("no note in {out}"));
    assert!(
        note.contains("r.toml") && note.contains("1 of 2 variant(s)"),
        "{note}"
    );
    // Weak supervision reads it: no note.
    let p = sb.write(
        "weak.toml",
        &format!("{BASE}[segmentation]\nself_training_rounds = 2\n"),
    );
    let o = sb.run(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("self_training_rounds"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
