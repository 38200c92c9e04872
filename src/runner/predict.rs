//! `wsss predict`: apply the segmenter of a finished run to a folder of new images — what a
//! user does after the experiment. Reads the run directory's resolved `config.toml` and
//! `segmenter.safetensors`, walks the folder (PNG, JPEG, TIFF, BMP; recursively), and writes
//! for each image an index PNG (0 background, 1 foreground, palette) and an overlay PNG under
//! the output folder, mirroring the input's sub-folders, plus a `predictions.csv` table of
//! foreground fractions.

use std::path::{Path, PathBuf};

use crate::cam::label_png;
use crate::config::ExperimentConfig;
use crate::error::{Error, Result};
use crate::table::{self, TableBuilder};
use crate::train::segment::Segmenter;
use crate::util::fs::mkdirs;

use super::device;
use super::evaluate_stage::overlay;
use super::segment_stage::WEIGHTS;

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "tif", "tiff", "bmp"];

/// What a prediction pass did.
#[derive(Debug, Clone)]
pub struct PredictReport {
    /// Images segmented.
    pub images: usize,
    /// Images that could not be decoded (path and reason); they are skipped.
    pub failed: Vec<(PathBuf, String)>,
    /// Seconds.
    pub seconds: f64,
}

/// Segment every image under `images` with the run's segmenter into `out`.
pub fn predict_folder(
    run_dir: &Path,
    images: &Path,
    out: &Path,
    device_override: Option<&str>,
) -> Result<PredictReport> {
    let t0 = std::time::Instant::now();
    let cfg_path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
        Error::Usage(format!(
            "{}: {e} (is `{}` a run directory of `wsss run`?)",
            cfg_path.display(),
            run_dir.display()
        ))
    })?;
    let cfg: ExperimentConfig =
        toml::from_str(&text).map_err(|e| Error::Usage(format!("{}: {e}", cfg_path.display())))?;
    let weights = run_dir.join(WEIGHTS);
    if !weights.is_file() {
        return Err(Error::Usage(format!(
            "{} not found: the run has not finished its segment stage",
            weights.display()
        )));
    }
    if !images.is_dir() {
        return Err(Error::Usage(format!(
            "{} is not a folder",
            images.display()
        )));
    }
    let (dev, desc) = device::resolve(device_override.unwrap_or(&cfg.device))?;
    // The run's arithmetic on a GPU; a CPU (e.g. `--device cpu`) computes fp32 whatever it was.
    let precision = match dev.is_cpu() {
        true => crate::config::Precision::Auto,
        false => cfg.precision,
    };
    let arith = crate::model::precision::apply(precision, &dev)?;
    tracing::info!(
        "segmenting images under {} on {desc} ({arith})",
        images.display()
    );
    let seg = Segmenter::load(&cfg.segmentation, &dev, &weights)?;
    // The run's stain normaliser (fitted on its training images), applied to new images as
    // to the run's own.
    let stain = super::data_stage::load_stain(run_dir)?;
    if stain.is_some() {
        tracing::info!("stain-normalising the images as the run did (stain.json)");
    }
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(images)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort();
    let outputs = output_names(images, &files)?;
    let (lab_dir, ov_dir) = (out.join("labels"), out.join("overlays"));
    let s = &cfg.segmentation;
    let (mut inputs, mut names, mut fgs) = (vec![], vec![], vec![]);
    let mut failed = Vec::new();
    let pb = crate::progress::bar(files.len() as u64, "predict");
    for (f, rel) in files.iter().zip(&outputs) {
        pb.inc(1);
        let img = match crate::data::decode::open(f, "image") {
            Ok(i) => i.into_rgb8(),
            Err(e) => {
                tracing::warn!("{e}");
                failed.push((f.clone(), e.to_string()));
                continue;
            }
        };
        let pred = match &stain {
            Some(st) => {
                let mut normalised = img.clone();
                st.apply(&mut normalised);
                seg.segment(&normalised, s, &dev)?
            }
            None => seg.segment(&img, s, &dev)?,
        };
        let (lp, op) = (lab_dir.join(rel), ov_dir.join(rel));
        for p in [&lp, &op] {
            if let Some(d) = p.parent() {
                mkdirs(d)?;
            }
        }
        crate::util::fs::atomic_write(&lp, &label_png(&pred)?)?;
        crate::util::fs::write_png(&op, &image::DynamicImage::ImageRgb8(overlay(&img, &pred)))?;
        inputs.push(f.strip_prefix(images).unwrap_or(f).display().to_string());
        names.push(rel.display().to_string());
        fgs.push(
            pred.as_raw().iter().filter(|&&v| v == 1).count() as f64
                / pred.as_raw().len().max(1) as f64,
        );
    }
    pb.finish_and_clear();
    let n = names.len();
    mkdirs(out)?;
    let mut df = TableBuilder::new()
        .str("image", inputs)
        .str("label", names)
        .f64("fg_fraction", fgs)
        .build()?;
    table::write(&mut df, out, crate::table::Table::Predictions.stem())?;
    Ok(PredictReport {
        images: n,
        failed,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The output name (relative to `labels/` and `overlays/`) of every input: its path with a
/// `.png` extension, or — where two inputs would share one (`x.png`, `x.jpg`, `x.tif`) — with
/// its own extension kept (`x.jpg.png`). Nothing is ever written twice: a clash that remains
/// is bad input naming both files.
fn output_names(root: &Path, files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    use std::collections::BTreeMap;
    let rel = |f: &PathBuf| f.strip_prefix(root).unwrap_or(f).to_path_buf();
    let plain: Vec<PathBuf> = files.iter().map(|f| rel(f).with_extension("png")).collect();
    let mut count: BTreeMap<&PathBuf, usize> = BTreeMap::new();
    for p in &plain {
        *count.entry(p).or_default() += 1;
    }
    let names: Vec<PathBuf> = files
        .iter()
        .zip(&plain)
        .map(|(f, p)| {
            if count[p] > 1 {
                let r = rel(f);
                let mut s = r.into_os_string();
                s.push(".png");
                PathBuf::from(s)
            } else {
                p.clone()
            }
        })
        .collect();
    let mut seen: BTreeMap<&PathBuf, &PathBuf> = BTreeMap::new();
    for (n, f) in names.iter().zip(files) {
        if let Some(other) = seen.insert(n, f) {
            return Err(Error::Usage(format!(
                "{} and {} would both be written as {}: rename one of them",
                other.display(),
                f.display(),
                n.display()
            )));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clashing_output_names_keep_their_extension() {
        let root = Path::new("/in");
        let files: Vec<PathBuf> = ["a/x.jpg", "a/x.png", "a/x.tif", "a/y.jpg", "b/x.jpg"]
            .iter()
            .map(|f| root.join(f))
            .collect();
        let got: Vec<String> = output_names(root, &files)
            .unwrap()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "a/x.jpg.png",
                "a/x.png.png",
                "a/x.tif.png",
                "a/y.png",
                "b/x.png"
            ]
        );
        // `x.jpg.png` exists as an input too: no name is left; refused naming both inputs.
        let files: Vec<PathBuf> = ["x.jpg", "x.png", "x.jpg.png"]
            .iter()
            .map(|f| root.join(f))
            .collect();
        let e = output_names(root, &files).unwrap_err().to_string();
        assert!(
            e.contains("x.jpg") && e.contains("would both be written as"),
            "{e}"
        );
    }
}
