//! The command-line interface: argument definitions (clap) and one function per subcommand.
//!
//! Each command resolves its arguments once (manifest → [`Manifest`], registry, work dir) and
//! then calls the library; it prints results to stdout and returns the exit code.

use crate::util::out::{out, outln};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{self, schema, LoadOptions, Manifest};
use crate::data::{
    self,
    registry::{SynthGenerator, SynthParams},
    Registry,
};
use crate::error::{Error, Result, EXIT_OK, EXIT_RUN_FAILED};
use crate::report::compare::CompareOptions;
use crate::report::{Experiment, ReportOptions};
use crate::runner::{Report, Runner, RunnerOptions, Selection};
use crate::table;

/// Declarative weakly supervised semantic segmentation experiments for histopathology.
///
/// Exit codes: 0 ok, 1 a run failed, 2 bad input (manifest, registry, dataset, arguments).
#[derive(Debug, Parser)]
#[command(name = "wsss", version, about, long_about = None)]
pub struct Cli {
    /// Where caches and run directories are written.
    #[arg(long, global = true, env = "WSSS_WORK_DIR", default_value = "runs")]
    pub work_dir: PathBuf,
    /// Dataset registry (default: the nearest datasets.toml above the manifest, else built-in).
    #[arg(long, global = true, env = "WSSS_DATASETS")]
    pub datasets: Option<PathBuf>,
    /// Where reports are written (`<reports-dir>/<experiment>/index.html`).
    #[arg(
        long,
        global = true,
        env = "WSSS_REPORTS_DIR",
        default_value = "reports"
    )]
    pub reports_dir: PathBuf,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests and print every problem found (exit 2 if any).
    Validate {
        /// Manifest files.
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
        /// Overrides.
        #[command(flatten)]
        ov: Overrides,
    },
    /// Show the variants of a manifest and, per stage, its cache key and whether it is cached.
    Plan {
        /// Manifest file.
        manifest: PathBuf,
        /// Overrides.
        #[command(flatten)]
        ov: Overrides,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run every variant of a manifest.
    Run {
        /// Manifest file.
        manifest: PathBuf,
        /// Overrides.
        #[command(flatten)]
        ov: Overrides,
        /// Recompute every stage; existing run directories are moved aside, not deleted.
        #[arg(long, conflicts_with = "launcher")]
        fresh: bool,
        /// Do not write the report (`<reports-dir>/<experiment>/`) at the end.
        #[arg(long, conflicts_with = "launcher")]
        no_report: bool,
        /// Run only this variant (its id, as `plan` lists it; repeat for several). Other
        /// processes may run the other variants of the experiment at the same time.
        #[arg(long = "variant", value_name = "ID", conflicts_with = "launcher")]
        variants: Vec<String>,
        /// Run only shard i of n (1-based): every n-th variant in manifest order from the i-th,
        /// e.g. one SLURM array task each.
        #[arg(long, value_name = "I/N", conflicts_with_all = ["variants", "launcher"])]
        shard: Option<crate::runner::Shard>,
        /// Stop each variant after this stage (its run directory stays `partial`); launchers
        /// compute shared upstream stages this way.
        #[arg(long, value_name = "STAGE", value_parser = ["data", "classify", "cam", "pseudo", "segment"], conflicts_with = "launcher")]
        until: Option<String>,
        /// How the variants are launched (default: in this process, one after another).
        #[command(flatten)]
        launch: Box<LaunchArgs>,
    },
    /// Rebuild an experiment's experiment.json, results and report from its run directories
    /// (a run that ended without finishing counts as failed); exit 1 if a variant is not done.
    /// What a cluster's report job runs.
    Collect {
        /// Manifest file.
        manifest: PathBuf,
        /// Overrides.
        #[command(flatten)]
        ov: Overrides,
        /// Do not write the report.
        #[arg(long)]
        no_report: bool,
    },
    /// Each variant's state (pending, partial, running, done, failed) from its run directory,
    /// with the SLURM jobs of the last submission.
    Status {
        /// Manifest file.
        manifest: PathBuf,
        /// Overrides.
        #[command(flatten)]
        ov: Overrides,
    },
    /// Write an experiment's report: tables, figures, galleries, index.html and summary.md.
    Report {
        /// The experiment: its manifest (`.toml`), its name under the work dir, or its folder.
        experiment: String,
        /// Output folder (default: `<reports-dir>/<experiment>`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Image ids for the "chosen images" gallery (comma-separated or repeated).
        #[arg(long, value_delimiter = ',')]
        images: Vec<String>,
        /// Rows of the best and worst galleries.
        #[arg(long, default_value_t = 4)]
        gallery_rows: usize,
    },
    /// Compare the variants of one or more experiments in one table (parameters and metrics).
    Compare {
        /// Experiments: manifests (`.toml`), names under the work dir, or folders.
        #[arg(required = true)]
        experiments: Vec<String>,
        /// Show every config key that differs between the rows, not only the swept ones.
        #[arg(long)]
        only_changed: bool,
        /// Sort by a column (a metric sorts best first).
        #[arg(long)]
        sort: Option<String>,
        /// Print CSV instead of an aligned table.
        #[arg(long)]
        csv: bool,
    },
    /// List registered datasets, or summarise one (counts per class, patient and split).
    Datasets {
        /// Dataset name.
        name: Option<String>,
        /// Show the split this manifest makes of the dataset.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Say what was checked: every image and mask is decoded whenever a dataset is read
        /// (by this command, `validate`, `plan` and `run` alike).
        #[arg(long)]
        verify: bool,
    },
    /// Write the synthetic H&E-like dataset to a folder (`root/images/<class>/<patient>/…`).
    Synth {
        /// Output folder (must not exist).
        out: PathBuf,
        /// Patients per class.
        #[arg(long, default_value_t = SynthParams::default().patients_per_class)]
        patients_per_class: u32,
        /// Images per patient.
        #[arg(long, default_value_t = SynthParams::default().images_per_patient)]
        images_per_patient: u32,
        /// Tile size in pixels.
        #[arg(long, default_value_t = SynthParams::default().size)]
        size: u32,
        /// Seed.
        #[arg(long, default_value_t = SynthParams::default().seed)]
        seed: u64,
        /// Generator: `tissue` (gland architecture and nuclear pleomorphism) or `nuclei` (the
        /// first generator: solid dark nuclear masses).
        #[arg(long, default_value = "tissue", value_parser = parse_generator)]
        generator: SynthGenerator,
    },
    /// Segment a folder of new images with the DeepLab V3+ of a finished run.
    Predict {
        /// Run directory (`<work_dir>/<experiment>/<variant>-<hash>`).
        #[arg(long)]
        run: PathBuf,
        /// Folder of images (searched recursively: png, jpg, tif, bmp).
        #[arg(long)]
        images: PathBuf,
        /// Output folder (labels/, overlays/, predictions.csv).
        #[arg(long)]
        out: PathBuf,
        /// Device, overriding the run's (`cpu`, `cuda:N`, `auto`).
        #[arg(long)]
        device: Option<String>,
    },
    /// Print every manifest key with its type, default and meaning.
    Schema,
}

