//! Every value the schema accepts does what it says: for each key with a fixed set of values
//! (choices and booleans), every value other than the default changes what the pipeline
//! computes — the classifier, the CAMs, the pseudo labels, the segmenter or its predictions.
//! A value that computed exactly what the default does (as `cam.refine = "crf"` once did)
//! fails here. The few values that are equal *by a law* are listed with the law.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use wsss::config::schema::{Kind, FIELDS};

/// Digest of everything a run computed that is not a timing: the segmenter's weights and
/// every CAM, pseudo label and prediction PNG.
fn digest(run: &Path) -> String {
    let mut files: Vec<std::path::PathBuf> = walkdir::WalkDir::new(run)
        .follow_links(true)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .filter(|p| {
            let s = p.to_string_lossy();
            s.ends_with(".safetensors")
                || ["cams", "pseudo_labels", "predictions"]
                    .iter()
                    .any(|d| s.contains(&format!("/{d}/")))
        })
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.strip_prefix(run).unwrap().to_string_lossy().as_bytes());
        h.update(std::fs::read(f).unwrap());
    }
    format!("{:x}", h.finalize())
}

/// Values that compute the same thing by a law, not by accident, with the law.
const LAWS: &[(&str, &str, &str, &str)] = &[
    (
        "cam.method",
        "cam",
        "gradcam",
        "for a GAP → linear head Grad-CAM is ReLU(CAM)/(h·w) on the last block (Selvaraju et al. \
         2017); normalised, the maps are equal (unit test in cam::methods)",
    ),
    (
        "cam.normalize",
        "max",
        "minmax",
        "every map is ReLU'd, so it reaches 0 wherever evidence is negative and min-max equals \
         max-normalisation; they differ when a map is positive everywhere (unit test in cam)",
    ),
];

/// Settings a key's values need to be valid at all (and the law-given equalities).
fn context(key: &str) -> &'static str {
    match key {
        // Patch labels are multi-label: they need the binary cross-entropy.
        "labels.level" => "[loss]\nvariant = \"bce\"\n",
        "cam.balance" => "[labels]\nlevel = \"patch\"\n[loss]\nvariant = \"bce\"\n",
        // The classifier's feature extractor must fit the segmenter's encoder.
        "segmentation.init" => "[segmentation]\nencoder = \"vgg16\"\n",
        // Schedules differ only after the first epoch.
        "train.schedule" => "[train]\nepochs = 3\n",
        // Flip TTA can only change a prediction that is not one class everywhere: a tiny
        // segmenter trained for one epoch predicts all background, so train one that learns.
        // Likewise how overlapping windows combine (32-px windows on 64-px tiles overlap).
        "segmentation.tta" | "segmentation.blend" => {
            "[segmentation]\nsupervision = \"full\"\nloss = \"oeem-balanced\"\nwidth = 0.25\nepochs = 20\nbatch_size = 2\n"
        }
        // EfficientNet-Lite rounds channels to multiples of 8 and repeats ⌈depth · r⌉ times:
        // at width 1/16 Lite1 and Lite2 are the same network by construction (widths 1.0·c/16
        // and 1.1·c/16 round alike, ⌈1.1r⌉ = ⌈1.2r⌉ for r = 2, 3, 4), and 1/16-wide
        // EfficientNets learn nothing in 2 epochs (so Lite0's CAMs are as flat as Lite1's).
        // At width ½ every architecture differs.
        // Choosing the epoch by agreement can only differ from keeping the last where a later
        // epoch agrees worse: a segmenter that learns, at a learning rate that overshoots
        // (on this data the agreement peaks before the last of 10 epochs; at 8 it did with the
        // GEMM-only kernels, not with Winograd's 3×3 convolutions, whose rounding differs).
        "segmentation.select" => {
            "[segmentation]\nsupervision = \"full\"\nloss = \"balanced-ce\"\nwidth = 0.25\nepochs = 10\nbatch_size = 2\nlr = 0.03\n"
        }
        // What a self-training round relabels is read only with a round, and
        // "ignored-pixels" needs an ignore band to have pixels to fill in.
        "segmentation.self_training_relabel" => {
            "[segmentation]\nself_training_rounds = 1\n[cam]\nthreshold = 0.6\nbackground_threshold = 0.2\n"
        }
        "backbone.arch" => "[backbone]\nwidth = 0.5\n",
        "segmentation.encoder" => "[segmentation]\nwidth = 0.5\n",
        // Momentum is an SGD setting; AdamW is the default optimiser.
        _ => "",
    }
}

fn toml_value(kind: &Kind, v: &str) -> String {
    match kind {
        Kind::Choice(_) => format!("\"{v}\""),
        _ => v.to_string(),
    }
}

