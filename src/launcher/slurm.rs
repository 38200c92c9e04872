//! `--launcher slurm`: the plan as three dependent SLURM jobs, submitted with `sbatch` — the
//! shared upstream work (an array with one task per distinct classifier, stopped after the
//! CAM stage), the variants (an array with one task per variant, `afterany` the first), and
//! the report (`wsss collect`, `afterany` the array, so it runs and marks failed variants
//! whatever happened). No process waits on the cluster unless `--wait` is given: the jobs
//! themselves carry the experiment to its end.
//!
//! Scripts, the variant lists and `jobs.json` (the job ids) go to
//! `<experiment>/slurm/<time>/`; `<experiment>/slurm/latest.json` points at the last
//! submission for `wsss status`. Task logs: `<experiment>/slurm/<time>/logs/`. Each task
//! `exec`s wsss, so `#SBATCH --signal=B:TERM@120` reaches it: it stops at a safe point, and
//! with `--requeue` a preempted task resumes from its checkpoints when it starts again.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::{shell_quote, Invocation, LaunchPlan, Launcher};
use crate::config::SlurmConfig;
use crate::error::{Error, Result};
use crate::util::fs::{atomic_write, write_json};
use crate::util::out::outln;

/// See the module docs.
pub struct Slurm {
    /// `sbatch` settings (`[launcher.slurm]` with the command line's options over it).
    pub options: SlurmConfig,
    /// Print the scripts and the commands, submit nothing.
    pub dry_run: bool,
    /// Block until the report job has ended; exit with the experiment's status.
    pub wait: bool,
}

/// What `jobs.json` records of one submission.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Submission {
    /// The submission's folder.
    pub dir: PathBuf,
    /// Upstream array job id (absent when nothing was upstream).
    pub upstream: Option<String>,
    /// The variants' array job id.
    pub variants: String,
    /// The report job id.
    pub report: String,
    /// Variant ids in array-task order.
    pub variant_ids: Vec<String>,
}

