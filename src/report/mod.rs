//! Reports: everything a researcher compares variants with, built from an experiment's run
//! directories — tables (polars, parquet + CSV), figures (plotters, PNG + SVG), galleries, a
//! self-contained `index.html` and a `summary.md` — into `reports/<experiment>/`.
//!
//! A report only reads what runs wrote, so it is rebuilt in seconds (`wsss report`) and is also
//! written at the end of every `wsss run`. [`compare`] joins the summaries of several
//! experiments for the terminal.
//!
//! ```text
//! reports/<experiment>/
//!   index.html  summary.md
//!   summary  metrics  curves  images  configs  misclassified  patient_errors
//!   patient_segmentation   (.parquet, .csv)
//!   figures/<name>.{png,svg}   galleries/<name>.png
//! ```

pub mod compare;
pub mod data;
pub mod figures;
pub mod gallery;
pub mod html;
pub mod tables;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use data::{Experiment, RunData};

use crate::data::registry::Registry;
use crate::error::{Error, Result};
use crate::table::schema::metric;
use crate::table::{self, Table};
use gallery::{Panel, Row, Sources};
use html::GalleryRef;

/// Tables the report writes (each as `.parquet` and `.csv`).
pub const TABLE_FILES: &[&str] = &[
    "summary",
    "metrics",
    "curves",
    "images",
    "configs",
    "misclassified",
    "patient_errors",
    "patient_segmentation",
    "summary_seeds",
];

/// Report settings that do not come from the runs.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Image ids to show in the "chosen images" gallery (empty: none).
    pub images: Vec<String>,
    /// Rows in the best / worst galleries.
    pub gallery_rows: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            images: vec![],
            gallery_rows: 4,
        }
    }
}

/// What [`build`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The report folder.
    pub dir: PathBuf,
    /// Figures written.
    pub figures: usize,
    /// Galleries written.
    pub galleries: usize,
    /// Variants in the summary.
    pub variants: usize,
}

/// Write the report of `exp` into `out`. `registry` gives the dataset entries the galleries need
/// for ground-truth masks (without it, the ground-truth panel is grey).
pub fn build(
    exp: &Experiment,
    registry: Option<&Registry>,
    out: &Path,
    opts: &ReportOptions,
) -> Result<Written> {
    crate::util::fs::mkdirs(out)?;
    // generated sub-folders are rebuilt from scratch so no stale figure survives
    for sub in ["figures", "galleries"] {
        let d = out.join(sub);
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        crate::util::fs::mkdirs(&d)?;
    }
    let rows: Vec<tables::SummaryRow> = exp
        .variants
        .iter()
        .map(|r| tables::summary_row(&exp.name, r))
        .collect();
    let params = exp.varying_keys();
    table::write(&mut tables::summary_frame(&rows, &params)?, out, "summary")?;
    let seeds = tables::seed_groups(&rows, &params);
    table::write(
        &mut tables::seed_frame(&seeds, &rows)?,
        out,
        "summary_seeds",
    )?;
    let (mut metrics, mut curves) = tables::metrics(exp)?;
    table::write(&mut metrics, out, "metrics")?;
    table::write(&mut curves, out, "curves")?;
    table::write(&mut tables::images(exp)?, out, "images")?;
    table::write(&mut tables::configs(exp)?, out, "configs")?;
    let misses = tables::misses(exp);
    table::write(&mut tables::misclassified(&misses)?, out, "misclassified")?;
    let mut pe = tables::patient_errors(exp)?;
    table::write(&mut pe, out, "patient_errors")?;
    let patients = patient_rows(&pe);
    let mut ps = tables::patient_segmentation(exp)?;
    table::write(&mut ps, out, "patient_segmentation")?;
    let patient_seg = tables::patient_seed_groups(&rows, &params, &ps);

    let figs = figures::all(exp, &out.join("figures"))?;
    let galleries = galleries(exp, registry, &out.join("galleries"), opts, &misses)?;

    let page = html::Page {
        exp,
        rows: &rows,
        params: &params,
        seeds: &seeds,
        figures: &figs,
        galleries: &galleries,
        misses: &misses,
        patients: &patients,
        patient_seg: &patient_seg,
    };
    html::write_html(&page, out)?;
    html::write_markdown(&page, out)?;
    Ok(Written {
        dir: out.to_path_buf(),
        figures: figs.len(),
        galleries: galleries.len(),
        variants: rows.len(),
    })
}

