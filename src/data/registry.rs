//! The dataset registry: `datasets.toml` maps names to folders or CSV indexes on disk.
//!
//! Raw entries are parsed with line/column errors, then resolved once into [`DatasetSpec`]
//! (paths expanded and made absolute, classes checked), which the scanner consumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The registry shipped with wsss; used when no `datasets.toml` is found, so the quickstart
/// runs from any folder. Relative roots then resolve against the working directory.
pub const EMBEDDED_REGISTRY: &str = include_str!("../../datasets.toml");

/// How images (and masks) are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutKind {
    /// `root/<images_dir>/<class>/<patient>/<image>`, masks in a parallel tree.
    Folder,
    /// A CSV index with image path, class, patient id and optional mask path.
    Csv,
    /// The built-in synthetic generator writes a `folder` layout on first use.
    Synthetic,
}

/// How mask pixel values encode the foreground.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskEncoding {
    /// Two values; anything > 0 is foreground.
    Binary,
    /// Pixel value = class index (0 background, 1 foreground, 255 ignore).
    Index,
    /// Instance ids: 0 background, 1..N one object each; > 0 is foreground.
    Instance,
}

/// What the mask of a negative-class image means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NegativeMasks {
    /// All background (the talk's protocol: only the positive class is foreground).
    Background,
    /// Use the mask as drawn (e.g. gland vs background on every image).
    AsIs,
}

/// Which synthetic generator draws the tiles (`synth.generator`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SynthGenerator {
    /// Malignant regions told apart by gland architecture and nuclear pleomorphism, with
    /// lymphocyte clusters and dense crypts in both classes (a colour threshold is fooled).
    #[default]
    Tissue,
    /// The first generator (version 1): malignant regions are solid dark nuclear masses that a
    /// haematoxylin threshold finds by construction. Kept for tests that depend on it.
    Nuclei,
}

/// Parameters of the synthetic generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthParams {
    /// Generator: `tissue` (default) or `nuclei` (the first one).
    pub generator: SynthGenerator,
    /// Patients per class.
    pub patients_per_class: u32,
    /// Images per patient.
    pub images_per_patient: u32,
    /// Tile size in pixels (square).
    pub size: u32,
    /// Generator seed.
    pub seed: u64,
}

impl Default for SynthParams {
    fn default() -> Self {
        Self {
            generator: SynthGenerator::Tissue,
            patients_per_class: 6,
            images_per_patient: 8,
            size: 128,
            seed: 7,
        }
    }
}

/// One raw `[name]` entry of `datasets.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    layout: LayoutKind,
    root: String,
    classes: Vec<String>,
    positive_class: Option<String>,
    #[serde(default = "default_encoding")]
    mask_encoding: MaskEncoding,
    #[serde(default = "default_negative")]
    negative_masks: NegativeMasks,
    lossy_mask_threshold: Option<u8>,
    #[serde(default)]
    description: String,
    // folder layout
    #[serde(default = "default_images_dir")]
    images_dir: String,
    masks_dir: Option<String>,
    #[serde(default)]
    mask_suffix: String,
    // csv layout
    index: Option<String>,
    #[serde(default)]
    columns: Columns,
    // synthetic
    #[serde(default)]
    synth: SynthParams,
}

fn default_encoding() -> MaskEncoding {
    MaskEncoding::Binary
}
fn default_negative() -> NegativeMasks {
    NegativeMasks::Background
}
fn default_images_dir() -> String {
    "images".into()
}

/// Column names of a CSV index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    /// Image id (optional column; the image file stem otherwise).
    pub id: String,
    /// Image path, relative to the dataset root.
    pub image: String,
    /// Class name.
    pub class: String,
    /// Patient id.
    pub patient: String,
    /// Mask path (optional column).
    pub mask: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            id: "id".into(),
            image: "image".into(),
            class: "class".into(),
            patient: "patient".into(),
            mask: "mask".into(),
        }
    }
}

/// Layout-specific settings of a resolved dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Layout {
    /// Folder tree.
    Folder {
        /// Folder of `<class>/<patient>/<image>` under the root.
        images_dir: PathBuf,
        /// Parallel mask tree, if any. When the registry leaves `masks_dir` unset and a
        /// `masks/` folder stands beside the images folder, that folder is used (and said so);
        /// `masks_dir = ""` declares that the dataset has no masks.
        masks_dir: Option<PathBuf>,
        /// Whether `masks_dir` was found beside the images rather than declared.
        masks_inferred: bool,
        /// Appended to the image stem to name its mask (`_anno`).
        mask_suffix: String,
    },
    /// CSV index.
    Csv {
        /// The index file.
        index: PathBuf,
        /// Its column names.
        columns: Columns,
    },
}

