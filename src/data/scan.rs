//! Scanning a registered dataset into an index of samples, and checking its files.
//!
//! [`check`] lists the dataset (directory walk or CSV read), then decodes every image and mask
//! in parallel ([`verify`]), and reports every problem of every file at once, with paths. The
//! dataset fingerprint hashes the listing and every file's bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;
use walkdir::WalkDir;

use super::registry::{DatasetSpec, Layout};
use crate::error::{Error, Result};
use crate::util::hash::Hasher;

/// Image file extensions the folder scanner picks up.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "tif", "tiff", "bmp"];

pub use super::sample::Sample;

/// The samples of a dataset and its fingerprint.
#[derive(Debug, Clone)]
pub struct DatasetIndex {
    /// The resolved registry entry.
    pub spec: DatasetSpec,
    /// Samples sorted by id.
    pub samples: Vec<Sample>,
    /// SHA-256 of the sorted (id, relative paths, sizes, class, patient) rows and, once
    /// [`check`]ed, of every image's and mask's bytes.
    pub fingerprint: String,
    /// Width and height of each sample (same order), as decoded by [`check`].
    pub sizes: Vec<(u32, u32)>,
}

impl DatasetIndex {
    /// Distinct patient ids.
    pub fn patients(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.patient.as_str()).collect()
    }

    /// Image count per class name.
    pub fn class_counts(&self) -> BTreeMap<&str, usize> {
        let mut m: BTreeMap<&str, usize> =
            self.spec.classes.iter().map(|c| (c.as_str(), 0)).collect();
        for s in &self.samples {
            *m.entry(self.spec.classes[s.class].as_str()).or_default() += 1;
        }
        m
    }

    /// Path relative to the dataset root, for tables and fingerprints.
    pub fn rel<'a>(&self, p: &'a Path) -> &'a Path {
        p.strip_prefix(&self.spec.root).unwrap_or(p)
    }
}

/// Decoded facts about one sample, from [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// Sample id.
    pub id: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// SHA-256 of the image file's bytes and of its mask's.
    pub content: String,
}

/// Index and decode every image and mask, reporting every problem of every file in one pass
/// (missing, duplicate, unreadable, truncated, oversized, wrong-size, lossy or colour masks,
/// loops in linked folders); the returned index has [`DatasetIndex::sizes`] filled.
pub fn check(spec: &DatasetSpec, progress: &indicatif::ProgressBar) -> Result<DatasetIndex> {
    let (idx, errs) = check_all(spec, progress)?;
    if errs.is_empty() {
        Ok(idx)
    } else {
        Err(Error::Dataset(errs))
    }
}

/// [`check`], returning the index (as far as it could be listed) beside the problems found,
/// so that callers can check what else depends on it (a split's patients) in the same pass.
/// Fails only when the dataset cannot be listed at all.
pub fn check_all(
    spec: &DatasetSpec,
    progress: &indicatif::ProgressBar,
) -> Result<(DatasetIndex, Vec<String>)> {
    let mut errs = Vec::new();
    let mut idx = index_collect(spec, &mut errs)?;
    progress.set_length(idx.samples.len() as u64);
    match verify(&idx, progress) {
        Ok(infos) => {
            idx.sizes = infos.iter().map(|i| (i.width, i.height)).collect();
            // The fingerprint covers every file's content, so an edited mask of the same size
            // (an uncompressed TIFF relabelled) changes every stage's key.
            let mut h = Hasher::new();
            h.field(&idx.fingerprint);
            for i in &infos {
                h.field(&i.content);
            }
            idx.fingerprint = h.hex();
            warn_identical_content(&idx, &infos);
        }
        Err(Error::Dataset(e)) => errs.extend(e),
        Err(e) => return Err(e),
    }
    Ok((idx, errs))
}

/// Tiles with the same bytes under different patients: a copied tile would put one image on
/// both sides of a patient split. Not refused (blank tiles can be identical), said loudly.
fn warn_identical_content(idx: &DatasetIndex, infos: &[ImageInfo]) {
    let mut first: BTreeMap<&str, &Sample> = BTreeMap::new();
    for (s, i) in idx.samples.iter().zip(infos) {
        let image_hash = i.content.split(':').next().unwrap_or("");
        match first.get(image_hash) {
            Some(o) if o.patient != s.patient => tracing::warn!(
                "dataset `{}`: images `{}` (patient {}) and `{}` (patient {}) have identical \
                 bytes: a copied tile can put one image on both sides of the patient split",
                idx.spec.name,
                o.id,
                o.patient,
                s.id,
                s.patient
            ),
            Some(_) => {}
            None => {
                first.insert(image_hash, s);
            }
        }
    }
}