/// How `wsss run` runs the variants: in this process (default), or as separate processes.
#[derive(Debug, Args, Clone, Default)]
pub struct LaunchArgs {
    /// `local`: one process per variant on this machine (`--jobs` at once); `slurm`: SLURM job
    /// arrays (upstream, variants, report), submitted with sbatch.
    #[arg(long, value_parser = ["local", "slurm"])]
    launcher: Option<String>,
    /// local: processes at once.
    #[arg(long, requires = "launcher")]
    jobs: Option<usize>,
    /// Launch only the variants that are not done (failed, missing, or never finished).
    #[arg(long, requires = "launcher")]
    resume: bool,
    /// Print what would run (local: the commands; slurm: the scripts and sbatch commands);
    /// run and submit nothing.
    #[arg(long, requires = "launcher")]
    dry_run: bool,
    /// slurm: wait until the report job has ended; exit 0 if every variant is done, else 1.
    #[arg(long, requires = "launcher")]
    wait: bool,
    /// slurm: --partition.
    #[arg(long, requires = "launcher")]
    partition: Option<String>,
    /// slurm: --gpus-per-task of the variant tasks.
    #[arg(long, requires = "launcher")]
    gpus_per_task: Option<u32>,
    /// slurm: --cpus-per-task.
    #[arg(long, requires = "launcher", value_parser = clap::value_parser!(u32).range(1..))]
    cpus_per_task: Option<u32>,
    /// slurm: --mem (e.g. 16G).
    #[arg(long, requires = "launcher")]
    mem: Option<String>,
    /// slurm: --time (e.g. 04:00:00).
    #[arg(long, requires = "launcher")]
    time: Option<String>,
    /// slurm: at most this many array tasks at once.
    #[arg(long, requires = "launcher", value_parser = clap::value_parser!(u32).range(1..))]
    array_parallelism: Option<u32>,
    /// slurm: --account.
    #[arg(long, requires = "launcher")]
    account: Option<String>,
    /// slurm: a further #SBATCH line, verbatim (repeatable), e.g. --extra-sbatch=--qos=long.
    #[arg(long, requires = "launcher", allow_hyphen_values = true)]
    extra_sbatch: Vec<String>,
}

