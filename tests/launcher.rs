//! Launchers end to end on tiny synthetic data: `--launcher local` and `--launcher slurm`
//! (against the real single-node SLURM of `../shared/tools/slurm/`, started here when this
//! process may; it prints SKIPPED otherwise, and CI sets `WSSS_REQUIRE_SLURM=1` so it cannot
//! skip there) produce the numbers of one sequential run, train a shared classifier once,
//! survive a failed variant (the report still comes, the failure marked) and resume only it.

mod common;
use common::*;

use std::path::Path;
use std::process::Command as Std;

/// Four variants sharing one classifier.
fn manifest() -> String {
    format!("{MINIMAL}\n[sweep.grid]\n\"cam.threshold\" = [0.4, 0.5, 0.6, 0.7]\n")
}

const IDS: [&str; 4] = [
    "cam.threshold=0.4",
    "cam.threshold=0.5",
    "cam.threshold=0.6",
    "cam.threshold=0.7",
];

/// `results.csv` without what measures time or names a folder.
fn results(exp_dir: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(exp_dir.join("results.csv")).unwrap();
    let h: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let keep: Vec<usize> = (0..h.len())
        .filter(|&i| !(h[i].ends_with("seconds") || h[i].ends_with("_per_s") || h[i] == "run_dir"))
        .collect();
    let mut rows = vec![keep.iter().map(|&i| h[i].clone()).collect()];
    for rec in r.records() {
        let rec = rec.unwrap();
        rows.push(keep.iter().map(|&i| rec[i].to_string()).collect());
    }
    rows
}

fn classifiers_trained(work: &Path) -> usize {
    std::fs::read_dir(work.join(".cache/classify"))
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

fn errors(work: &Path) -> Vec<(String, bool)> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("t/experiment.json")).unwrap()).unwrap();
    v["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_str().unwrap().to_string(), !v["error"].is_null()))
        .collect()
}

