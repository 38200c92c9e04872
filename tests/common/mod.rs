//! Helpers shared by the integration tests: a sandbox with its own work dir and registry.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temp folder with a registry whose `synthetic` entry is tiny and lives inside it.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self::with_generator("tissue")
    }

    /// The same sandbox with the tiles of another synthetic generator (`nuclei`: the first
    /// one, for tests whose settings were measured on it).
    pub fn with_generator(generator: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let reg = format!(
            r#"
[synthetic]
layout = "synthetic"
root = "data/synthetic"
classes = ["normal", "malignant"]
positive_class = "malignant"
synth = {{ generator = "{generator}", patients_per_class = 3, images_per_patient = 3, size = 64, seed = 7 }}
"#
        );
        std::fs::write(dir.path().join("datasets.toml"), reg).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn work(&self) -> PathBuf {
        self.path().join("runs")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `wsss` with this sandbox's work dir and registry, run in the sandbox.
    pub fn cmd(&self) -> Command {
        Command::from_std(self.std_cmd())
    }

    /// The same as [`Sandbox::cmd`] as a plain `std::process::Command` (to spawn it).
    pub fn std_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("wsss"));
        c.current_dir(self.path())
            .env("WSSS_WORK_DIR", self.work())
            .env("WSSS_REPORTS_DIR", self.path().join("reports"))
            .env("WSSS_DATASETS", self.path().join("datasets.toml"))
            .env_remove("WSSS_CRASH_AT")
            .env("WSSS_LOG", "warn");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }
}

/// The first sub-folder of `dir` in name order (e.g. the one run directory of an experiment),
/// leaving out run directories that `--fresh` moved aside (`<dir>.replaced-<time>`): in
/// `read_dir`'s order, which the file system decides, the old one came first on some runs.
pub fn first_dir(dir: impl AsRef<Path>) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir.as_ref())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.to_string_lossy().contains(".replaced-"))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .next()
        .unwrap_or_else(|| panic!("no folder in {}", dir.as_ref().display()))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `../shared/data` (or `WSSS_SHARED_DATA`), if present.
pub fn shared_data() -> Option<PathBuf> {
    let p = std::env::var_os("WSSS_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"));
    p.join("glas/labels.csv").is_file().then_some(p)
}

/// The `seg_metrics` value of `source`/`metric` on `split` in a run directory.
pub fn seg_metric(run: &Path, split: &str, source: &str, metric: &str) -> f64 {
    let mut r = csv::Reader::from_path(run.join("seg_metrics.csv")).unwrap();
    for rec in r.records() {
        let rec = rec.unwrap();
        if &rec[0] == split && &rec[1] == source && &rec[2] == metric {
            return rec[3].parse().unwrap();
        }
    }
    panic!("no {split}/{source}/{metric} in {}", run.display());
}

/// A one-epoch, narrow run of a folder dataset `ds` with patients n1–n3 / m1–m3: train n1 n2
/// m1 m2, valid n3 m3.
pub const SIX_PATIENTS: &str = r#"
name = "m"
dataset = "ds"
[split]
method = "patients"
train_patients = ["n1", "n2", "m1", "m2"]
valid_patients = ["n3", "m3"]
[backbone]
width = 0.0625
[train]
image_size = 32
epochs = 1
batch_size = 4
[segmentation]
width = 0.0625
crop_size = 32
epochs = 1
batch_size = 4
"#;

/// A minimal valid manifest for the sandbox's synthetic data, with a classifier small enough
/// to train in seconds.
pub const MINIMAL: &str = r#"
name = "t"
dataset = "synthetic"
[split]
valid_fraction = 0.34
[backbone]
width = 0.0625
batch_norm = true
[train]
image_size = 32
epochs = 2
batch_size = 8
[segmentation]
width = 0.0625
crop_size = 32
epochs = 1
"#;

/// `--set` overrides that shrink any manifest's classifier and segmenter to test size.
pub const TINY: &[&str] = &[
    "--set",
    "backbone.width=0.0625",
    "--set",
    "train.image_size=32",
    "--set",
    "train.epochs=1",
    "--set",
    "segmentation.width=0.0625",
    "--set",
    "segmentation.crop_size=32",
    "--set",
    "segmentation.epochs=1",
];

/// Stdout of a reference script (`python3 <script>`, relative to the repository) run live, or
/// `None` after printing `SKIPPED: live <what> check (<hint>)` when it cannot run — unless the
/// environment variable `required` is `1` (CI), where that is a failure.
pub fn live_reference(script: &str, required: &str, what: &str, hint: &str) -> Option<String> {
    let required = std::env::var(required).is_ok_and(|v| v == "1");
    let o = std::process::Command::new("python3")
        .arg(repo().join(script))
        .output();
    match o {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) if !required => {
            let err = String::from_utf8_lossy(&o.stderr);
            eprintln!(
                "SKIPPED: live {what} check ({hint}): {}",
                err.lines().last().unwrap_or("")
            );
            None
        }
        Err(e) if !required => {
            eprintln!("SKIPPED: live {what} check: python3: {e}");
            None
        }
        Ok(o) => panic!("{script} failed:\n{}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("python3: {e}"),
    }
}