#[test]
fn every_accepted_choice_changes_what_is_computed() {
    // The contexts above were measured on the first generator's tiles (e.g. where the
    // agreement peaks before the last epoch); the data is incidental to what is tested.
    let sb = Sandbox::with_generator("nuclei");
    let mut failures = Vec::new();
    let mut checked = 0;
    for f in FIELDS {
        let values: Vec<String> = match &f.kind {
            Kind::Choice(c) => c.iter().map(|s| s.to_string()).collect(),
            Kind::IntChoice(c) => c.iter().map(|i| i.to_string()).collect(),
            Kind::Bool => vec!["false".into(), "true".into()],
            _ => continue,
        };
        // `device`: cpu is the only device here (`auto` is cpu without a GPU); the CUDA
        // path is compiled in CI and checked on a GPU. `split.method`: each method assigns
        // patients differently by construction (tested in `data::split`), and `patients`
        // needs patient lists that the others refuse. `precision`: GPU arithmetic; the CPU
        // computes fp32 for `auto` and `fp32` and refuses `tf32` (model::precision's test),
        // the GPU's are compared in tests/gpu.rs.
        if ["device", "split.method", "precision"].contains(&f.key) {
            continue;
        }
        let name = format!("c-{}", f.key.replace('.', "-"));
        let list: Vec<String> = values.iter().map(|v| toml_value(&f.kind, v)).collect();
        let context = match f.key {
            // "pretrained" needs a weights file: another seed's classifier (VGG-16 at the
            // encoder's width), so that it differs from "classifier" too.
            "segmentation.init" => format!(
                "{}pretrained = \"{}\"\n",
                context(f.key),
                other_classifier(&sb).display()
            ),
            key => context(key).to_string(),
        };
        let text = format!(
            "{MINIMAL}\n{}\n[sweep.grid]\n\"{}\" = [{}]\n",
            context,
            f.key,
            list.join(", ")
        )
        .replace("name = \"t\"", &format!("name = \"{name}\""));
        // The context may repeat a table of MINIMAL's: merge by appending keys to it.
        let text = merge_tables(&text);
        let m = sb.write(&format!("{name}.toml"), &text);
        let o = sb.run(&["run", m.to_str().unwrap(), "--no-report"]);
        assert_eq!(o.status.code(), Some(0), "{}: {}", f.key, stderr(&o));
        let mut by_value: BTreeMap<String, String> = BTreeMap::new();
        for e in std::fs::read_dir(sb.work().join(&name)).unwrap().flatten() {
            if !e.path().is_dir() {
                continue;
            }
            // Run directories are `<variant id>-<8-digit hash>`.
            let dir = e.file_name().to_string_lossy().into_owned();
            let id = &dir[..dir.len() - 9];
            let v = values
                .iter()
                .find(|v| id == format!("{}={}", f.key, v))
                .unwrap_or_else(|| panic!("{dir}"))
                .clone();
            by_value.insert(v, digest(&e.path()));
        }
        assert_eq!(by_value.len(), values.len(), "{}", f.key);
        // Values that share a digest computed the same thing.
        let mut seen: BTreeMap<&String, &String> = BTreeMap::new();
        for (v, d) in &by_value {
            if let Some(other) = seen.get(d) {
                let law = LAWS.iter().any(|(k, a, b, _)| {
                    *k == f.key
                        && [a, b].contains(&&v.as_str())
                        && [a, b].contains(&&other.as_str())
                });
                if !law {
                    failures.push(format!(
                        "{} = {v} computes what {} = {other} does",
                        f.key, f.key
                    ));
                }
            } else {
                seen.insert(d, v);
            }
        }
        checked += values.len();
    }
    assert!(checked > 40, "only {checked} values checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The weights of a classifier trained as MINIMAL's but with another seed (`--until classify`).
fn other_classifier(sb: &Sandbox) -> std::path::PathBuf {
    let text = MINIMAL.replace("name = \"t\"", "name = \"other\"")
        + "[sweep.grid]\n\"train.seed\" = [7]\n";
    let m = sb.write("other.toml", &merge_tables(&text));
    // its own work directory, so that its cache holds this one classifier
    let work = sb.work().with_file_name("other-work");
    let o = sb.run(&[
        "run",
        m.to_str().unwrap(),
        "--until",
        "classify",
        "--work-dir",
        work.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    walkdir::WalkDir::new(work)
        .follow_links(true)
        .into_iter()
        .flatten()
        .map(|e| e.path().to_path_buf())
        .find(|p| p.ends_with("classifier.safetensors"))
        .expect("the classify stage publishes classifier.safetensors")
}

/// Merge repeated `[table]` headers of a small TOML text into one table each.
fn merge_tables(text: &str) -> String {
    let mut order: Vec<String> = vec![String::new()];
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            cur = t.to_string();
            if !order.contains(&cur) {
                order.push(cur.clone());
            }
            continue;
        }
        if t.is_empty() {
            continue;
        }
        tables
            .entry(cur.clone())
            .or_default()
            .push(line.to_string());
    }
    let mut out = String::new();
    for h in order {
        let lines = tables.remove(&h).unwrap_or_default();
        // Later lines win: keep the last assignment of each key.
        let mut keys: BTreeMap<String, String> = BTreeMap::new();
        let mut kept: Vec<String> = Vec::new();
        for l in lines {
            let k = l.split('=').next().unwrap_or("").trim().to_string();
            if keys.insert(k.clone(), l.clone()).is_some() {
                kept.retain(|x| x.split('=').next().unwrap_or("").trim() != k);
            }
            kept.push(l);
        }
        if !h.is_empty() {
            out.push_str(&h);
            out.push('\n');
        }
        for l in kept {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}