/// Overrides shared by manifest commands.
#[derive(Debug, Args, Clone, Default)]
pub struct Overrides {
    /// Override a manifest key (highest priority), e.g. --set cam.threshold=0.6. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// Run a parsed command line; returns the process exit code.
pub fn dispatch(cli: Cli) -> Result<i32> {
    crate::util::cpu::select_kernels()?;
    match &cli.command {
        Command::Validate { manifests, ov } => validate(&cli, manifests, ov),
        Command::Predict {
            run,
            images,
            out,
            device,
        } => predict(run, images, out, device.as_deref()),
        Command::Plan { manifest, ov, json } => plan(&cli, manifest, ov, *json),
        Command::Run {
            manifest,
            ov,
            fresh,
            no_report,
            variants,
            shard,
            until,
            launch,
        } => match &launch.launcher {
            Some(l) => launch_run(&cli, manifest, ov, l, launch),
            None => run(
                &cli,
                manifest,
                ov,
                *fresh,
                !*no_report && until.is_none(),
                &Selection::of(variants, *shard),
                until.clone(),
            ),
        },
        Command::Collect {
            manifest,
            ov,
            no_report,
        } => collect(&cli, manifest, ov, !*no_report),
        Command::Status { manifest, ov } => status(&cli, manifest, ov),
        Command::Report {
            experiment,
            out,
            images,
            gallery_rows,
        } => {
            let opts = ReportOptions {
                images: images.clone(),
                gallery_rows: *gallery_rows,
            };
            report(&cli, experiment, out.as_deref(), &opts)
        }
        Command::Compare {
            experiments,
            only_changed,
            sort,
            csv,
        } => compare(&cli, experiments, *only_changed, sort.clone(), *csv),
        Command::Datasets {
            name,
            manifest,
            verify,
        } => datasets(&cli, name.as_deref(), manifest.as_deref(), *verify),
        Command::Synth {
            out,
            patients_per_class,
            images_per_patient,
            size,
            seed,
            generator,
        } => {
            let p = SynthParams {
                generator: *generator,
                patients_per_class: *patients_per_class,
                images_per_patient: *images_per_patient,
                size: *size,
                seed: *seed,
            };
            synth(out, &p)
        }
        Command::Schema => {
            out!("{}", schema_text());
            Ok(EXIT_OK)
        }
    }
}

fn load(path: &Path, ov: &Overrides) -> Result<Manifest> {
    Ok(config::load(path, &LoadOptions::from_env(ov.sets.clone()))?)
}

fn registry(cli: &Cli, near: &Path) -> Result<Registry> {
    let start = near
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Registry::discover(cli.datasets.as_deref(), start)
}

fn runner(cli: &Cli, manifest: &Path, fresh: bool) -> Result<Runner> {
    let opts = RunnerOptions {
        work_dir: cli.work_dir.clone(),
        fresh,
        crash_at: std::env::var("WSSS_CRASH_AT")
            .ok()
            .filter(|s| !s.is_empty()),
        until: None,
        fail_variant: std::env::var("WSSS_FAIL_VARIANT")
            .ok()
            .filter(|s| !s.is_empty()),
    };
    Ok(Runner::new(opts, registry(cli, manifest)?))
}

fn validate(cli: &Cli, manifests: &[PathBuf], ov: &Overrides) -> Result<i32> {
    let mut all = Vec::new();
    for path in manifests {
        let r = load(path, ov).and_then(|m| {
            let notes = runner(cli, path, false)?.check(&m)?;
            Ok((m, notes))
        });
        match r {
            Ok((m, notes)) => {
                outln!(
                    "ok: {} — experiment `{}`, {} variant(s)",
                    path.display(),
                    m.name(),
                    m.variants.len()
                );
                for n in notes {
                    outln!("  note: {n}");
                }
            }
            Err(Error::Config(e)) => all.extend(e.0),
            Err(e) => return Err(e),
        }
    }
    if all.is_empty() {
        Ok(EXIT_OK)
    } else {
        Err(config::ConfigErrors(all).into())
    }
}

fn print_report(r: &Report, with_time: bool) {
    let stage_names: Vec<String> = r
        .variants
        .iter()
        .find(|v| !v.stages.is_empty())
        .map(|v| v.stages.iter().map(|s| s.stage.clone()).collect())
        .unwrap_or_default();
    let mut headers: Vec<&str> = vec!["variant", "hash"];
    headers.extend(stage_names.iter().map(String::as_str));
    headers.push("run dir");
    let rows: Vec<Vec<String>> = r
        .variants
        .iter()
        .map(|v| {
            let mut row = vec![v.id.clone(), v.hash.clone()];
            if let Some(e) = &v.error {
                row.extend(stage_names.iter().map(|_| "failed".to_string()));
                row.push(e.clone());
                return row;
            }
            for s in &v.stages {
                let k = s.key.as_deref().map(|k| &k[..8]).unwrap_or("?");
                row.push(if with_time && s.state == "ran" {
                    format!("{} {k} {:.1}s", s.state, s.seconds)
                } else {
                    format!("{} {k}", s.state)
                });
            }
            row.push(v.run_dir.display().to_string());
            row
        })
        .collect();
    outln!(
        "experiment `{}`: {} variant(s)",
        r.experiment,
        r.variants.len()
    );
    out!("{}", table::text(&headers, &rows));
    for (stage, distinct, n) in r.sharing() {
        outln!("stage {stage}: {distinct} distinct computation(s) for {n} variant(s)");
    }
    for n in &r.notes {
        outln!("note: {n}");
    }
}

fn plan(cli: &Cli, manifest: &Path, ov: &Overrides, json: bool) -> Result<i32> {
    let m = load(manifest, ov)?;
    let report = runner(cli, manifest, false)?.plan(&m)?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_report(&report, false);
    }
    Ok(EXIT_OK)
}