/// The numbers of one sequential in-process run of [`manifest`].
fn sequential() -> Vec<Vec<String>> {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", &manifest());
    let o = sb.run(&["run", m.to_str().unwrap(), "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    results(&sb.work().join("t"))
}

#[test]
fn local_launcher_equals_a_sequential_run_and_resumes_only_what_failed() {
    let want = sequential();
    let sb = Sandbox::new();
    let m = sb.write("m.toml", &manifest());
    let m = m.to_str().unwrap();
    // One variant fails (an injected fault): the others and the report still come, exit 1.
    let o = sb
        .cmd()
        .args(["run", m, "--launcher", "local", "--jobs", "2"])
        .env("WSSS_FAIL_VARIANT", IDS[1])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("4 variant(s) to run, 1 distinct classifier(s) first"),
        "{out}"
    );
    assert!(out.contains("3 of 4 variant(s) done"), "{out}");
    assert_eq!(
        errors(&sb.work()),
        IDS.iter()
            .map(|id| (id.to_string(), *id == IDS[1]))
            .collect::<Vec<_>>()
    );
    assert!(sb.path().join("reports/t/index.html").exists());
    assert_eq!(classifiers_trained(&sb.work()), 1);
    // --resume launches only the failed variant; then all is green and equals one run.
    let o = sb.run(&["run", m, "--launcher", "local", "--resume"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("1 variant(s) to run"), "{}", stdout(&o));
    assert_eq!(results(&sb.work().join("t")), want);
    assert_eq!(classifiers_trained(&sb.work()), 1);
    let o = sb.run(&["status", m]);
    assert!(
        stdout(&o).contains("4 of 4 variant(s) done"),
        "{}",
        stdout(&o)
    );
    // --until on a finished variant leaves it finished (it is skipped, not made partial).
    let o = sb.run(&["run", m, "--variant", IDS[0], "--until", "cam"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = sb.run(&["status", m]);
    assert!(
        stdout(&o).contains("4 of 4 variant(s) done"),
        "{}",
        stdout(&o)
    );
    // A dry run prints the commands and runs nothing; SLURM options are refused here, and so
    // are options of an in-process run.
    let o = sb.run(&["run", m, "--launcher", "local", "--dry-run", "--jobs", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("# 3 at once") && out.contains(" collect ") && out.contains("nothing run"),
        "{out}"
    );
    let o = sb.run(&["run", m, "--launcher", "local", "--partition", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--partition cannot be used with --launcher local"),
        "{}",
        stderr(&o)
    );
    let o = sb.run(&["run", m, "--launcher", "local", "--variant", IDS[0]]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn slurm_dry_run_prints_the_three_jobs() {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", &manifest());
    let o = sb.run(&[
        "run",
        m.to_str().unwrap(),
        "--launcher",
        "slurm",
        "--dry-run",
        "--partition",
        "debug",
        "--array-parallelism",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "upstream.sbatch",
        "#SBATCH --array=0-0%2",
        "#SBATCH --array=0-3%2",
        "--dependency=afterany:<upstream>",
        "--dependency=afterany:<variants>",
        "#SBATCH --partition=debug",
        "--until cam",
        " collect ",
        "nothing submitted",
    ] {
        assert!(out.contains(want), "{want}:\n{out}");
    }
    // Nothing was submitted or run.
    assert!(!sb.work().join("t/slurm").exists());
}

/// Start the single-node SLURM if this process may; why not otherwise.
fn start_slurm() -> Result<(), String> {
    let script = repo().join("../shared/tools/slurm/start-slurm.sh");
    if !script.exists() {
        return Err(format!("{} is absent", script.display()));
    }
    let o = Std::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("bash: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "start-slurm.sh failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

#[test]
fn slurm_launcher_equals_a_sequential_run_marks_a_failure_and_resumes_it() {
    if let Err(why) = start_slurm() {
        assert!(
            std::env::var("WSSS_REQUIRE_SLURM").as_deref() != Ok("1"),
            "WSSS_REQUIRE_SLURM=1 but SLURM could not start: {why}"
        );
        eprintln!("SKIPPED: SLURM launcher: {why}");
        return;
    }
    let want = sequential();
    let sb = Sandbox::new();
    let m = sb.write("m.toml", &manifest());
    let m = m.to_str().unwrap();
    // A work directory with a space in its name: every path in the scripts is quoted.
    let work = sb.path().join("work dir");
    let w = work.to_str().unwrap();
    let o = sb
        .cmd()
        .args([
            "--work-dir",
            w,
            "run",
            m,
            "--launcher",
            "slurm",
            "--wait",
            "--partition",
            "debug",
        ])
        .env("WSSS_FAIL_VARIANT", IDS[2])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("slurm: submitted 4 variant(s)"), "{out}");
    assert!(out.contains("3 of 4 variant(s) done"), "{out}");
    // The report job ran and marked the failed variant.
    assert!(sb.path().join("reports/t/index.html").exists());
    assert_eq!(
        errors(&work),
        IDS.iter()
            .map(|id| (id.to_string(), *id == IDS[2]))
            .collect::<Vec<_>>()
    );
    assert_eq!(classifiers_trained(&work), 1);
    // --resume submits only the failed variant; then everything is done.
    let o = sb.run(&[
        "--work-dir",
        w,
        "run",
        m,
        "--launcher",
        "slurm",
        "--wait",
        "--resume",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("slurm: submitted 1 variant(s)"),
        "{}",
        stdout(&o)
    );
    assert_eq!(results(&work.join("t")), want);
    assert_eq!(classifiers_trained(&work), 1);
    // A partition the cluster does not have is bad input (exit 2).
    let o = sb.run(&[
        "--work-dir",
        w,
        "run",
        m,
        "--launcher",
        "slurm",
        "--partition",
        "nope",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("sbatch"), "{}", stderr(&o));
}

#[test]
fn training_steps_show_progress_in_a_batch_log() {
    // Not a terminal: progress comes as log lines (here every step: WSSS_PROGRESS_SECS=0).
    let sb = Sandbox::new();
    let m = sb.write("m.toml", MINIMAL);
    let o = sb
        .cmd()
        .args(["run", m.to_str().unwrap(), "--no-report"])
        .env("WSSS_PROGRESS_SECS", "0")
        .env("WSSS_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.contains("classify epoch 1/2: step 1/"))
        .unwrap_or_else(|| panic!("no progress line:\n{err}"));
    assert!(line.contains("images/s, ETA"), "{line}");
}

#[test]
fn launcher_settings_come_from_the_manifest_change_no_hash_and_cannot_be_swept() {
    let sb = Sandbox::new();
    let plain = sb.write("plain.toml", &manifest());
    let with = sb.write(
        "with.toml",
        &format!(
            "{}\n[launcher.slurm]\npartition = \"debug\"\narray_parallelism = 3\nextra_sbatch = [\"--comment=wsss\"]\n",
            manifest()
        ),
    );
    let o = sb.run(&[
        "run",
        with.to_str().unwrap(),
        "--launcher",
        "slurm",
        "--dry-run",
        "--time",
        "01:00:00",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "#SBATCH --partition=debug",
        "#SBATCH --array=0-3%3",
        "#SBATCH --comment=wsss",
        "#SBATCH --time=01:00:00",
    ] {
        assert!(out.contains(want), "{want}:\n{out}");
    }
    // An option overrides the manifest.
    let o = sb.run(&[
        "run",
        with.to_str().unwrap(),
        "--launcher",
        "slurm",
        "--dry-run",
        "--partition",
        "gpu",
    ]);
    assert!(
        stdout(&o).contains("#SBATCH --partition=gpu"),
        "{}",
        stdout(&o)
    );
    // Where variants run is not what they compute: the plans' hashes are equal.
    let hashes = |m: &Path| {
        let o = sb.run(&["plan", m.to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["hash"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(hashes(&plain), hashes(&with));
    // Not sweepable, and type-checked like every key.
    let bad = sb.write(
        "bad.toml",
        &format!(
            "{MINIMAL}\n[launcher.slurm]\nextra_sbatch = [1]\n[sweep.grid]\n\"launcher.slurm.partition\" = [\"a\", \"b\"]\n"
        ),
    );
    let o = sb.run(&["validate", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("cannot sweep `launcher.slurm.partition`")
            && err.contains("launcher.slurm.extra_sbatch")
            && err.contains("a list of strings"),
        "{err}"
    );
}
