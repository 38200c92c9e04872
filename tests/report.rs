//! Reports end to end: a small threshold × loss sweep runs, `wsss run` writes the report, its
//! tables open with polars (here) and with pyarrow / pandas / python polars (when installed),
//! `index.html` loads in headless Chromium without errors (when installed), and `wsss compare`
//! joins, filters and sorts.
//!
//! CI installs the Python readers and Chromium and sets `WSSS_REQUIRE_READERS=1` and
//! `WSSS_REQUIRE_BROWSER=1`, so there these checks cannot skip; elsewhere a missing tool prints
//! `SKIPPED: …`.

mod common;
use std::path::Path;
use std::process::Command as Std;

use common::*;

fn manifest(name: &str, sweep: &str) -> String {
    format!(
        "{}\n[sweep.grid]\n{sweep}\n",
        MINIMAL.replace("name = \"t\"", &format!("name = \"{name}\""))
    )
}

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// The summary table with what varies between machines and runs taken out: hashes, paths,
/// times; numbers to 3 decimals.
fn redacted_summary(dir: &Path) -> String {
    let df = wsss::table::read_parquet(&dir.join("summary.parquet")).unwrap();
    let drop = ["hash", "run_dir", "compute_s"];
    let cols: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .filter(|c| !drop.contains(&c.as_str()))
        .collect();
    let mut out = cols.join(",");
    for i in 0..df.height() {
        out.push('\n');
        let cells: Vec<String> = cols
            .iter()
            .map(|c| {
                let v = df.column(c).unwrap().get(i).unwrap();
                match v.extract::<f64>() {
                    Some(x) if v.dtype().is_float() => {
                        if x.is_nan() {
                            "NaN".into()
                        } else {
                            format!("{x:.3}")
                        }
                    }
                    _ => v.to_string().trim_matches('"').to_string(),
                }
            })
            .collect();
        out.push_str(&cells.join(","));
    }
    out
}