fn patient_rows(df: &polars::prelude::DataFrame) -> Vec<(String, String, String, u32, u32)> {
    let s = |c| data::strs(df, c).unwrap_or_default();
    let n = |c| data::nums(df, c).unwrap_or_default();
    let (va, sp, pa, im, er) = (
        s("variant"),
        s("split"),
        s("patient"),
        n("images"),
        n("errors"),
    );
    (0..va.len())
        .map(|i| {
            (
                va[i].clone(),
                sp[i].clone(),
                pa[i].clone(),
                im[i] as u32,
                er[i] as u32,
            )
        })
        .collect()
}

/// The variant whose outputs the galleries show: best held-out segmentation mIoU, else best
/// pseudo-label mIoU, else the first.
pub fn gallery_variant(exp: &Experiment) -> Option<&RunData> {
    let score = |r: &RunData| r.headline_miou().unwrap_or(f64::NEG_INFINITY);
    exp.variants
        .iter()
        .filter(|r| r.error.is_none())
        .max_by(|a, b| score(a).total_cmp(&score(b)))
        .or(exp.variants.first())
}

/// Per-image facts of a run for captions and ranking: its prediction and scores.
struct ImageFacts<'a> {
    p: std::borrow::Cow<'a, data::Prediction>,
    pseudo_miou: f64,
    seg_miou: f64,
}

fn image_facts(r: &RunData) -> BTreeMap<String, ImageFacts<'_>> {
    let pm = r.per_image(Table::PseudoImages, metric::MIOU);
    let sm = r.per_image(Table::SegImages, metric::MIOU);
    let get = |m: &BTreeMap<String, f64>, id: &str| m.get(id).copied().unwrap_or(f64::NAN);
    if r.classify_level() == "patch" {
        // A patch-level classifier predicts windows, not images: the images come from the
        // pseudo-label table, without an image-level prediction.
        let Some(t) = r.table(Table::PseudoImages) else {
            return BTreeMap::new();
        };
        let col = |c: &str| data::strs(t, c).unwrap_or_default();
        let (ids, pats, cls, sps) = (col("id"), col("patient"), col("class"), col("split"));
        return (0..ids.len().min(pats.len()).min(cls.len()).min(sps.len()))
            .map(|i| {
                let p = data::Prediction {
                    id: ids[i].clone(),
                    patient: pats[i].clone(),
                    class: cls[i].clone(),
                    split: sps[i].clone(),
                    predicted: String::new(),
                    correct: true,
                    p_positive: f64::NAN,
                };
                let facts = ImageFacts {
                    p: std::borrow::Cow::Owned(p),
                    pseudo_miou: get(&pm, &ids[i]),
                    seg_miou: get(&sm, &ids[i]),
                };
                (ids[i].clone(), facts)
            })
            .collect();
    }
    r.predictions
        .iter()
        .map(|p| {
            (
                p.id.clone(),
                ImageFacts {
                    p: std::borrow::Cow::Borrowed(p),
                    pseudo_miou: get(&pm, &p.id),
                    seg_miou: get(&sm, &p.id),
                },
            )
        })
        .collect()
}

fn caption(id: &str, f: &ImageFacts) -> String {
    let mut c = if f.p.p_positive.is_finite() {
        format!(
            "{id} · patient {} · {} → {} (p = {:.2})",
            f.p.patient, f.p.class, f.p.predicted, f.p.p_positive
        )
    } else {
        format!("{id} · patient {} · {}", f.p.patient, f.p.class)
    };
    if f.pseudo_miou.is_finite() {
        c.push_str(&format!(" · pseudo mIoU {:.2}", f.pseudo_miou));
    }
    if f.seg_miou.is_finite() {
        c.push_str(&format!(" · seg mIoU {:.2}", f.seg_miou));
    }
    c
}

