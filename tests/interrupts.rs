//! Interruptions never change results: a run killed at every step of a checkpoint write, or
//! stopped by SIGINT / SIGTERM, resumes to bit-identical outputs; a signal ends the run with
//! 130 / 143 and marks its run directory `interrupted`.

mod common;
use common::*;

use std::path::{Path, PathBuf};

/// Two classifier epochs and two segmenter epochs, so that epoch 1's checkpoint is resumed.
fn manifest() -> String {
    MINIMAL.replace("epochs = 1\n", "epochs = 2\n")
}

/// What must not change: the classifier's predictions, both training histories (the seconds
/// column aside), the segmenter's weights and the evaluation.
fn results(run: &Path) -> Vec<(String, Vec<u8>)> {
    let strip = |b: Vec<u8>| -> Vec<u8> {
        String::from_utf8(b)
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').map_or(l, |x| x.0).to_string() + "\n")
            .collect::<String>()
            .into_bytes()
    };
    let mut out = Vec::new();
    for f in [
        "predictions.csv",
        "history.csv",
        "segment_history.csv",
        "segmenter.safetensors",
        "seg_metrics.csv",
    ] {
        let b = std::fs::read(run.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        let b = if f.ends_with("history.csv") {
            strip(b)
        } else {
            b
        };
        out.push((f.to_string(), b));
    }
    out
}

fn reference() -> Vec<(String, Vec<u8>)> {
    let sb = Sandbox::new();
    let m = sb.write("m.toml", &manifest());
    let o = sb.run(&["run", m.to_str().unwrap(), "--no-report"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    results(&first_dir(sb.work().join("t")))
}

fn run_json(sb: &Sandbox) -> serde_json::Value {
    let p = first_dir(sb.work().join("t")).join("run.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn a_run_killed_at_every_step_of_a_checkpoint_resumes_to_identical_results() {
    let want = reference();
    let steps = ["weights", "optim", "progress", "best", "rename", "commit"];
    for prefix in ["last", "seg_last"] {
        for step in steps {
            let sb = Sandbox::new();
            let m = sb.write("m.toml", &manifest());
            let at = format!("checkpoint:{prefix}:1:{step}");
            let o = sb
                .cmd()
                .env("WSSS_CRASH_AT", &at)
                .args(["run", m.to_str().unwrap(), "--no-report"])
                .output()
                .unwrap();
            assert!(!o.status.success(), "{at}: the crash hook did not fire");
            assert!(
                stderr(&o).contains("aborting in the middle of a checkpoint"),
                "{at}"
            );
            let o = sb.run(&["run", m.to_str().unwrap(), "--no-report"]);
            assert_eq!(o.status.code(), Some(0), "{at}: {}", stderr(&o));
            let got = results(&first_dir(sb.work().join("t")));
            for ((f, a), (_, b)) in got.iter().zip(&want) {
                assert!(a == b, "{at}: {f} differs from an uninterrupted run");
            }
        }
    }
}

/// The committed-checkpoint marker of the classifier's scratch folder, once it exists.
fn committed(sb: &Sandbox) -> Option<PathBuf> {
    let dir = sb.work().join(".cache/classify");
    std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path().join("last.ckpt/COMMITTED"))
        .find(|p| p.is_file())
}

#[cfg(unix)]
#[test]
fn sigint_and_sigterm_stop_at_a_safe_point_and_the_rerun_is_identical() {
    // Long enough to be signalled while the classifier trains.
    let text = MINIMAL.replace("epochs = 2\n", "epochs = 40\n");
    let want = {
        let sb = Sandbox::new();
        let m = sb.write("m.toml", &text);
        let o = sb.run(&["run", m.to_str().unwrap(), "--no-report"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        results(&first_dir(sb.work().join("t")))
    };
    for (sig, code) in [("INT", 130), ("TERM", 143)] {
        let sb = Sandbox::new();
        let m = sb.write("m.toml", &text);
        let child = sb
            .std_cmd()
            .args(["run", m.to_str().unwrap(), "--no-report"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while committed(&sb).is_none() {
            assert!(t0.elapsed().as_secs() < 120, "no checkpoint was committed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let kill = std::process::Command::new("kill")
            .args([format!("-{sig}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "SIG{sig}: {err}");
        assert!(err.contains(&format!("interrupted by SIG{sig}")), "{err}");
        let rj = run_json(&sb);
        assert_eq!(rj["status"], "interrupted", "{rj}");
        let o = sb.run(&["run", m.to_str().unwrap(), "--no-report"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(run_json(&sb)["status"], "complete");
        let got = results(&first_dir(sb.work().join("t")));
        for ((f, a), (_, b)) in got.iter().zip(&want) {
            assert!(a == b, "SIG{sig}: {f} differs from an uninterrupted run");
        }
    }
}
