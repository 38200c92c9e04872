//! The `data` stage: decode and check every image and mask, assign patients to splits, check
//! for leakage, and write the split table and a dataset summary; with `stain.normalize`, fit
//! the stain normaliser on the training images (`stain.json`, which every image loader of the
//! later stages applies).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::stage::{SliceInput, Stage, StageInput};
use crate::config::{SplitConfig, StainConfig, StainNorm};
use crate::data::registry::{MaskEncoding, NegativeMasks};
use crate::data::stain::Reinhard;
use crate::data::{decode, split, Split};
use crate::error::{Error, Result};
use crate::table::{self, TableBuilder};
use crate::util::fs::write_json;

/// File names the data stage writes.
pub const SPLIT_TABLE: &str = "split";
/// Summary file of the data stage.
pub const SUMMARY: &str = "data_summary.json";

/// Counts that describe a scanned, split dataset.
#[derive(Debug, Serialize)]
pub struct DataSummary {
    /// Registry name.
    pub dataset: String,
    /// Fingerprint of paths, sizes and labels.
    pub fingerprint: String,
    /// Number of images.
    pub images: usize,
    /// Number of patients.
    pub patients: usize,
    /// Images per split and class.
    pub images_per_split: BTreeMap<String, BTreeMap<String, usize>>,
    /// Patients per split.
    pub patients_per_split: BTreeMap<String, Vec<String>>,
    /// Smallest and largest image size seen.
    pub min_size: (u32, u32),
    /// Largest image size seen.
    pub max_size: (u32, u32),
}

/// See the module docs.
pub struct DataStage;

/// What the data stage reads: the dataset's identity and how masks are read, and the split.
#[derive(Debug, Serialize)]
pub struct DataSlice {
    dataset: String,
    fingerprint: String,
    classes: Vec<String>,
    positive: usize,
    mask_encoding: MaskEncoding,
    negative_masks: NegativeMasks,
    #[serde(skip_serializing_if = "Option::is_none")]
    lossy_mask_threshold: Option<u8>,
    split: SplitConfig,
    /// Stain normalisation (fitted here, on the training split).
    #[serde(skip_serializing_if = "StainConfig::is_default")]
    stain: StainConfig,
}

impl Stage for DataStage {
    type Slice = DataSlice;
    fn name(&self) -> &'static str {
        "data"
    }
    fn version(&self) -> u32 {
        1
    }
    fn upstream(&self) -> &'static [&'static str] {
        &[]
    }
    fn slice(&self, input: &SliceInput) -> DataSlice {
        let spec = &input.dataset.spec;
        DataSlice {
            dataset: spec.name.clone(),
            fingerprint: input.dataset.fingerprint.clone(),
            classes: spec.classes.clone(),
            positive: spec.positive,
            mask_encoding: spec.mask_encoding,
            negative_masks: spec.negative_masks,
            lossy_mask_threshold: spec.lossy_mask_threshold,
            // What the split method reads (a swept `split.seed` under `method = "patients"`
            // is one computation, not several fake replicates).
            split: split::effective(&input.config.split),
            stain: input.config.stain,
        }
    }

    fn run(
        &self,
        slice: &DataSlice,
        input: &StageInput,
        out: &Path,
        _scratch: &Path,
    ) -> Result<()> {
        let idx = input.dataset;
        // The sizes come from the check every command makes when it opens the dataset.
        if idx.sizes.len() != idx.samples.len() {
            return Err(Error::stage(
                "data",
                "the dataset was indexed but not checked",
            ));
        }
        let source = (input.source_of)("split.method");
        let assign = split::assign(idx, &slice.split, &source)?;
        let rows = split::rows(idx, &assign);
        split::check_no_leakage(&rows).map_err(|m| Error::stage("data", m))?;
        let sizes: BTreeMap<&str, (u32, u32)> = idx
            .samples
            .iter()
            .zip(&idx.sizes)
            .map(|(s, d)| (s.id.as_str(), *d))
            .collect();
        let rel = |p: &Path| idx.rel(p).to_string_lossy().into_owned();
        let mut df = TableBuilder::new()
            .str("id", rows.iter().map(|r| r.id.clone()).collect())
            .str("patient", rows.iter().map(|r| r.patient.clone()).collect())
            .str("class", rows.iter().map(|r| r.class.clone()).collect())
            .str(
                crate::table::schema::col::SPLIT,
                rows.iter().map(|r| r.split.to_string()).collect(),
            )
            .str("image", idx.samples.iter().map(|s| rel(&s.image)).collect())
            .opt_str(
                "mask",
                idx.samples
                    .iter()
                    .map(|s| s.mask.as_deref().map(rel))
                    .collect(),
            )
            .u32(
                "width",
                rows.iter()
                    .map(|r| sizes.get(r.id.as_str()).map_or(0, |s| s.0))
                    .collect(),
            )
            .u32(
                "height",
                rows.iter()
                    .map(|r| sizes.get(r.id.as_str()).map_or(0, |s| s.1))
                    .collect(),
            )
            .build()?;
        table::write(&mut df, out, SPLIT_TABLE)?;

        let mut per_split: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        let mut pats: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &rows {
            *per_split
                .entry(r.split.to_string())
                .or_default()
                .entry(r.class.clone())
                .or_default() += 1;
            let v = pats.entry(r.split.to_string()).or_default();
            if !v.contains(&r.patient) {
                v.push(r.patient.clone());
            }
        }
        let summary = DataSummary {
            dataset: idx.spec.name.clone(),
            fingerprint: idx.fingerprint.clone(),
            images: rows.len(),
            patients: idx.patients().len(),
            images_per_split: per_split,
            patients_per_split: pats,
            min_size: idx.sizes.iter().copied().min().unwrap_or((0, 0)),
            max_size: idx.sizes.iter().copied().max().unwrap_or((0, 0)),
        };
        write_json(&out.join(SUMMARY), &summary)?;
        if slice.stain.normalize == StainNorm::Reinhard {
            let train: Vec<usize> = (0..idx.samples.len())
                .filter(|&i| assign.get(&idx.samples[i].patient) == Some(&Split::Train))
                .collect();
            let imgs: Vec<image::RgbImage> = train
                .iter()
                .map(|&i| Ok(decode::open(&idx.samples[i].image, "image")?.into_rgb8()))
                .collect::<Result<_>>()?;
            let fitted = Reinhard::fit(&imgs).ok_or_else(|| {
                Error::stage(
                    "data",
                    "stain.normalize = \"reinhard\" is fitted on the training images, and the \
                     split has none",
                )
            })?;
            tracing::info!(
                "stain normalisation (Reinhard) fitted on {} training images: L*a*b* mean {:.1?}, std {:.1?}",
                fitted.images,
                fitted.mean,
                fitted.std
            );
            write_json(
                &out.join(STAIN),
                &StainRecord {
                    method: StainNorm::Reinhard,
                    reinhard: fitted,
                },
            )?;
        }
        Ok(())
    }

    fn publish(&self, entry: &Path, run_dir: &Path) -> Result<()> {
        for f in [
            format!("{SPLIT_TABLE}.parquet"),
            format!("{SPLIT_TABLE}.csv"),
            SUMMARY.to_string(),
            STAIN.to_string(),
        ] {
            let src = entry.join(&f);
            if f == STAIN && !src.exists() {
                continue;
            }
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
            crate::util::fs::atomic_write(&run_dir.join(&f), &bytes)?;
        }
        Ok(())
    }
}