fn galleries(
    exp: &Experiment,
    registry: Option<&Registry>,
    dir: &Path,
    opts: &ReportOptions,
    misses: &[tables::Miss],
) -> Result<Vec<GalleryRef>> {
    let mut out = Vec::new();
    let Some(run) = gallery_variant(exp) else {
        return Ok(out);
    };
    let spec = registry.and_then(|reg| reg.get(run.cfg("dataset").unwrap_or("")));
    let src = Sources::new(run, spec);
    let facts = image_facts(run);
    let split = run.eval_split();
    let score = |f: &ImageFacts| {
        if f.seg_miou.is_finite() {
            f.seg_miou
        } else {
            f.pseudo_miou
        }
    };
    let pos = run.positive_class().unwrap_or_default();
    // Under patch-level labels every image may hold foreground.
    let every_positive = run.classify_level() == "patch";
    let mut held: Vec<(&String, &ImageFacts)> = facts
        .iter()
        .filter(|(_, f)| f.p.split == split.as_str() && score(f).is_finite())
        .collect();
    held.sort_by(|a, b| score(b.1).total_cmp(&score(a.1)).then(a.0.cmp(b.0)));
    let rows_of = |ids: Vec<&String>| -> Vec<Row> {
        ids.into_iter()
            .filter_map(|id| {
                Some(Row {
                    id: id.clone(),
                    caption: caption(id, facts.get(id)?),
                })
            })
            .collect()
    };
    let n = opts.gallery_rows;
    let best = rows_of(
        held.iter()
            .filter(|(_, f)| every_positive || f.p.class == pos)
            .take(n)
            .map(|(id, _)| *id)
            .collect(),
    );
    let worst = rows_of(held.iter().rev().take(n).map(|(id, _)| *id).collect());
    let unknown: Vec<&String> = opts
        .images
        .iter()
        .filter(|id| !facts.contains_key(id.split_once('@').map_or(id.as_str(), |(i, _)| i)))
        .collect();
    if !unknown.is_empty() {
        let mut known: Vec<&String> = facts.keys().collect();
        known.sort();
        return Err(Error::Usage(format!(
            "--images: no image {} in run `{}` (ids look like: {}{})",
            unknown
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", "),
            run.id,
            known
                .iter()
                .take(3)
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if known.len() > 3 { ", …" } else { "" }
        )));
    }
    let chosen: Vec<Row> = opts
        .images
        .iter()
        .map(|id| Row {
            id: id.clone(),
            caption: facts
                .get(id)
                .map(|f| caption(id, f))
                .unwrap_or_else(|| format!("{id} (not in this run)")),
        })
        .collect();
    let what = format!(
        "variant {} ({split} split): image | CAM | confident map (CAM ≥ {}) | pseudo label | ground truth | prediction | outlines (truth green, pseudo red, prediction blue)",
        run.id,
        run.cfg("cam.threshold").unwrap_or("?")
    );
    for (file, title, rows) in [
        ("chosen.png", "Chosen images", chosen),
        ("best.png", "Best segmented images (positive class)", best),
        ("worst.png", "Worst segmented images", worst),
    ] {
        if gallery::write(&src, &rows, gallery::ALL, &what, &dir.join(file))? {
            out.push(GalleryRef {
                file: file.into(),
                title: title.into(),
                caption: what.clone(),
            });
        }
    }
    // misclassified images of the gallery variant's classifier, held-out split first
    let mut mine: Vec<&tables::Miss> = misses.iter().filter(|m| m.variant == run.id).collect();
    mine.sort_by_key(|m| (m.split != split.as_str(), m.split.clone()));
    let rows: Vec<Row> = mine
        .iter()
        .take(8)
        .map(|m| Row {
            id: m.id.clone(),
            caption: format!(
                "{} ({}) · patient {} · {} predicted {} with confidence {:.2}",
                m.id, m.split, m.patient, m.class, m.predicted, m.confidence
            ),
        })
        .collect();
    let panels = [Panel::Image, Panel::Cam, Panel::Truth];
    let what_m = format!(
        "variant {}: image | CAM of the positive class | ground truth",
        run.id
    );
    if gallery::write(
        &src,
        &rows,
        &panels,
        &what_m,
        &dir.join("misclassified.png"),
    )? {
        out.push(GalleryRef {
            file: "misclassified.png".into(),
            title: "Misclassified images".into(),
            caption: what_m,
        });
    }
    Ok(out)
}