#[test]
fn run_writes_the_report_and_compare_joins_experiments() {
    let sb = Sandbox::new();
    let m = sb.write(
        "abl.toml",
        &manifest(
            "abl",
            "\"cam.threshold\" = [0.5, 0.7]\n\"loss.variant\" = [\"ce\", \"focal\"]",
        ),
    );
    let o = sb.run(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("report: "), "{}", stdout(&o));
    let rep = sb.path().join("reports/abl");

    // every table, in both formats, readable by polars
    for t in wsss::report::TABLE_FILES {
        let df = wsss::table::read_parquet(&rep.join(format!("{t}.parquet")))
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        assert!(rep.join(format!("{t}.csv")).is_file(), "{t}.csv");
        if !matches!(*t, "misclassified") {
            assert!(df.height() > 0, "{t} is empty");
        }
    }
    let summary = wsss::table::read_parquet(&rep.join("summary.parquet")).unwrap();
    assert_eq!(summary.height(), 4);
    let names: Vec<String> = summary
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    for c in [
        "cam.threshold",
        "loss.variant",
        "accuracy",
        "f1",
        "auc",
        "pseudo_miou",
        "seg_miou",
        "seg_dice",
    ] {
        assert!(
            names.contains(&c.to_string()),
            "summary lacks {c}: {names:?}"
        );
    }
    // parameters equal in every variant are not summary columns
    assert!(!names.contains(&"backbone.arch".to_string()));
    insta::assert_snapshot!("report_summary", redacted_summary(&rep));

    // the long metrics table: stages, classes split off, per-epoch rows
    let metrics = wsss::table::read_parquet(&rep.join("metrics.parquet")).unwrap();
    let stages = wsss::report::data::strs(&metrics, "stage").unwrap();
    for s in ["classify", "cam", "pseudo", "segment"] {
        assert!(stages.iter().any(|x| x == s), "metrics lack stage {s}");
    }
    let classes = wsss::report::data::strs(&metrics, "class").unwrap();
    assert!(classes.iter().any(|c| c == "foreground"));
    let curves = wsss::table::read_parquet(&rep.join("curves.parquet")).unwrap();
    let epochs = wsss::report::data::nums(&curves, "epoch").unwrap();
    assert!(epochs.iter().all(|e| *e >= 1.0));
    // images: one row per image per variant (9 synthetic images per class → 18 images)
    let images = wsss::table::read_parquet(&rep.join("images.parquet")).unwrap();
    assert_eq!(images.height(), 4 * 18);
    // per patient: every scored image in exactly one (split, patient) row of its variant, and
    // each row's mean equals the mean of its images' rows in `images`
    let pp = wsss::table::read_parquet(&rep.join("patient_segmentation.parquet")).unwrap();
    let s = |df, c| wsss::report::data::strs(df, c).unwrap();
    let n = |df, c| wsss::report::data::nums(df, c).unwrap();
    let (pv, ppat, pn, pm) = (
        s(&pp, "variant"),
        s(&pp, "patient"),
        n(&pp, "images"),
        n(&pp, "seg_miou"),
    );
    assert_eq!(pn.iter().sum::<f64>(), (4 * 18) as f64);
    let (iv, ipat, im) = (
        s(&images, "variant"),
        s(&images, "patient"),
        n(&images, "seg_miou"),
    );
    for k in 0..pv.len() {
        let tiles: Vec<f64> = (0..iv.len())
            .filter(|&i| iv[i] == pv[k] && ipat[i] == ppat[k])
            .map(|i| im[i])
            .collect();
        assert_eq!(tiles.len() as f64, pn[k]);
        let mean = tiles.iter().sum::<f64>() / tiles.len() as f64;
        assert!(
            (mean - pm[k]).abs() < 1e-9,
            "{} {}: {mean} vs {}",
            pv[k],
            ppat[k],
            pm[k]
        );
    }
    let html = std::fs::read_to_string(rep.join("index.html")).unwrap();
    assert!(html.contains("Segmentation per patient"));

    // figures: PNG (decodes, not blank) and SVG for each; two classifiers → two ROC lines
    let figs = [
        "classify_curves",
        "roc",
        "confusion",
        "miou_threshold",
        "miou_bars",
        "class_iou",
        "segment_curves",
    ];
    for f in figs {
        let png = image::open(rep.join(format!("figures/{f}.png")))
            .unwrap_or_else(|e| panic!("{f}.png: {e}"))
            .into_rgb8();
        let distinct: std::collections::BTreeSet<[u8; 3]> = png.pixels().map(|p| p.0).collect();
        assert!(distinct.len() > 10, "{f}.png looks blank");
        let svg = std::fs::read_to_string(rep.join(format!("figures/{f}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{f}.svg");
    }
    let roc = std::fs::read_to_string(rep.join("figures/roc.svg")).unwrap();
    assert_eq!(
        roc.matches("(AUC ").count(),
        2,
        "one ROC per distinct classifier"
    );
    for g in ["best", "worst"] {
        assert!(
            rep.join(format!("galleries/{g}.png")).is_file(),
            "{g} gallery"
        );
    }

    // the page is self-contained: every image inline, nothing fetched
    let html = std::fs::read_to_string(rep.join("index.html")).unwrap();
    let imgs = html.matches("<img ").count();
    assert_eq!(imgs, html.matches("src=\"data:image/png;base64,").count());
    assert!(imgs >= figs.len() + 2);
    assert!(!html.contains("src=\"http"));
    assert!(html.contains("cam.threshold") && html.contains("Resolved configs"));
    let md = std::fs::read_to_string(rep.join("summary.md")).unwrap();
    assert!(md.starts_with("# abl") && md.contains("| variant | cam.threshold | loss.variant |"));

    // `wsss report` rebuilds it, with chosen images
    let o = sb.run(&["report", "abl", "--images", "P01/normal/P01_00"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(rep.join("galleries/chosen.png").is_file());
    let o = sb.run(&["report", "missing-experiment"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("experiments there: abl"),
        "{}",
        stderr(&o)
    );

    // compare: sort by a metric (best first), join a second experiment, only-changed columns
    let o = sb.run(&["compare", "abl", "--sort", "pseudo_miou", "--csv"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut rdr = csv::Reader::from_reader(o.stdout.as_slice());
    let h = rdr.headers().unwrap().clone();
    let col = h.iter().position(|c| c == "pseudo_miou").unwrap();
    let vals: Vec<f64> = rdr
        .records()
        .map(|r| r.unwrap()[col].parse().unwrap())
        .collect();
    assert_eq!(vals.len(), 4);
    assert!(vals.windows(2).all(|w| w[0] >= w[1]), "{vals:?}");
    let m2 = sb.write(
        "other.toml",
        &format!(
            "{}\n[loss]\nvariant = \"focal\"\n[cam]\nthreshold = 0.6\n",
            MINIMAL.replace("name = \"t\"", "name = \"other\"")
        ),
    );
    let o = sb.run(&["run", m2.to_str().unwrap(), "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!sb.path().join("reports/other").exists());
    let o = sb.run(&["compare", "abl", m2.to_str().unwrap(), "--only-changed"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    let header = text.lines().next().unwrap();
    assert!(header.starts_with("experiment  variant"), "{header}");
    assert!(header.contains("cam.threshold") && header.contains("loss.variant"));
    assert!(!header.contains("backbone.arch"));
    assert_eq!(text.lines().count(), 2 + 5);
    let o = sb.run(&["compare", "abl", "--sort", "nonsense"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("seg_miou"));

    python_readers(&rep);
    browser(&rep);
}

fn python_readers(rep: &Path) {
    let script = repo().join("tests/check_parquet.py");
    let o = Std::new("python3").arg(&script).arg(rep).output();
    match o {
        Ok(o) if o.status.code() == Some(0) => {
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(out.contains("summary.parquet"), "{out}");
        }
        Ok(o) if o.status.code() == Some(3) && !required("WSSS_REQUIRE_READERS") => {
            eprintln!(
                "SKIPPED: python parquet readers: {}",
                String::from_utf8_lossy(&o.stdout).trim()
            )
        }
        Ok(o) => panic!(
            "python readers failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) if !required("WSSS_REQUIRE_READERS") => {
            eprintln!("SKIPPED: python parquet readers: python3: {e}")
        }
        Err(e) => panic!("python3: {e}"),
    }
}

fn browser(rep: &Path) {
    let dir = repo().join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = dir.join("node_modules/playwright-core").is_dir() && Path::new(&chromium).exists();
    if !ready {
        assert!(
            !required("WSSS_REQUIRE_BROWSER"),
            "WSSS_REQUIRE_BROWSER=1 but chromium or tests/browser/node_modules is missing"
        );
        eprintln!("SKIPPED: browser check (needs {chromium} and `npm ci` in tests/browser)");
        return;
    }
    let shots = std::env::var_os("WSSS_ARTIFACTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join("target/ci-artifacts"));
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("report-abl.png");
    let o = Std::new("node")
        .current_dir(&dir)
        .arg("check_report.mjs")
        .arg(rep.join("index.html"))
        .arg(&shot)
        .output()
        .expect("node");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "browser check failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["images"].as_u64().unwrap() >= 9, "{out}");
    assert_eq!(v["summary_rows"], 4);
    let png = image::open(&shot).unwrap();
    assert!(png.width() > 0 && png.height() > 1000);
    eprintln!("browser check: {out}screenshot: {}", shot.display());
}

/// With a test split beside the validation split (where choices are made), the summary, the
/// Markdown summary and `wsss compare` show the test numbers beside the valid ones, labelled
/// `test_*`, and they are the test split's (not the valid split's) numbers.
#[test]
fn a_test_split_is_shown_beside_the_validation_split() {
    let sb = Sandbox::new();
    let m = sb.write(
        "tv.toml",
        &MINIMAL.replace("name = \"t\"", "name = \"tv\"").replace(
            "valid_fraction = 0.34",
            "valid_fraction = 0.34\ntest_fraction = 0.34",
        ),
    );
    let o = sb.run(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = sb.run(&["compare", "tv", "--csv"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut rdr = csv::Reader::from_reader(o.stdout.as_slice());
    let h = rdr.headers().unwrap().clone();
    let row = rdr.records().next().unwrap().unwrap();
    let get = |name: &str| -> f64 {
        let i = h
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no column {name} in {h:?}"));
        row[i].parse().unwrap()
    };
    // The run's own tables: the test split's pseudo-label mIoU.
    let run = first_dir(sb.work().join("tv"));
    let pseudo = std::fs::read_to_string(run.join("pseudo_metrics.csv")).unwrap();
    let of = |split: &str| -> f64 {
        pseudo
            .lines()
            .find(|l| l.starts_with(&format!("{split},miou,")))
            .and_then(|l| l.rsplit(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {split} miou in {pseudo}"))
    };
    assert!((get("pseudo_miou") - of("valid")).abs() < 1e-3);
    assert!((get("test_pseudo_miou") - of("test")).abs() < 1e-3);
    assert!(get("test_seg_miou").is_finite());
    let md = std::fs::read_to_string(sb.path().join("reports/tv/summary.md")).unwrap();
    assert!(md.contains("test_seg_miou"), "{md}");
    assert!(md.contains("`test_*` columns on the `test` split"), "{md}");
}