/// Index a dataset, pushing every problem found onto `errs`; fails early only when the
/// dataset cannot be listed at all (its root or CSV index is missing).
fn index_collect(spec: &DatasetSpec, errs: &mut Vec<String>) -> Result<DatasetIndex> {
    if !spec.root.is_dir() {
        return Err(Error::dataset(format!(
            "dataset `{}`: root folder {} does not exist",
            spec.name,
            spec.root.display()
        )));
    }
    let mut samples = match &spec.layout {
        Layout::Folder {
            images_dir,
            masks_dir,
            masks_inferred,
            mask_suffix,
        } => {
            if *masks_inferred {
                tracing::info!(
                    "dataset `{}`: masks_dir is not set in the registry; using the masks/ folder \
                     beside the images ({}); set masks_dir = \"\" if the dataset has no masks",
                    spec.name,
                    spec.root.join("masks").display()
                );
            }
            scan_folder(spec, images_dir, masks_dir.as_deref(), mask_suffix, errs)
        }
        Layout::Csv { index, columns } => scan_csv(spec, index, columns, errs)?,
    };
    samples.sort_by(|a, b| a.id.cmp(&b.id));
    for w in samples.windows(2) {
        if w[0].id == w[1].id {
            errs.push(format!(
                "duplicate image id `{}`: {} and {}",
                w[0].id,
                w[0].image.display(),
                w[1].image.display()
            ));
        }
    }
    // One file (reached through a link, or listed twice in an index) under two ids would be
    // two images — possibly of two patients, on both sides of the split.
    let mut canon: BTreeMap<PathBuf, &Sample> = BTreeMap::new();
    for s in &samples {
        let Ok(c) = std::fs::canonicalize(&s.image) else {
            continue;
        };
        if let Some(o) = canon.get(&c) {
            errs.push(format!(
                "the file {} is image `{}` (patient {}) and image `{}` (patient {}): one file \
                 must be one image",
                c.display(),
                o.id,
                o.patient,
                s.id,
                s.patient
            ));
        } else {
            canon.insert(c, s);
        }
    }
    for (ci, c) in spec.classes.iter().enumerate() {
        if !samples.iter().any(|s| s.class == ci) {
            errs.push(format!(
                "dataset `{}`: class `{c}` has no images",
                spec.name
            ));
        }
    }
    let mut h = Hasher::new();
    for s in &samples {
        h.field(&s.id)
            .field(
                s.image
                    .strip_prefix(&spec.root)
                    .unwrap_or(&s.image)
                    .to_string_lossy()
                    .as_bytes(),
            )
            .field(s.image_bytes.to_le_bytes())
            .field(&spec.classes[s.class])
            .field(&s.patient);
        if let Some(m) = &s.mask {
            h.field(
                m.strip_prefix(&spec.root)
                    .unwrap_or(m)
                    .to_string_lossy()
                    .as_bytes(),
            )
            .field(s.mask_bytes.to_le_bytes());
        }
    }
    Ok(DatasetIndex {
        spec: spec.clone(),
        samples,
        fingerprint: h.hex(),
        sizes: Vec::new(),
    })
}

fn file_size(p: &Path, what: &str, errs: &mut Vec<String>) -> u64 {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => {
            errs.push(format!("{what} {} is not a file", p.display()));
            0
        }
        Err(e) => {
            errs.push(format!("{what} {}: {e}", p.display()));
            0
        }
    }
}