#[allow(clippy::too_many_arguments)]
fn run(
    cli: &Cli,
    manifest: &Path,
    ov: &Overrides,
    fresh: bool,
    with_report: bool,
    selection: &Selection,
    until: Option<String>,
) -> Result<i32> {
    let m = load(manifest, ov)?;
    // From here a first Ctrl-C / SIGTERM stops at a safe point (exit 130 / 143).
    crate::util::interrupt::install().map_err(|e| Error::Usage(format!("signal handlers: {e}")))?;
    let mut runner = runner(cli, manifest, fresh)?;
    runner.set_until(until);
    let report = runner.run(&m, selection)?;
    print_report(&report, true);
    if with_report {
        write_report(cli, &runner, &m)?;
    }
    let ran = report.ran();
    outln!(
        "{ran} stage run(s), {} cached",
        report
            .variants
            .iter()
            .map(|v| v.stages.len())
            .sum::<usize>()
            - ran
    );
    Ok(if report.failed() {
        EXIT_RUN_FAILED
    } else {
        EXIT_OK
    })
}

/// `wsss run --launcher …`: the variants as separate processes or SLURM jobs.
fn launch_run(
    cli: &Cli,
    manifest: &Path,
    ov: &Overrides,
    which: &str,
    a: &LaunchArgs,
) -> Result<i32> {
    use crate::launcher::{absolute, local::Local, slurm, Invocation, LaunchPlan, Launcher};
    let slurm_only = [
        ("--partition", a.partition.is_some()),
        ("--gpus-per-task", a.gpus_per_task.is_some()),
        ("--cpus-per-task", a.cpus_per_task.is_some()),
        ("--mem", a.mem.is_some()),
        ("--time", a.time.is_some()),
        ("--array-parallelism", a.array_parallelism.is_some()),
        ("--account", a.account.is_some()),
        ("--extra-sbatch", !a.extra_sbatch.is_empty()),
        ("--wait", a.wait),
    ];
    let wrong: Vec<&str> = match which {
        "local" => slurm_only.iter().filter(|x| x.1).map(|x| x.0).collect(),
        _ => a.jobs.map(|_| "--jobs").into_iter().collect(),
    };
    if !wrong.is_empty() {
        return Err(Error::Usage(format!(
            "{} cannot be used with --launcher {which}",
            wrong.join(", ")
        )));
    }
    let m = load(manifest, ov)?;
    crate::util::interrupt::install().map_err(|e| Error::Usage(format!("signal handlers: {e}")))?;
    let runner = runner(cli, manifest, false)?;
    // With --resume, variants whose task of the last submission is still queued or running
    // are not submitted again.
    let exp_dir = runner.work_dir().join(m.name());
    let queued: std::collections::BTreeSet<String> = if a.resume && which == "slurm" {
        slurm::latest(&exp_dir)
            .map(|s| slurm::queued_variants(&s))
            .unwrap_or_default()
    } else {
        Default::default()
    };
    let plan = LaunchPlan::of(&runner, &m, a.resume, &queued)?;
    let mut global = vec![
        "--work-dir".to_string(),
        absolute(&cli.work_dir).display().to_string(),
        "--reports-dir".into(),
        absolute(&cli.reports_dir).display().to_string(),
    ];
    if let Some(d) = &cli.datasets {
        global.extend(["--datasets".into(), absolute(d).display().to_string()]);
    }
    let inv = Invocation {
        exe: std::env::current_exe()
            .map_err(|e| Error::Usage(format!("this program's path: {e}")))?,
        global,
        manifest: absolute(manifest),
        sets: ov.sets.clone(),
    };
    // `[launcher.slurm]` of the manifest, each setting overridden by its option.
    let default = crate::config::SlurmConfig::default();
    let mf = m
        .variants
        .first()
        .map_or(&default, |v| &v.config.launcher.slurm);
    let launcher: Box<dyn Launcher> = match which {
        "local" => Box::new(Local {
            jobs: a.jobs.unwrap_or(2).max(1),
            dry_run: a.dry_run,
        }),
        _ => Box::new(slurm::Slurm {
            options: crate::config::SlurmConfig {
                partition: a.partition.clone().or_else(|| mf.partition.clone()),
                gpus_per_task: a.gpus_per_task.or(mf.gpus_per_task),
                cpus_per_task: a.cpus_per_task.or(mf.cpus_per_task),
                mem: a.mem.clone().or_else(|| mf.mem.clone()),
                time: a.time.clone().or_else(|| mf.time.clone()),
                array_parallelism: a.array_parallelism.or(mf.array_parallelism),
                account: a.account.clone().or_else(|| mf.account.clone()),
                extra_sbatch: mf
                    .extra_sbatch
                    .iter()
                    .chain(&a.extra_sbatch)
                    .cloned()
                    .collect(),
            },
            dry_run: a.dry_run,
            wait: a.wait,
        }),
    };
    outln!(
        "{which}: {} variant(s) to run, {} distinct classifier(s) first",
        plan.variants.len(),
        plan.upstream.len()
    );
    match launcher.launch(&inv, &plan)? {
        // Submitted or printed only.
        None => Ok(EXIT_OK),
        // Ended: `collect` printed the states; its status and the run directories' agree.
        Some(code) if which == "local" => Ok(code),
        Some(_) => Ok(print_states(&runner, &m)),
    }
}