/// The fitted stain normaliser, in the data stage's output and every run directory.
pub const STAIN: &str = "stain.json";

/// What `stain.json` holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct StainRecord {
    /// The method.
    pub method: StainNorm,
    /// Its fitted target.
    pub reinhard: Reinhard,
}

/// The dataset's images as a stage reads them: stain-normalised when the data stage fitted a
/// normaliser. `bytes` is `load_split`'s size estimate (the loader's cache decision).
pub(crate) fn images<'a>(
    input: &StageInput<'a>,
    bytes: u64,
) -> Result<crate::data::loader::Images<'a>> {
    Ok(
        crate::data::loader::Images::new(&input.dataset.samples, bytes)
            .with_stain(load_stain(input.upstream_dir("data")?)?),
    )
}

/// The stain normaliser a data stage (or run directory) recorded, if any.
///
/// Errors: a `stain.json` that cannot be read or parsed (naming the file).
pub fn load_stain(dir: &Path) -> Result<Option<Reinhard>> {
    let path = dir.join(STAIN);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let r: StainRecord =
        serde_json::from_slice(&bytes).map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
    Ok(Some(r.reinhard))
}

#[derive(serde::Deserialize)]
struct SplitCsvRow {
    patient: String,
    split: crate::data::Split,
    width: u32,
    height: u32,
}

/// Read the data stage's split table back: patient → split for every patient in a split
/// (patients that `split.method = "patients"` leaves out are not in the map, so no stage can
/// count them), and the approximate decoded size of those images in bytes (for the loader's
/// cache decision).
pub(crate) fn load_split(
    data_dir: &Path,
    stage: &str,
) -> Result<(BTreeMap<String, crate::data::Split>, u64)> {
    let path = data_dir.join(format!("{SPLIT_TABLE}.csv"));
    let mut rdr = csv::Reader::from_path(&path)
        .map_err(|e| Error::stage(stage, format!("{}: {e}", path.display())))?;
    let mut split = BTreeMap::new();
    let mut bytes = 0u64;
    for r in rdr.deserialize::<SplitCsvRow>() {
        let r = r.map_err(|e| Error::stage(stage, format!("{}: {e}", path.display())))?;
        if r.split == crate::data::Split::Excluded {
            continue;
        }
        bytes += r.width as u64 * r.height as u64 * 3;
        split.insert(r.patient, r.split);
    }
    Ok((split, bytes))
}