fn scan_folder(
    spec: &DatasetSpec,
    images_dir: &Path,
    masks_dir: Option<&Path>,
    mask_suffix: &str,
    errs: &mut Vec<String>,
) -> Vec<Sample> {
    let top = spec.root.join(images_dir);
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (ci, class) in spec.classes.iter().enumerate() {
        let cdir = top.join(class);
        if !cdir.is_dir() {
            errs.push(format!("class folder {} does not exist", cdir.display()));
            continue;
        }
        // Linked patient folders and linked image files are followed (walkdir reports loops).
        for entry in WalkDir::new(&cdir)
            .min_depth(1)
            .follow_links(true)
            .sort_by_file_name()
        {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let at = e
                        .path()
                        .map_or_else(|| cdir.display().to_string(), |p| p.display().to_string());
                    match e.loop_ancestor() {
                        Some(a) => errs.push(format!(
                            "{at}: a link loops back to {} (a symbolic link loop); remove it",
                            a.display()
                        )),
                        None => errs.push(format!("cannot read {at}: {e}")),
                    }
                    continue;
                }
            };
            let p = entry.path();
            if entry.file_type().is_dir() {
                if entry.depth() > 1 {
                    errs.push(format!(
                        "{} is a folder inside a patient folder: the folder layout is \
                         <class>/<patient>/<image>",
                        p.display()
                    ));
                }
                continue;
            }
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            let is_image = ext
                .as_deref()
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e));
            if !is_image {
                skipped.push(p.to_path_buf());
                continue;
            }
            if entry.depth() != 2 {
                errs.push(format!(
                    "image {} is not in a patient folder: the folder layout is \
                     <class>/<patient>/<image>",
                    p.display()
                ));
                continue;
            }
            let patient = p
                .parent()
                .and_then(|d| d.file_name())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mask = masks_dir.map(|m| {
                let dir = spec.root.join(m).join(class).join(&patient);
                find_mask(&dir, &format!("{stem}{mask_suffix}"))
            });
            let mask = match mask {
                Some(Ok(m)) => Some(m),
                Some(Err(MaskLookup::Missing(expected, other))) => {
                    let also = if other.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; found {}, not a mask format ({})",
                            other
                                .iter()
                                .map(|o| o.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", "),
                            IMAGE_EXTENSIONS.join(", ")
                        )
                    };
                    errs.push(format!(
                        "image {} has no mask (looked for {}{also})",
                        p.display(),
                        expected.display()
                    ));
                    None
                }
                Some(Err(MaskLookup::Ambiguous(all))) => {
                    errs.push(format!(
                        "image {} has several masks: {} (keep one)",
                        p.display(),
                        all.iter()
                            .map(|o| o.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    None
                }
                None => None,
            };
            out.push(Sample {
                id: format!("{patient}/{class}/{stem}"),
                image_bytes: file_size(p, "image", errs),
                mask_bytes: mask.as_deref().map_or(0, |m| file_size(m, "mask", errs)),
                image: p.to_path_buf(),
                mask,
                class: ci,
                patient,
            });
        }
    }
    if !skipped.is_empty() {
        let shown: Vec<String> = skipped
            .iter()
            .take(5)
            .map(|p| p.display().to_string())
            .collect();
        tracing::warn!(
            "dataset `{}`: skipped {} file(s) whose extension is not an image's ({}): {}{}",
            spec.name,
            skipped.len(),
            IMAGE_EXTENSIONS.join(", "),
            shown.join(", "),
            if skipped.len() > 5 { ", …" } else { "" }
        );
    }
    out
}

/// Why an image's mask was not found.
enum MaskLookup {
    /// No file with the mask's name; the path looked for, and files of that name in formats
    /// masks cannot be read from.
    Missing(PathBuf, Vec<PathBuf>),
    /// Several files could be the mask (`t0.png` and `t0.tif`): which one is meant is unknown.
    Ambiguous(Vec<PathBuf>),
}

/// The mask file of an image: `<stem>.<ext>` for an image extension in any letter case — one
/// and only one.
fn find_mask(dir: &Path, stem: &str) -> std::result::Result<PathBuf, MaskLookup> {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut other: Vec<PathBuf> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for p in rd.filter_map(|e| e.ok().map(|e| e.path())) {
            if p.file_stem().is_none_or(|s| s != stem) || !p.is_file() {
                continue;
            }
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if ext
                .as_deref()
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e))
            {
                found.push(p);
            } else if ext.is_some() {
                other.push(p);
            }
        }
    }
    found.sort();
    other.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(MaskLookup::Missing(dir.join(format!("{stem}.png")), other)),
        _ => Err(MaskLookup::Ambiguous(found)),
    }
}