/// A resolved registry entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetSpec {
    /// Registry name.
    pub name: String,
    /// Absolute (or working-directory-relative) root folder.
    pub root: PathBuf,
    /// Class names; index 0 is the negative class.
    pub classes: Vec<String>,
    /// Index of the positive (foreground) class.
    pub positive: usize,
    /// How masks encode the foreground.
    pub mask_encoding: MaskEncoding,
    /// What negative-class masks mean.
    pub negative_masks: NegativeMasks,
    /// Masks in a lossy format (JPEG) are refused unless this is set: a pixel is foreground
    /// when its stored value is above it.
    pub lossy_mask_threshold: Option<u8>,
    /// File layout.
    pub layout: Layout,
    /// Generator parameters, for synthetic entries.
    pub synth: Option<SynthParams>,
    /// Free text.
    pub description: String,
}

/// All registered datasets.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Where the registry came from (a path, or "built-in registry").
    pub source: String,
    /// Entries by name.
    pub entries: BTreeMap<String, DatasetSpec>,
}

impl Registry {
    /// Load a registry file.
    pub fn load(path: &Path) -> Result<Registry> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// The built-in registry, relative to the working directory.
    pub fn embedded() -> Result<Registry> {
        Self::parse(EMBEDDED_REGISTRY, "built-in registry", Path::new("."))
    }

    /// Find the registry: `explicit`, else the first `datasets.toml` in `start` or its
    /// ancestors, else the built-in one.
    pub fn discover(explicit: Option<&Path>, start: &Path) -> Result<Registry> {
        if let Some(p) = explicit {
            return Self::load(p);
        }
        let start = start.canonicalize().unwrap_or_else(|_| start.to_path_buf());
        for dir in start.ancestors() {
            let cand = dir.join("datasets.toml");
            if cand.is_file() {
                return Self::load(&cand);
            }
        }
        Self::embedded()
    }

    /// Parse registry text; relative roots resolve against `base`.
    pub fn parse(text: &str, source: &str, base: &Path) -> Result<Registry> {
        let raw: BTreeMap<String, RawEntry> =
            toml::from_str(text).map_err(|e: toml::de::Error| {
                let at = e
                    .span()
                    .map(|s| {
                        let before = &text[..s.start.min(text.len())];
                        format!(
                            ":{}:{}",
                            before.matches('\n').count() + 1,
                            before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1
                        )
                    })
                    .unwrap_or_default();
                Error::dataset(format!("{source}{at}: {}", e.message()))
            })?;
        let mut errs = Vec::new();
        let mut entries = BTreeMap::new();
        for (name, r) in raw {
            match resolve(&name, r, base) {
                Ok(spec) => {
                    entries.insert(name, spec);
                }
                Err(m) => errs.push(format!("{source}: [{name}]: {m}")),
            }
        }
        if !errs.is_empty() {
            return Err(Error::Dataset(errs));
        }
        Ok(Registry {
            source: source.to_string(),
            entries,
        })
    }

    /// Look up a dataset, or explain which names exist.
    pub fn get(&self, name: &str) -> Option<&DatasetSpec> {
        self.entries.get(name)
    }

    /// Registered names.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }
}

