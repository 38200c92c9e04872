//! Boundary F-score and Boundary IoU against an independent implementation: the counts in
//! `tests/fixtures/boundary/reference.json` were computed once by `make_reference.py` beside it
//! (the DAVIS definition of boundary F with scikit-image's disk and SciPy's dilation; Cheng et
//! al.'s Boundary IoU with SciPy's erosion), on the synthetic masks of patient P07 (each tile's
//! mask against the next tile's) and on five GlaS masks against themselves shifted 6 px — a
//! 128² and a 775×522 image size, default tolerances (0.008 and 0.02 of the diagonal).
//! Every count must be equal, pixel for pixel.

mod common;
use common::*;

use serde_json::Value;
use wsss::data::registry::SynthParams;
use wsss::data::synth;
use wsss::metrics::boundary::{class_counts, BoundaryTolerance, ClassCounts};

fn reference() -> Value {
    let p = repo().join("tests/fixtures/boundary/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn expected(v: &Value) -> ClassCounts {
    serde_json::from_value(v.clone()).unwrap()
}

/// Both classes' counts of one truth/prediction pair, as the reference lists them.
fn check(case: &Value, truth: &[bool], pred: &[bool], w: usize, h: usize, tol: &BoundaryTolerance) {
    let (fpx, dpx) = (
        tol.f_pixels(w as u32, h as u32),
        tol.iou_pixels(w as u32, h as u32),
    );
    let inv = |m: &[bool]| m.iter().map(|b| !b).collect::<Vec<_>>();
    let got_bg = class_counts(&inv(truth), &inv(pred), w, h, fpx, dpx);
    let got_fg = class_counts(truth, pred, w, h, fpx, dpx);
    let name = format!("{} {} vs {}", case["source"], case["truth"], case["pred"]);
    assert_eq!(
        got_bg,
        expected(&case["counts"]["background"]),
        "{name}: background"
    );
    assert_eq!(
        got_fg,
        expected(&case["counts"]["foreground"]),
        "{name}: foreground"
    );
}

#[test]
fn boundary_counts_equal_the_reference_implementation() {
    let r = reference();
    let tol: BoundaryTolerance = serde_json::from_value(r["tolerance"].clone()).unwrap();
    let params = SynthParams::default();
    let masks: Vec<Vec<bool>> = (0..params.images_per_patient)
        .map(|i| {
            let (_, m) = synth::tile(&params, true, "P07", i);
            m.pixels().map(|p| p.0[0] > 0).collect()
        })
        .collect();
    let n = params.size as usize;
    let cases = r["cases"].as_array().unwrap();
    let mut synthetic = 0;
    for case in cases.iter().filter(|c| c["source"] == "synthetic") {
        let idx = |k: &str| -> usize { case[k].as_str().unwrap()[4..].parse().unwrap() };
        check(case, &masks[idx("truth")], &masks[idx("pred")], n, n, &tol);
        synthetic += 1;
    }
    assert_eq!(synthetic, 7);

    let Some(glas) = shared_data().map(|d| d.join("glas")) else {
        eprintln!("SKIPPED: GlaS cases of the boundary reference (no ../shared/data/glas)");
        return;
    };
    let mut checked = 0;
    for case in cases.iter().filter(|c| c["source"] == "glas") {
        let name = case["truth"].as_str().unwrap();
        let path = glas.join(format!("masks/{name}_anno.png"));
        let m = image::open(&path).unwrap().into_luma16();
        let (w, h) = (m.width() as usize, m.height() as usize);
        let truth: Vec<bool> = m.pixels().map(|p| p.0[0] > 0).collect();
        let mut pred = vec![false; w * h];
        for y in 0..h {
            for x in 6..w {
                pred[y * w + x] = truth[y * w + x - 6];
            }
        }
        check(case, &truth, &pred, w, h, &tol);
        checked += 1;
    }
    assert_eq!(checked, 5);
}

/// The evaluate stage scores every source's outline beside its mIoU, and the summary and
/// results table carry the segmenter's and the pseudo labels' boundary scores; a tolerance
/// change is a different computation (its own cache key), a default one is not written.
#[test]
fn evaluate_scores_boundaries_of_every_source() {
    let sb = Sandbox::new();
    let m = sb.write("t.toml", MINIMAL);
    let out = sb.run(&["run", m.to_str().unwrap(), "--no-report"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = first_dir(sb.work().join("t"));
    for source in [
        "segmenter",
        "pseudo",
        "all_background",
        "all_foreground",
        "otsu",
    ] {
        for metric in ["boundary_f", "boundary_iou", "boundary_f_foreground"] {
            let v = seg_metric(&run, "valid", source, metric);
            assert!(
                v.is_nan() || (0.0..=1.0).contains(&v),
                "{source} {metric} {v}"
            );
        }
    }
    // All background draws no outline where the masks have one: no boundary pixel matches,
    // and its foreground band is empty.
    assert_eq!(
        seg_metric(&run, "valid", "all_background", "boundary_f"),
        0.0
    );
    assert_eq!(
        seg_metric(&run, "valid", "all_background", "boundary_iou_foreground"),
        0.0
    );
    let results = std::fs::read_to_string(sb.work().join("t/results.csv")).unwrap();
    let head = results.lines().next().unwrap();
    for col in [
        "evaluate.valid_boundary_f",
        "evaluate.valid_boundary_iou",
        "evaluate.valid_pseudo_boundary_f",
    ] {
        assert!(head.split(',').any(|c| c == col), "{col} not in {head}");
    }
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(!config.contains("[metrics]"), "{config}");

    // A wider tolerance recomputes only the evaluate stage.
    let wide = sb.write(
        "wide.toml",
        &format!("{MINIMAL}[metrics]\nboundary_f_tolerance = 0.1\n"),
    );
    let out = sb.run(&["run", wide.to_str().unwrap(), "--no-report"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stdout(&out);
    assert!(log.contains("1 stage run(s), 5 cached"), "{log}");
}