fn scan_csv(
    spec: &DatasetSpec,
    index: &Path,
    cols: &super::registry::Columns,
    errs: &mut Vec<String>,
) -> Result<Vec<Sample>> {
    let path = spec.root.join(index);
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(&path)
        .map_err(|e| Error::dataset(format!("index {}: {e}", path.display())))?;
    let headers = rdr
        .headers()
        .map_err(|e| Error::dataset(format!("index {}: {e}", path.display())))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let need = |name: &str| {
        col(name).ok_or_else(|| {
            Error::dataset(format!(
                "index {}: no column `{name}` (columns: {})",
                path.display(),
                headers.iter().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let (ci, cc, cp) = (need(&cols.image)?, need(&cols.class)?, need(&cols.patient)?);
    let (cid, cm) = (col(&cols.id), col(&cols.mask));
    let mut out = Vec::new();
    for (row, rec) in rdr.records().enumerate() {
        let line = row + 2;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                errs.push(format!("{}:{line}: {e}", path.display()));
                continue;
            }
        };
        let get = |i: usize| rec.get(i).unwrap_or("").to_string();
        let image = spec.root.join(get(ci));
        let class_name = get(cc);
        let Some(class) = spec.classes.iter().position(|c| *c == class_name) else {
            errs.push(format!(
                "{}:{line}: class `{class_name}` is not one of {:?}",
                path.display(),
                spec.classes
            ));
            continue;
        };
        let patient = get(cp);
        if patient.is_empty() {
            errs.push(format!("{}:{line}: empty patient id", path.display()));
            continue;
        }
        let mask = cm
            .map(get)
            .filter(|m| !m.is_empty())
            .map(|m| spec.root.join(m));
        let id = cid.map(get).filter(|s| !s.is_empty()).unwrap_or_else(|| {
            image
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        out.push(Sample {
            id,
            image_bytes: file_size(&image, "image", errs),
            mask_bytes: mask.as_deref().map_or(0, |m| file_size(m, "mask", errs)),
            image,
            mask,
            class,
            patient,
        });
    }
    Ok(out)
}

/// Decode every image and mask (in parallel); report every unreadable, truncated or oversized
/// file, every mask that is not a label map for the registry's encoding and every mask whose
/// size differs from its image, with paths.
pub fn verify(idx: &DatasetIndex, progress: &indicatif::ProgressBar) -> Result<Vec<ImageInfo>> {
    let results: Vec<std::result::Result<ImageInfo, Vec<String>>> = idx
        .samples
        .par_iter()
        .map(|s| {
            let r = verify_one(s, &idx.spec);
            progress.inc(1);
            r
        })
        .collect();
    let mut infos = Vec::new();
    let mut errs = Vec::new();
    for r in results {
        match r {
            Ok(i) => infos.push(i),
            Err(e) => errs.extend(e),
        }
    }
    if errs.is_empty() {
        Ok(infos)
    } else {
        Err(Error::Dataset(errs))
    }
}

fn verify_one(s: &Sample, spec: &DatasetSpec) -> std::result::Result<ImageInfo, Vec<String>> {
    use super::decode;
    let mut errs = Vec::new();
    // Each file is read once: hashed for the fingerprint, then decoded (not only its header,
    // so truncated files are found).
    let mut content = String::new();
    let img = decode::read(&s.image, "image").and_then(|bytes| {
        content.push_str(&crate::util::hash::sha256_hex(&bytes));
        let format = decode::format_of(&bytes, &s.image, "image")?;
        decode::decode(&bytes, format, &s.image, "image").map(|i| (i.width(), i.height()))
    });
    let img = match img {
        Ok(d) => Some(d),
        Err(e) => {
            errs.push(e.to_string());
            None
        }
    };
    if let Some(m) = &s.mask {
        let mask = decode::read(m, "mask").and_then(|bytes| {
            content.push(':');
            content.push_str(&crate::util::hash::sha256_hex(&bytes));
            super::mask::checked_from_bytes(&bytes, m, spec)
        });
        match mask {
            Ok(mask) => {
                if let Some((w, h)) = img {
                    if (mask.width, mask.height) != (w, h) {
                        errs.push(format!(
                            "mask {} is {}×{} but its image {} is {w}×{h}",
                            m.display(),
                            mask.width,
                            mask.height,
                            s.image.display(),
                        ));
                    }
                }
            }
            Err(e) => errs.push(e.to_string()),
        }
    }
    match (img, errs.is_empty()) {
        (Some((width, height)), true) => Ok(ImageInfo {
            id: s.id.clone(),
            width,
            height,
            content,
        }),
        _ => Err(errs),
    }
}
