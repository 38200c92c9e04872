//! Scanning a registered dataset into an index of samples, and checking its files.
//!
//! [`index`] is cheap (directory walk or CSV read plus file sizes) and yields the dataset
//! fingerprint; [`verify`] decodes every image and mask in parallel and reports, with paths,
//! every unreadable or truncated file and every mask whose size differs from its image.

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

/// One image of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Unique id (CSV id column or the file stem).
    pub id: String,
    /// Image path.
    pub image: PathBuf,
    /// Mask path, if the dataset has masks.
    pub mask: Option<PathBuf>,
    /// Class index into the dataset's classes.
    pub class: usize,
    /// Patient id.
    pub patient: String,
    /// Image file size in bytes (part of the fingerprint).
    pub image_bytes: u64,
    /// Mask file size in bytes (0 without a mask).
    pub mask_bytes: u64,
}

/// The samples of a dataset and its fingerprint.
#[derive(Debug, Clone)]
pub struct DatasetIndex {
    /// The resolved registry entry.
    pub spec: DatasetSpec,
    /// Samples sorted by id.
    pub samples: Vec<Sample>,
    /// SHA-256 of the sorted (id, relative paths, sizes, class, patient) rows.
    pub fingerprint: String,
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
}

/// Index a dataset without decoding images. Collects every problem before failing.
pub fn index(spec: &DatasetSpec) -> Result<DatasetIndex> {
    if !spec.root.is_dir() {
        return Err(Error::dataset(format!(
            "dataset `{}`: root folder {} does not exist",
            spec.name,
            spec.root.display()
        )));
    }
    let mut errs = Vec::new();
    let mut samples = match &spec.layout {
        Layout::Folder {
            images_dir,
            masks_dir,
            mask_suffix,
        } => scan_folder(
            spec,
            images_dir,
            masks_dir.as_deref(),
            mask_suffix,
            &mut errs,
        ),
        Layout::Csv { index, columns } => scan_csv(spec, index, columns, &mut errs)?,
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
    for (ci, c) in spec.classes.iter().enumerate() {
        if !samples.iter().any(|s| s.class == ci) {
            errs.push(format!(
                "dataset `{}`: class `{c}` has no images",
                spec.name
            ));
        }
    }
    if !errs.is_empty() {
        return Err(Error::Dataset(errs));
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
    for (ci, class) in spec.classes.iter().enumerate() {
        let cdir = top.join(class);
        if !cdir.is_dir() {
            errs.push(format!("class folder {} does not exist", cdir.display()));
            continue;
        }
        for entry in WalkDir::new(&cdir)
            .min_depth(2)
            .max_depth(2)
            .sort_by_file_name()
        {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    errs.push(format!("cannot read {}: {e}", cdir.display()));
                    continue;
                }
            };
            let p = entry.path();
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if !entry.file_type().is_file()
                || !ext
                    .as_deref()
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e))
            {
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
                Some(Err(expected)) => {
                    errs.push(format!(
                        "image {} has no mask (looked for {})",
                        p.display(),
                        expected.display()
                    ));
                    None
                }
                None => None,
            };
            out.push(Sample {
                id: stem,
                image_bytes: file_size(p, "image", errs),
                mask_bytes: mask.as_deref().map_or(0, |m| file_size(m, "mask", errs)),
                image: p.to_path_buf(),
                mask,
                class: ci,
                patient,
            });
        }
    }
    out
}

fn find_mask(dir: &Path, stem: &str) -> std::result::Result<PathBuf, PathBuf> {
    for ext in IMAGE_EXTENSIONS {
        let c = dir.join(format!("{stem}.{ext}"));
        if c.is_file() {
            return Ok(c);
        }
    }
    Err(dir.join(format!("{stem}.png")))
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

/// Decode every image and mask (in parallel); report every unreadable or truncated file and
/// every mask whose size differs from its image, with paths.
pub fn verify(idx: &DatasetIndex, progress: &indicatif::ProgressBar) -> Result<Vec<ImageInfo>> {
    let results: Vec<std::result::Result<ImageInfo, String>> = idx
        .samples
        .par_iter()
        .map(|s| {
            let r = verify_one(s);
            progress.inc(1);
            r
        })
        .collect();
    let mut infos = Vec::new();
    let mut errs = Vec::new();
    for r in results {
        match r {
            Ok(i) => infos.push(i),
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() {
        Ok(infos)
    } else {
        Err(Error::Dataset(errs))
    }
}

fn verify_one(s: &Sample) -> std::result::Result<ImageInfo, String> {
    let img = image::open(&s.image)
        .map_err(|e| format!("image {}: cannot decode: {e}", s.image.display()))?;
    if let Some(m) = &s.mask {
        let mask =
            image::open(m).map_err(|e| format!("mask {}: cannot decode: {e}", m.display()))?;
        if (mask.width(), mask.height()) != (img.width(), img.height()) {
            return Err(format!(
                "mask {} is {}×{} but its image {} is {}×{}",
                m.display(),
                mask.width(),
                mask.height(),
                s.image.display(),
                img.width(),
                img.height()
            ));
        }
    }
    Ok(ImageInfo {
        id: s.id.clone(),
        width: img.width(),
        height: img.height(),
    })
}
