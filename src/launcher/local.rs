//! `--launcher local --jobs N`: the plan's processes on this machine, at most `N` at once — for
//! a workstation with several GPUs or many cores. Each process's output is appended to
//! `<experiment>/logs/<phase>-<n>-<variant>.log` (`n` its place in the plan, so long ids that
//! share a prefix never share a file); with a GPU device, process slot `k` sees GPU `k mod G`
//! only (`CUDA_VISIBLE_DEVICES`; G from the inherited `CUDA_VISIBLE_DEVICES` list, else `N`),
//! so `cuda:0` inside each process is its own GPU. A SIGINT/SIGTERM to the launcher is passed
//! to its processes, which stop at a safe point; it waits for them, then exits as they do.

use std::process::{Child, Command, Stdio};

use super::{Invocation, LaunchPlan, Launcher};
use crate::error::{Error, Result};
use crate::util::out::outln;

/// See the module docs.
pub struct Local {
    /// Processes at once.
    pub jobs: usize,
    /// Print the commands, run nothing.
    pub dry_run: bool,
}

impl Local {
    /// The GPU ids processes are spread over.
    fn gpus(&self) -> Vec<String> {
        match std::env::var("CUDA_VISIBLE_DEVICES") {
            Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
            _ => (0..self.jobs.max(1)).map(|i| i.to_string()).collect(),
        }
    }

    /// Run `work` (argument lists) with at most `jobs` children at once; returns how many
    /// exited non-zero.
    fn pool(
        &self,
        inv: &Invocation,
        plan: &LaunchPlan,
        work: &[(String, Vec<String>)],
    ) -> Result<usize> {
        let logs = plan.exp_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
        let gpus = self.gpus();
        let mut running: Vec<(usize, String, Child)> = Vec::new();
        let mut failed = 0;
        let mut next = 0;
        let mut free: Vec<usize> = (0..self.jobs.max(1)).rev().collect();
        while next < work.len() || !running.is_empty() {
            while next < work.len() && !free.is_empty() {
                let slot = free.pop().unwrap_or(0);
                let (name, args) = &work[next];
                let log = logs.join(format!("{}.log", sanitize(name)));
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .map_err(|e| Error::io(&log, e))?;
                let err = out.try_clone().map_err(|e| Error::io(&log, e))?;
                let mut cmd = Command::new(&inv.exe);
                cmd.args(args)
                    .stdout(Stdio::from(out))
                    .stderr(Stdio::from(err));
                if plan.gpu {
                    cmd.env("CUDA_VISIBLE_DEVICES", &gpus[slot % gpus.len()]);
                }
                let child = cmd.spawn().map_err(|e| Error::io(&inv.exe, e))?;
                tracing::info!("local: started {name} (log {})", log.display());
                running.push((slot, name.clone(), child));
                next += 1;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            if let Some(sig) = crate::util::interrupt::received() {
                // Pass the signal on, let every process reach its safe point, then stop.
                for (_, _, c) in &running {
                    // SAFETY: kill(2) on our own child's pid; no memory is touched.
                    unsafe {
                        libc::kill(c.id() as libc::pid_t, sig);
                    }
                }
                for (_, _, c) in &mut running {
                    let _ = c.wait();
                }
                return Err(Error::Interrupted { signal: sig });
            }
            let mut i = 0;
            while i < running.len() {
                let status = running[i]
                    .2
                    .try_wait()
                    .map_err(|e| Error::io(&inv.exe, e))?;
                if let Some(st) = status {
                    let (slot, name, _) = running.swap_remove(i);
                    free.push(slot);
                    if st.success() {
                        tracing::info!("local: {name} done");
                    } else {
                        failed += 1;
                        tracing::warn!("local: {name} exited with {st}");
                    }
                } else {
                    i += 1;
                }
            }
        }
        Ok(failed)
    }
}

/// A log file name for a piece of work.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "=.,_-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect()
}

impl Launcher for Local {
    fn launch(&self, inv: &Invocation, plan: &LaunchPlan) -> Result<Option<i32>> {
        let up: Vec<(String, Vec<String>)> = plan
            .upstream
            .iter()
            .enumerate()
            .map(|(i, id)| {
                (
                    format!("upstream-{i}-{id}"),
                    inv.run_variant(id, Some("cam")),
                )
            })
            .collect();
        if !self.dry_run {
            // A failed upstream process fails its variants too; they say why, so go on.
            self.pool(inv, plan, &up)?;
        }
        let vs: Vec<(String, Vec<String>)> = plan
            .variants
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("variant-{i}-{id}"), inv.run_variant(id, None)))
            .collect();
        if self.dry_run {
            let exe = super::shell_quote(&inv.exe.display().to_string());
            let line = |a: &[String]| {
                let q: Vec<String> = a.iter().map(|x| super::shell_quote(x)).collect();
                format!("{exe} {}", q.join(" "))
            };
            outln!("# {} at once, upstream first:", self.jobs);
            for (_, a) in up.iter().chain(&vs) {
                outln!("{}", line(a));
            }
            outln!("{}", line(&inv.collect()));
            outln!("# --dry-run: nothing run");
            return Ok(None);
        }
        self.pool(inv, plan, &vs)?;
        // `collect` prints the states; its status is the experiment's.
        let st = Command::new(&inv.exe)
            .args(inv.collect())
            .status()
            .map_err(|e| Error::io(&inv.exe, e))?;
        Ok(Some(st.code().unwrap_or(1)))
    }
}