/// Print each variant's state; the exit code of the experiment (1 if one is not done).
fn print_states(runner: &Runner, m: &Manifest) -> i32 {
    let states = runner.states(m);
    let sub = crate::launcher::slurm::latest(&runner.work_dir().join(m.name()));
    let queue = sub
        .as_ref()
        .map(crate::launcher::slurm::queue_states)
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = states
        .iter()
        .map(|(id, st, err)| {
            let job = sub
                .as_ref()
                .and_then(|s| {
                    let i = s.variant_ids.iter().position(|v| v == id)?;
                    let task = format!("{}_{i}", s.variants);
                    let q = queue
                        .iter()
                        .find(|(j, _)| *j == task)
                        .map(|(_, q)| format!(" {q}"))
                        .unwrap_or_default();
                    Some(format!("{task}{q}"))
                })
                .unwrap_or_default();
            vec![
                id.clone(),
                st.as_str().to_string(),
                job,
                err.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out!(
        "{}",
        table::text(&["variant", "state", "slurm job", "detail"], &rows)
    );
    let done = states
        .iter()
        .filter(|(_, s, _)| *s == crate::runner::VariantState::Done)
        .count();
    outln!("{done} of {} variant(s) done", states.len());
    if done == states.len() {
        EXIT_OK
    } else {
        EXIT_RUN_FAILED
    }
}

/// Build the experiment's report from its files (`<reports-dir>/<experiment>/`).
fn write_report(cli: &Cli, runner: &Runner, m: &Manifest) -> Result<()> {
    let exp = Experiment::load(&cli.work_dir.join(m.name()))?;
    let w = crate::report::build(
        &exp,
        Some(runner.registry()),
        &cli.reports_dir.join(m.name()),
        &ReportOptions::default(),
    )?;
    outln!("report: {}", w.dir.join("index.html").display());
    Ok(())
}

fn collect(cli: &Cli, manifest: &Path, ov: &Overrides, with_report: bool) -> Result<i32> {
    let m = load(manifest, ov)?;
    let runner = runner(cli, manifest, false)?;
    let (_, not_done) = runner.collect(&m)?;
    if with_report {
        write_report(cli, &runner, &m)?;
    }
    Ok(print_states(&runner, &m).max(if not_done.is_empty() {
        EXIT_OK
    } else {
        EXIT_RUN_FAILED
    }))
}

fn status(cli: &Cli, manifest: &Path, ov: &Overrides) -> Result<i32> {
    let m = load(manifest, ov)?;
    let runner = runner(cli, manifest, false)?;
    print_states(&runner, &m);
    Ok(EXIT_OK)
}

fn datasets(cli: &Cli, name: Option<&str>, manifest: Option<&Path>, verify: bool) -> Result<i32> {
    let reg = registry(cli, manifest.unwrap_or(Path::new("./x")))?;
    let Some(name) = name else {
        outln!("registry: {}", reg.source);
        let rows: Vec<Vec<String>> = reg
            .entries
            .values()
            .map(|s| {
                let state = if s.root.exists() {
                    "present"
                } else if s.synth.is_some() {
                    "generated on first use"
                } else {
                    "missing"
                };
                vec![
                    s.name.clone(),
                    s.classes.join("/"),
                    s.root.display().to_string(),
                    state.into(),
                    s.description.clone(),
                ]
            })
            .collect();
        out!(
            "{}",
            table::text(&["name", "classes", "root", "state", "description"], &rows)
        );
        return Ok(EXIT_OK);
    };
    let spec = reg.get(name).ok_or_else(|| {
        Error::Usage(format!(
            "dataset `{name}` is not registered in {} (registered: {})",
            reg.source,
            reg.names().join(", ")
        ))
    })?;
    // Every command that reads a dataset checks all of it (every file decoded, every mask
    // read as stored): one verdict everywhere. `--verify` says so in its output.
    let idx = data::open(spec)?;
    if verify {
        outln!(
            "all {} images and masks decode; masks are label maps of the registry's encoding \
             and match their images' sizes",
            idx.samples.len()
        );
    }
    outln!("dataset `{name}` at {}", spec.root.display());
    outln!(
        "{} images, {} patients, fingerprint {}",
        idx.samples.len(),
        idx.patients().len(),
        &idx.fingerprint[..16]
    );
    let assign = match manifest {
        Some(mp) => {
            let m = load(mp, &Overrides::default())?;
            let v = &m.variants[0];
            Some(data::split::assign(
                &idx,
                &v.config.split,
                &m.source_of(v, "split.method"),
            )?)
        }
        None => None,
    };
    let mut rows = Vec::new();
    for p in idx.patients() {
        let mut row = vec![p.to_string()];
        for ci in 0..spec.classes.len() {
            row.push(
                idx.samples
                    .iter()
                    .filter(|s| s.patient == p && s.class == ci)
                    .count()
                    .to_string(),
            );
        }
        if let Some(a) = &assign {
            row.push(a.get(p).map(|s| s.to_string()).unwrap_or_default());
        }
        rows.push(row);
    }
    let mut headers: Vec<&str> = vec!["patient"];
    headers.extend(spec.classes.iter().map(String::as_str));
    if assign.is_some() {
        headers.push("split");
    }
    out!("{}", table::text(&headers, &rows));
    let counts = idx.class_counts();
    outln!(
        "total: {}",
        counts
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(a) = &assign {
        for split in [
            data::Split::Train,
            data::Split::Valid,
            data::Split::Test,
            data::Split::Excluded,
        ] {
            let n: Vec<String> = spec
                .classes
                .iter()
                .enumerate()
                .map(|(ci, c)| {
                    format!(
                        "{c} {}",
                        idx.samples
                            .iter()
                            .filter(|s| s.class == ci && a.get(&s.patient) == Some(&split))
                            .count()
                    )
                })
                .collect();
            let pats = a.values().filter(|s| **s == split).count();
            if pats > 0 {
                outln!("{split}: {pats} patient(s); images {}", n.join(", "));
            }
        }
    }
    Ok(EXIT_OK)
}

/// `--generator` of `wsss synth`: the registry's names for [`SynthGenerator`].
fn parse_generator(s: &str) -> std::result::Result<SynthGenerator, String> {
    match s {
        "tissue" => Ok(SynthGenerator::Tissue),
        "nuclei" => Ok(SynthGenerator::Nuclei),
        _ => Err(format!(
            "`{s}` is not a generator (allowed: tissue, nuclei)"
        )),
    }
}

fn synth(out: &Path, p: &SynthParams) -> Result<i32> {
    if out.exists() {
        return Err(Error::Usage(format!(
            "{} already exists: choose a new folder",
            out.display()
        )));
    }
    if p.patients_per_class < 2 || p.images_per_patient < 1 || p.size < 32 {
        return Err(Error::Usage(
            "need --patients-per-class ≥ 2, --images-per-patient ≥ 1 and --size ≥ 32".into(),
        ));
    }
    let classes = vec!["normal".to_string(), "malignant".to_string()];
    data::synth::ensure(out, &classes, p)?;
    outln!(
        "wrote {} images ({} patients per class) to {}",
        2 * p.patients_per_class * p.images_per_patient,
        p.patients_per_class,
        out.display()
    );
    outln!("register it in datasets.toml with layout = \"folder\", masks_dir = \"masks\", classes = [\"normal\", \"malignant\"]");
    Ok(EXIT_OK)
}

/// The manifest reference: every key, its type and default.
pub fn schema_text() -> String {
    let v = schema::default_values();
    let rows: Vec<Vec<String>> = schema::FIELDS
        .iter()
        .map(|f| {
            let mut cur = Some(&v);
            for part in f.key.split('.') {
                cur = cur.and_then(|c| c.get(part));
            }
            let def = cur
                .map(|c| c.to_string())
                .unwrap_or_else(|| "(unset)".into());
            vec![f.key.to_string(), f.kind.describe(), def, f.doc.to_string()]
        })
        .collect();
    table::text(&["key", "allowed", "default", "meaning"], &rows)
}

fn predict(run: &Path, images: &Path, out: &Path, device: Option<&str>) -> Result<i32> {
    let r = crate::runner::predict_folder(run, images, out, device)?;
    outln!(
        "segmented {} image(s) into {} in {:.1}s",
        r.images,
        out.display(),
        r.seconds
    );
    for (p, e) in &r.failed {
        outln!("skipped {}: {e}", p.display());
    }
    Ok(if r.failed.is_empty() {
        EXIT_OK
    } else {
        EXIT_RUN_FAILED
    })
}

/// Resolve an experiment argument: a manifest file, a folder holding `experiment.json`, or a
/// name under the work dir. Returns the experiment folder and the registry to use.
fn experiment_dir(cli: &Cli, arg: &str) -> Result<(PathBuf, Option<Registry>)> {
    let p = Path::new(arg);
    if p.extension().is_some_and(|e| e == "toml") && p.is_file() {
        let m = load(p, &Overrides::default())?;
        return Ok((cli.work_dir.join(m.name()), registry(cli, p).ok()));
    }
    // not a manifest: the registry is found from the working directory
    let reg = Registry::discover(cli.datasets.as_deref(), Path::new(".")).ok();
    if p.join("experiment.json").is_file() {
        return Ok((p.to_path_buf(), reg));
    }
    let d = cli.work_dir.join(arg);
    if d.join("experiment.json").is_file() {
        return Ok((d, reg));
    }
    let known: Vec<String> = std::fs::read_dir(&cli.work_dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("experiment.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    Err(Error::Usage(format!(
        "no experiment `{arg}`: not a manifest, not a folder with experiment.json, and not under {} \
         (experiments there: {})",
        cli.work_dir.display(),
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )))
}

fn report(cli: &Cli, experiment: &str, out: Option<&Path>, opts: &ReportOptions) -> Result<i32> {
    let (dir, reg) = experiment_dir(cli, experiment)?;
    let exp = Experiment::load(&dir)?;
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cli.reports_dir.join(&exp.name));
    let w = crate::report::build(&exp, reg.as_ref(), &out, opts)?;
    outln!(
        "report of `{}`: {} variant(s), {} figure(s), {} galler(ies) → {}",
        exp.name,
        w.variants,
        w.figures,
        w.galleries,
        w.dir.join("index.html").display()
    );
    Ok(EXIT_OK)
}

fn compare(
    cli: &Cli,
    experiments: &[String],
    only_changed: bool,
    sort: Option<String>,
    csv: bool,
) -> Result<i32> {
    let mut exps = Vec::new();
    for e in experiments {
        let (dir, _) = experiment_dir(cli, e)?;
        exps.push(Experiment::load(&dir)?);
    }
    let c = crate::report::compare::compare(&exps, &CompareOptions { only_changed, sort })?;
    if csv {
        // Built in memory, printed like every other output (a closed pipe ends it quietly).
        let mut w = csv::Writer::from_writer(Vec::new());
        let io = |e: csv::Error| Error::io("stdout", std::io::Error::other(e));
        w.write_record(&c.headers).map_err(io)?;
        for r in &c.rows {
            w.write_record(r).map_err(io)?;
        }
        let bytes = w
            .into_inner()
            .map_err(|e| Error::io("stdout", std::io::Error::other(e.to_string())))?;
        out!("{}", String::from_utf8_lossy(&bytes));
    } else {
        let h: Vec<&str> = c.headers.iter().map(String::as_str).collect();
        out!("{}", table::text(&h, &c.rows));
    }
    Ok(EXIT_OK)
}
