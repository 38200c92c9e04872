//! Launchers: an experiment's variants as separate `wsss run --variant` processes — on this
//! machine (`--launcher local --jobs N`) or as SLURM job arrays (`--launcher slurm`) — with no
//! long-lived coordinator: every process works on the shared work directory (cache entries and
//! run directories carry their own locks), and a final `wsss collect` rebuilds the
//! experiment's files and report from the run directories.
//!
//! The order is the same for every launcher ([`LaunchPlan`]): first one process per distinct
//! classifier among the variants to run, stopped after the CAM stage (`--until cam`), so
//! variants that share a classifier never train it twice nor wait on one another's lock; then
//! one process per variant; then `collect`, whatever happened to the variants. A new launcher
//! is one file implementing [`Launcher`].

pub mod local;
pub mod slurm;

use std::path::{Path, PathBuf};

use crate::config::Manifest;
use crate::error::{Error, Result};
use crate::runner::{Runner, VariantState};

/// How to call this program again for one piece of the work: the same binary, global options,
/// manifest and `--set` overrides as the launching command.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// This executable.
    pub exe: PathBuf,
    /// `--work-dir`, `--datasets`, `--reports-dir` as absolute paths.
    pub global: Vec<String>,
    /// The manifest (absolute).
    pub manifest: PathBuf,
    /// `--set` values.
    pub sets: Vec<String>,
}

impl Invocation {
    fn base(&self, command: &str) -> Vec<String> {
        let mut a = self.global.clone();
        a.push(command.into());
        a.push(self.manifest.display().to_string());
        for s in &self.sets {
            a.push("--set".into());
            a.push(s.clone());
        }
        a
    }

    /// Arguments of `wsss run` for one variant (up to `until` if given), without its report.
    pub fn run_variant(&self, id: &str, until: Option<&str>) -> Vec<String> {
        let mut a = self.base("run");
        a.extend(["--no-report".into(), "--variant".into(), id.into()]);
        if let Some(u) = until {
            a.extend(["--until".into(), u.into()]);
        }
        a
    }

    /// Arguments of `wsss collect` (experiment files and report from the run directories).
    pub fn collect(&self) -> Vec<String> {
        self.base("collect")
    }
}

/// The work of one launch.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// Experiment name.
    pub experiment: String,
    /// `<work_dir>/<experiment>`.
    pub exp_dir: PathBuf,
    /// Ids of the variants to run, in manifest order.
    pub variants: Vec<String>,
    /// One variant per distinct classifier among them, run to the CAM stage first.
    pub upstream: Vec<String>,
    /// Whether any variant runs on a GPU (`device` other than `cpu`).
    pub gpu: bool,
}

impl LaunchPlan {
    /// The plan of `m`: every variant, or with `resume` only those not done and not in
    /// `skip` (e.g. still queued); grouped by the classify stage's cache key (data is
    /// generated first if it is missing, to know keys).
    pub fn of(
        runner: &Runner,
        m: &Manifest,
        resume: bool,
        skip: &std::collections::BTreeSet<String>,
    ) -> Result<Self> {
        let keys = runner.stage_keys_of(m)?;
        let states = runner.states(m);
        let classify = runner
            .stage_names()
            .iter()
            .position(|s| *s == "classify")
            .ok_or_else(|| Error::stage("launch", "no classify stage"))?;
        let mut variants = Vec::new();
        let mut upstream = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for ((id, k), (_, state, _)) in keys.iter().zip(&states) {
            if resume && (*state == VariantState::Done || skip.contains(id)) {
                continue;
            }
            variants.push(id.clone());
            if seen.insert(k.get(classify).cloned().unwrap_or_default()) {
                upstream.push(id.clone());
            }
        }
        Ok(Self {
            experiment: m.name().into(),
            exp_dir: absolute(runner.work_dir()).join(m.name()),
            variants,
            upstream,
            gpu: m.variants.iter().any(|v| v.config.device != "cpu"),
        })
    }
}

/// A way to run a [`LaunchPlan`].
pub trait Launcher {
    /// Start the plan's work (processes, jobs). Returns `Some(exit code of collect)` when it
    /// has ended — every variant and `collect` finished (`-1` when that code is unknown, as
    /// for a cluster's report job) — or `None` when it was only submitted or printed.
    fn launch(&self, inv: &Invocation, plan: &LaunchPlan) -> Result<Option<i32>>;
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A path made absolute against the current directory (child processes run elsewhere).
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_by_hand() {
        assert_eq!(
            shell_quote("cam.threshold=0.5,train.seed=1"),
            "cam.threshold=0.5,train.seed=1"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("x\"y"), "'x\"y'");
    }

    #[test]
    fn invocations() {
        let inv = Invocation {
            exe: "/bin/wsss".into(),
            global: vec!["--work-dir".into(), "/w".into()],
            manifest: "/m.toml".into(),
            sets: vec!["train.epochs=1".into()],
        };
        assert_eq!(
            inv.run_variant("a=1", Some("cam")),
            [
                "--work-dir",
                "/w",
                "run",
                "/m.toml",
                "--set",
                "train.epochs=1",
                "--no-report",
                "--variant",
                "a=1",
                "--until",
                "cam"
            ]
        );
        assert_eq!(
            inv.collect(),
            [
                "--work-dir",
                "/w",
                "collect",
                "/m.toml",
                "--set",
                "train.epochs=1"
            ]
        );
    }
}