/// Expand `${VAR}` and `${VAR:-default}` from the environment.
pub fn expand_env(s: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find('}') else {
            return Err(format!("unclosed `${{` in `{s}`"));
        };
        let inner = &after[..j];
        let (var, default) = match inner.split_once(":-") {
            Some((v, d)) => (v, Some(d)),
            None => (inner, None),
        };
        match (std::env::var(var).ok().filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!("environment variable {var} is not set (in `{s}`)"))
            }
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve(name: &str, r: RawEntry, base: &Path) -> std::result::Result<DatasetSpec, String> {
    let root = base.join(expand_env(&r.root)?);
    if r.classes.len() < 2 {
        return Err(format!(
            "`classes` needs at least two class names, got {:?}",
            r.classes
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &r.classes {
        if !seen.insert(c) {
            return Err(format!("class `{c}` is listed twice in `classes`"));
        }
    }
    let positive = match &r.positive_class {
        Some(p) => r.classes.iter().position(|c| c == p).ok_or_else(|| {
            format!(
                "`positive_class` = `{p}` is not one of `classes` {:?}",
                r.classes
            )
        })?,
        None => r.classes.len() - 1,
    };
    let layout = match r.layout {
        LayoutKind::Folder | LayoutKind::Synthetic => Layout::Folder {
            images_dir: PathBuf::from(&r.images_dir),
            masks_dir: match r.layout {
                LayoutKind::Synthetic => {
                    Some(PathBuf::from(r.masks_dir.as_deref().unwrap_or("masks")))
                }
                _ => match r.masks_dir.as_deref() {
                    Some("") => None,
                    Some(m) => Some(PathBuf::from(m)),
                    None if root.join("masks").is_dir() => Some(PathBuf::from("masks")),
                    None => None,
                },
            },
            masks_inferred: r.layout == LayoutKind::Folder
                && r.masks_dir.is_none()
                && root.join("masks").is_dir(),
            mask_suffix: r.mask_suffix.clone(),
        },
        LayoutKind::Csv => Layout::Csv {
            index: PathBuf::from(
                r.index
                    .as_deref()
                    .ok_or("layout = \"csv\" needs `index` (the CSV file, relative to root)")?,
            ),
            columns: r.columns.clone(),
        },
    };
    if r.lossy_mask_threshold.is_some() && r.mask_encoding != MaskEncoding::Binary {
        // Binarising a lossy mask keeps no index (255 = ignore) or instance id: it would
        // silently read an index or instance mask as a binary one.
        return Err(format!(
            "`lossy_mask_threshold` binarises JPEG masks, so it needs `mask_encoding = \"binary\"` \
             (here {:?})",
            r.mask_encoding
        ));
    }
    if r.layout == LayoutKind::Synthetic {
        let s = &r.synth;
        if s.patients_per_class < 2 || s.images_per_patient < 1 || s.size < 32 {
            return Err(
                "`synth` needs patients_per_class ≥ 2, images_per_patient ≥ 1 and size ≥ 32".into(),
            );
        }
        if r.classes.len() != 2 {
            return Err(
                "the synthetic generator makes exactly two classes (negative, positive)".into(),
            );
        }
    }
    Ok(DatasetSpec {
        name: name.to_string(),
        root,
        classes: r.classes,
        positive,
        mask_encoding: r.mask_encoding,
        negative_masks: r.negative_masks,
        lossy_mask_threshold: r.lossy_mask_threshold,
        layout,
        synth: (r.layout == LayoutKind::Synthetic).then_some(r.synth),
        description: r.description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_registry_parses() {
        let r = Registry::embedded().unwrap();
        assert!(r.get("synthetic").is_some());
        assert!(r.get("glas").is_some());
    }

    #[test]
    fn bad_entries_name_the_entry() {
        let e = Registry::parse(
            "[x]\nlayout = \"csv\"\nroot = \".\"\nclasses = [\"a\", \"b\"]\n",
            "reg.toml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("reg.toml: [x]") && e.contains("index"), "{e}");
        let e = Registry::parse(
            "[x]\nlayout = \"folder\"\nroot = \".\"\nclasses = [\"a\", \"b\"]\nbogus = 1\n",
            "reg.toml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("reg.toml:5:1") && e.contains("bogus"), "{e}");
        let e = Registry::parse("[x]\nlayout = \"folder\"\nroot = \".\"\nclasses = [\"a\", \"b\"]\npositive_class = \"c\"\n", "r", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("positive_class"), "{e}");
        let e = Registry::parse("[x]\nlayout = \"folder\"\nroot = \".\"\nclasses = [\"a\", \"b\"]\nmask_encoding = \"index\"\nlossy_mask_threshold = 127\n", "r", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lossy_mask_threshold") && e.contains("binary"),
            "{e}"
        );
    }

    #[test]
    fn env_expansion() {
        assert_eq!(
            expand_env("a/${WSSS_TEST_SURELY_UNSET:-x}/b").unwrap(),
            "a/x/b"
        );
        assert!(expand_env("${WSSS_TEST_SURELY_UNSET}").is_err());
        assert!(expand_env("${OOPS").is_err());
    }
}