/// The `#SBATCH` header of a job.
fn header(o: &SlurmConfig, name: &str, logs: &Path, array: Option<(usize, bool)>) -> String {
    let mut h = String::from("#!/bin/bash\n");
    let mut line = |s: String| {
        h.push_str("#SBATCH ");
        h.push_str(&s);
        h.push('\n');
    };
    line(format!("--job-name={name}"));
    match array {
        Some((n, compute)) => {
            let par = o
                .array_parallelism
                .map(|p| format!("%{p}"))
                .unwrap_or_default();
            line(format!("--array=0-{}{par}", n.saturating_sub(1)));
            line(format!("--output=\"{}/%x-%A_%a.log\"", logs.display()));
            if compute {
                if let Some(g) = o.gpus_per_task {
                    line(format!("--gpus-per-task={g}"));
                }
                line("--requeue".into());
                line(format!(
                    "--signal=B:TERM@{}",
                    signal_lead(o.time.as_deref())
                ));
            }
        }
        None => line(format!("--output=\"{}/%x-%j.log\"", logs.display())),
    }
    if let Some(p) = &o.partition {
        line(format!("--partition={p}"));
    }
    if let Some(c) = o.cpus_per_task {
        line(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = &o.mem {
        line(format!("--mem={m}"));
    }
    if let Some(t) = &o.time {
        line(format!("--time={t}"));
    }
    if let Some(a) = &o.account {
        line(format!("--account={a}"));
    }
    for e in &o.extra_sbatch {
        line(e.clone());
    }
    h.push_str("set -euo pipefail\n");
    h
}

/// A command line for a script: the program and its arguments, quoted.
fn command(exe: &Path, args: &[String]) -> String {
    std::iter::once(shell_quote(&exe.display().to_string()))
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The three scripts of a plan: (upstream, variants, report), the upstream one absent when
/// there is nothing upstream.
pub fn scripts(
    o: &SlurmConfig,
    inv: &Invocation,
    plan: &LaunchPlan,
    dir: &Path,
) -> (Option<String>, String, String) {
    let logs = dir.join("logs");
    let name = |what: &str| format!("wsss-{}-{what}", plan.experiment);
    // The task's variant id: line SLURM_ARRAY_TASK_ID + 1 of the list file.
    let task = |list: &str, until: Option<&str>| {
        let exe = command(&inv.exe, &inv.run_variant("__ID__", until));
        format!(
            "id=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {})\nexec {}\n",
            shell_quote(&dir.join(list).display().to_string()),
            exe.replace("__ID__", "\"$id\"")
        )
    };
    let upstream = (!plan.upstream.is_empty()).then(|| {
        header(
            o,
            &name("upstream"),
            &logs,
            Some((plan.upstream.len(), true)),
        ) + &task("upstream.txt", Some("cam"))
    });
    let variants = header(
        o,
        &name("variants"),
        &logs,
        Some((plan.variants.len(), true)),
    ) + &task("variants.txt", None);
    let report = header(o, &name("report"), &logs, None)
        + &format!("exec {}\n", command(&inv.exe, &inv.collect()));
    (upstream, variants, report)
}

/// `sbatch --parsable [dependency] script` → the job id.
fn sbatch(script: &Path, after: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable");
    if let Some(a) = after {
        cmd.arg(format!("--dependency=afterany:{a}"));
    }
    cmd.arg(script);
    let o = cmd
        .output()
        .map_err(|e| Error::Usage(format!("sbatch: {e} (is SLURM installed here?)")))?;
    if !o.status.success() {
        // The scheduler refused the job: its settings (partition, time, …) are bad input.
        return Err(Error::Usage(format!(
            "sbatch {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    let out = String::from_utf8_lossy(&o.stdout);
    // `--parsable` prints `id` or `id;cluster`.
    Ok(out.trim().split(';').next().unwrap_or("").to_string())
}

/// Whether a job is still known to the scheduler as pending or running.
pub fn in_queue(job: &str) -> bool {
    Command::new("squeue")
        .args(["-h", "-j", job, "-o", "%T"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| !l.trim().is_empty())
        })
        .unwrap_or(false)
}

/// The states of a submission's jobs as `squeue` lists them (`JOBID_TASK → STATE`).
pub fn queue_states(s: &Submission) -> Vec<(String, String)> {
    let ids: Vec<&str> = s
        .upstream
        .iter()
        .map(String::as_str)
        .chain([s.variants.as_str(), s.report.as_str()])
        .collect();
    Command::new("squeue")
        // `-r`: one line per array task (`123_4 PENDING`), pending ones included.
        .args(["-h", "-r", "-j", &ids.join(","), "-o", "%i %T"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| {
                    let (a, b) = l.trim().split_once(' ')?;
                    Some((a.to_string(), b.trim().to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Variants of a submission whose task is still queued or running.
pub fn queued_variants(s: &Submission) -> std::collections::BTreeSet<String> {
    let q = queue_states(s);
    s.variant_ids
        .iter()
        .enumerate()
        .filter(|(i, _)| q.iter().any(|(j, _)| *j == format!("{}_{i}", s.variants)))
        .map(|(_, id)| id.clone())
        .collect()
}

/// Seconds of a SLURM `--time` value (`M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`), if it
/// parses.
pub fn time_secs(t: &str) -> Option<u64> {
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, t),
    };
    let p: Vec<u64> = rest
        .split(':')
        .map(|x| x.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    let s = match (t.contains('-'), p.as_slice()) {
        (false, [m]) => m * 60,
        (false, [m, s]) => m * 60 + s,
        (_, [h, m, s]) => h * 3600 + m * 60 + s,
        (true, [h]) => h * 3600,
        (true, [h, m]) => h * 3600 + m * 60,
        _ => return None,
    };
    Some(days * 86400 + s)
}

/// Seconds before the time limit at which a task gets `TERM`: 120, or a tenth of a shorter
/// limit (at least 10), so a short limit does not stop every task at once.
pub fn signal_lead(time: Option<&str>) -> u64 {
    match time.and_then(time_secs) {
        Some(limit) if limit < 1200 => (limit / 10).max(10),
        _ => 120,
    }
}

/// The last submission of an experiment, if any.
pub fn latest(exp_dir: &Path) -> Option<Submission> {
    let b = std::fs::read(exp_dir.join("slurm").join("latest.json")).ok()?;
    serde_json::from_slice(&b).ok()
}

impl Launcher for Slurm {
    fn launch(&self, inv: &Invocation, plan: &LaunchPlan) -> Result<Option<i32>> {
        if plan.variants.is_empty() {
            outln!("slurm: every variant is done or queued; nothing to submit");
            return Ok(Some(-1));
        }
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
        let dir = plan.exp_dir.join("slurm").join(&stamp);
        let (up, var, rep) = scripts(&self.options, inv, plan, &dir);
        if self.dry_run {
            let show = |name: &str, text: &str, after: &str| {
                outln!(
                    "# {}: sbatch --parsable{after} {name}\n{text}",
                    dir.join(name).display()
                );
            };
            if let Some(u) = &up {
                show("upstream.sbatch", u, "");
            }
            show("variants.sbatch", &var, " --dependency=afterany:<upstream>");
            show("report.sbatch", &rep, " --dependency=afterany:<variants>");
            outln!("# --dry-run: nothing submitted");
            return Ok(None);
        }
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| Error::io(&dir, e))?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            atomic_write(&p, text.as_bytes())?;
            Ok(p)
        };
        write("variants.txt", &(plan.variants.join("\n") + "\n"))?;
        write("upstream.txt", &(plan.upstream.join("\n") + "\n"))?;
        let up_id = match &up {
            Some(u) => Some(sbatch(&write("upstream.sbatch", u)?, None)?),
            None => None,
        };
        // A refused later job cancels the earlier ones: nothing is left queued unrecorded.
        let cancel = |ids: &[&Option<String>]| {
            for id in ids.iter().filter_map(|i| i.as_deref()) {
                let _ = Command::new("scancel").arg(id).status();
            }
        };
        let var_id = sbatch(&write("variants.sbatch", &var)?, up_id.as_deref())
            .inspect_err(|_| cancel(&[&up_id]))?;
        let rep_id = sbatch(&write("report.sbatch", &rep)?, Some(&var_id))
            .inspect_err(|_| cancel(&[&up_id, &Some(var_id.clone())]))?;
        let sub = Submission {
            dir: dir.clone(),
            upstream: up_id.clone(),
            variants: var_id.clone(),
            report: rep_id.clone(),
            variant_ids: plan.variants.clone(),
        };
        write_json(&dir.join("jobs.json"), &sub)?;
        write_json(&plan.exp_dir.join("slurm").join("latest.json"), &sub)?;
        outln!(
            "slurm: submitted {} variant(s): upstream {}, variants {}, report {} ({})",
            plan.variants.len(),
            up_id.as_deref().unwrap_or("-"),
            var_id,
            rep_id,
            dir.display()
        );
        if !self.wait {
            return Ok(None);
        }
        while in_queue(&rep_id) {
            crate::util::interrupt::check()?;
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        Ok(Some(-1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_by_hand() {
        let inv = Invocation {
            exe: "/opt/wsss".into(),
            global: vec!["--work-dir".into(), "/w".into()],
            manifest: "/e/m.toml".into(),
            sets: vec![],
        };
        let plan = LaunchPlan {
            experiment: "x".into(),
            exp_dir: "/w/x".into(),
            variants: vec!["a=1".into(), "a=2".into(), "a=3".into()],
            upstream: vec!["a=1".into()],
            gpu: true,
        };
        let o = SlurmConfig {
            partition: Some("gpu".into()),
            gpus_per_task: Some(1),
            array_parallelism: Some(2),
            extra_sbatch: vec!["--qos=long".into()],
            ..SlurmConfig::default()
        };
        let (up, var, rep) = scripts(&o, &inv, &plan, Path::new("/w/x/slurm/t"));
        let var_want = "#!/bin/bash
#SBATCH --job-name=wsss-x-variants
#SBATCH --array=0-2%2
#SBATCH --output=\"/w/x/slurm/t/logs/%x-%A_%a.log\"
#SBATCH --gpus-per-task=1
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --partition=gpu
#SBATCH --qos=long
set -euo pipefail
id=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" /w/x/slurm/t/variants.txt)
exec /opt/wsss --work-dir /w run /e/m.toml --no-report --variant \"$id\"
";
        assert_eq!(var, var_want);
        let up = up.unwrap();
        assert!(up.contains("--array=0-0%2") && up.ends_with("--variant \"$id\" --until cam\n"));
        assert!(rep.contains("--job-name=wsss-x-report") && !rep.contains("--array"));
        assert!(rep.ends_with("exec /opt/wsss --work-dir /w collect /e/m.toml\n"));
    }

    #[test]
    fn time_limits_and_signal_lead_by_hand() {
        assert_eq!(time_secs("90"), Some(5400));
        assert_eq!(time_secs("1:30"), Some(90));
        assert_eq!(time_secs("04:00:00"), Some(14400));
        assert_eq!(time_secs("2-03"), Some(2 * 86400 + 3 * 3600));
        assert_eq!(time_secs("1-00:30"), Some(86400 + 1800));
        assert_eq!(time_secs("1-00:00:05"), Some(86405));
        assert_eq!(time_secs("banana"), None);
        assert_eq!(signal_lead(Some("04:00:00")), 120);
        assert_eq!(signal_lead(Some("00:01:00")), 10);
        assert_eq!(signal_lead(Some("10")), 60);
        assert_eq!(signal_lead(None), 120);
    }
}
