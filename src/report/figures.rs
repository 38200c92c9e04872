//! Figures of an experiment (plotters), each written as PNG (for slides) and SVG (for papers):
//! training curves, ROC, confusion matrices, mIoU vs CAM threshold per loss variant, pseudo-label
//! vs segmentation mIoU per variant, and per-class IoU.
//!
//! Variants that share a stage output (same cache key) are drawn once: a threshold sweep has one
//! classifier, so one training curve. Text is drawn with the embedded DejaVu Sans, so PNGs look
//! the same on every machine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::data::Rows;
use super::data::{nums, strs, Experiment, Prediction, RunData};
use super::tables::baseline_sources;
use crate::data::Split;
use crate::error::{Error, Result};
use crate::table::schema::{col, metric};
use crate::table::{Source, Table};
use crate::util::fs::atomic_write;

/// Font family registered for the figures.
pub const FONT: &str = "sans-serif";

/// A figure written by [`all`].
#[derive(Debug, Clone)]
pub struct Figure {
    /// File stem (`<stem>.png`, `<stem>.svg`).
    pub stem: String,
    /// Caption for the report.
    pub caption: String,
}

/// Categorical colours (Tableau 10), distinguishable on slides and by most colour-blind readers.
pub const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Register the embedded font once per process (plotters' bitmap backend has no system fonts).
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            let bytes = match style {
                FontStyle::Bold => dejavu::sans::bold(),
                _ => dejavu::sans::regular(),
            };
            if plotters::style::register_font(FONT, style, bytes).is_err() {
                tracing::warn!("could not register the embedded font; PNG text may be missing");
            }
        }
    });
}

/// Map any plotting error into ours.
pub(crate) fn fe<E: std::fmt::Debug>(e: E) -> Error {
    Error::Figure(format!("{e:?}"))
}

/// Draw the same figure with the bitmap and the SVG backend and write `<stem>.png` and
/// `<stem>.svg` atomically.
macro_rules! render {
    ($dir:expr, $stem:expr, $size:expr, |$root:ident| $body:block) => {{
        let (w, h): (u32, u32) = $size;
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let $root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            (|| -> Result<()> { $body })()?;
            $root.present().map_err(fe)?;
        }
        let img = image::RgbImage::from_raw(w, h, buf)
            .ok_or_else(|| Error::Figure("bitmap size mismatch".into()))?;
        crate::util::fs::write_png(
            &$dir.join(format!("{}.png", $stem)),
            &image::DynamicImage::ImageRgb8(img),
        )?;
        let mut svg = String::new();
        {
            let $root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
            (|| -> Result<()> { $body })()?;
            $root.present().map_err(fe)?;
        }
        atomic_write(&$dir.join(format!("{}.svg", $stem)), svg.as_bytes())?;
    }};
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().into()
}

/// A short readable label of a variant id: `cam.threshold=0.5,loss.variant=ce` →
/// `threshold=0.5, loss=ce`.
pub fn short_label(id: &str) -> String {
    id.split(',')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => {
                let mut parts = k.rsplitn(2, '.');
                let last = parts.next().unwrap_or(k);
                let name = match (last, parts.next()) {
                    ("variant" | "method", Some(section)) => section,
                    _ => last,
                };
                format!("{name}={v}")
            }
            None => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Variants grouped by the cache key of `stage` (first variant of each group, group label).
/// The label names the swept values that can matter to that stage (all except `exclude`
/// prefixes), or the variant id when nothing is swept.
fn distinct<'a>(exp: &'a Experiment, stage: &str, exclude: &[&str]) -> Vec<(&'a RunData, String)> {
    let varying = exp.varying_keys();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<(&RunData, String)> = Vec::new();
    for r in &exp.variants {
        let Some(key) = r.stage_keys.get(stage) else {
            continue;
        };
        if seen.contains_key(key) {
            continue;
        }
        seen.insert(key.clone(), out.len());
        let parts: Vec<String> = varying
            .iter()
            .filter(|k| !exclude.iter().any(|e| k.starts_with(e)))
            .map(|k| format!("{k}={}", r.cfg(k).unwrap_or("")))
            .collect();
        let label = if parts.is_empty() {
            r.id.clone()
        } else {
            short_label(&parts.join(","))
        };
        out.push((r, label));
    }
    out
}

/// Most lines one figure draws (the categorical palette has 10 colours).
const MAX_LINES: usize = 10;

/// At most [`MAX_LINES`] groups: the best by held-out segmentation (else pseudo-label) mIoU,
/// kept in their original order.
fn top_groups(mut groups: Vec<(&RunData, String)>) -> Vec<(&RunData, String)> {
    if groups.len() <= MAX_LINES {
        return groups;
    }
    let score = |r: &RunData| r.headline_miou().unwrap_or(f64::NEG_INFINITY);
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by(|&a, &b| score(groups[b].0).total_cmp(&score(groups[a].0)));
    let keep: std::collections::BTreeSet<usize> = order.into_iter().take(MAX_LINES).collect();
    let mut i = 0;
    groups.retain(|_| {
        i += 1;
        keep.contains(&(i - 1))
    });
    groups
}

/// Keys that cannot change a classifier.
const NOT_CLASSIFY: &[&str] = &["cam.", "segmentation.", "evaluate."];
/// Keys that cannot change a CAM.
const NOT_CAM: &[&str] = &[
    "cam.threshold",
    "cam.background_threshold",
    "cam.refine",
    "segmentation.",
    "evaluate.",
];

/// Write every figure the experiment has data for into `dir`; returns what was written.
pub fn all(exp: &Experiment, dir: &Path) -> Result<Vec<Figure>> {
    register_font();
    crate::util::fs::mkdirs(dir)?;
    let mut figs = Vec::new();
    let mut add = |stem: &str, caption: &str| {
        figs.push(Figure {
            stem: stem.into(),
            caption: caption.into(),
        })
    };
    if classify_curves(exp, dir)? {
        add(
            "classify_curves",
            "Classifier training: loss and accuracy per epoch (solid train, dashed valid).",
        );
    }
    if roc(exp, dir)? {
        add("roc", "ROC of the positive class on the held-out split.");
    }
    if confusion(exp, dir)? {
        add(
            "confusion",
            "Confusion matrices on the held-out split (colour: fraction of the true class).",
        );
    }
    if miou_threshold(exp, dir)? {
        add(
            "miou_threshold",
            "Pseudo-label mIoU vs CAM confidence threshold (held-out split), one line per CAM \
             (loss variant); dashed: the configured threshold; dots: the variants' pseudo labels.",
        );
    }
    if miou_bars(exp, dir)? {
        add(
            "miou_bars",
            "Pseudo-label vs segmentation mIoU per variant (held-out split); dashed lines: baselines.",
        );
    }
    if class_iou(exp, dir)? {
        add(
            "class_iou",
            "Per-class IoU of the segmentation (or of the pseudo labels without a segmenter).",
        );
    }
    if segment_curves(exp, dir)? {
        add(
            "segment_curves",
            "DeepLab V3+ training per epoch: loss; foreground share of the predictions vs the \
             labels on the training crops (a collapse: the solid line falls to 0); agreement \
             with the validation images' labels, pseudo labels when weak (at most 10 lines: \
             the best by held-out mIoU).",
        );
    }
    Ok(figs)
}

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

type Curve = (String, RGBColor, bool, Vec<(f64, f64)>);

/// Draw a chart's legend (the series labels) in one style everywhere.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    pos: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .label_font(font(14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .position(pos)
        .draw()
        .map_err(fe)
}

/// One panel of line curves (solid or dashed) with a legend.
fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    xdesc: &str,
    ydesc: &str,
    curves: &[Curve],
    y01: bool,
) -> Result<()> {
    let (x0, x1) = range(curves.iter().flat_map(|c| c.3.iter().map(|p| p.0)));
    let (y0, y1) = if y01 {
        (0.0, 1.02)
    } else {
        range(curves.iter().flat_map(|c| c.3.iter().map(|p| p.1)))
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(fe)?;
    let int_x = xdesc == "epoch";
    chart
        .configure_mesh()
        .x_label_formatter(&|x| {
            if int_x {
                // epochs are whole numbers: label only the ticks that fall on one
                if (x - x.round()).abs() < 1e-6 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            } else {
                format!("{x:.1}")
            }
        })
        .x_desc(xdesc)
        .y_desc(ydesc)
        .label_style(font(15))
        .axis_desc_style(font(17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(fe)?;
    for (label, c, dashed, pts) in curves {
        let c = *c;
        let style = c.stroke_width(2);
        if *dashed {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
                .map_err(fe)?;
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(fe)?;
        }
        if !label.is_empty() {
            chart
                .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
                .map_err(fe)?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
                });
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

fn history_curves(
    r: &RunData,
    table: Table,
    cols: &[(&str, bool)],
    label: &str,
    c: RGBColor,
) -> Vec<Curve> {
    let Some(t) = r.table(table) else {
        return vec![];
    };
    let Some(ep) = nums(t, "epoch") else {
        return vec![];
    };
    let mut out = Vec::new();
    for (i, (col, dashed)) in cols.iter().enumerate() {
        if let Some(v) = nums(t, col) {
            let pts: Vec<(f64, f64)> = ep
                .iter()
                .zip(v)
                .filter(|(_, y)| y.is_finite())
                .map(|(x, y)| (*x, y))
                .collect();
            if !pts.is_empty() {
                out.push((
                    if i == 0 { label.into() } else { String::new() },
                    c,
                    *dashed,
                    pts,
                ));
            }
        }
    }
    out
}

fn classify_curves(exp: &Experiment, dir: &Path) -> Result<bool> {
    let groups = top_groups(distinct(exp, "classify", NOT_CLASSIFY));
    let mut loss = Vec::new();
    let mut acc = Vec::new();
    for (i, (r, label)) in groups.iter().enumerate() {
        let c = color(i);
        loss.extend(history_curves(
            r,
            Table::History,
            &[("train_loss", false), ("valid_loss", true)],
            label,
            c,
        ));
        acc.extend(history_curves(
            r,
            Table::History,
            &[("train_accuracy", false), ("valid_accuracy", true)],
            label,
            c,
        ));
    }
    if loss.is_empty() {
        return Ok(false);
    }
    render!(dir, "classify_curves", (1400, 520), |root| {
        root.fill(&WHITE).map_err(fe)?;
        let (l, r) = root.split_horizontally(700);
        draw_lines(&l, "Classifier loss", "epoch", "loss", &loss, false)?;
        draw_lines(&r, "Classifier accuracy", "epoch", "accuracy", &acc, true)?;
        Ok(())
    });
    Ok(true)
}

fn segment_curves(exp: &Experiment, dir: &Path) -> Result<bool> {
    let groups = top_groups(distinct(exp, "segment", &["evaluate."]));
    let (mut loss, mut share, mut agree) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (r, label)) in groups.iter().enumerate() {
        let c = color(i);
        loss.extend(history_curves(
            r,
            Table::SegmentHistory,
            &[("loss", false)],
            label,
            c,
        ));
        // What shows a collapse coming: the predicted foreground share leaving the labels'.
        share.extend(history_curves(
            r,
            Table::SegmentHistory,
            &[("predicted_foreground", false), ("label_foreground", true)],
            label,
            c,
        ));
        agree.extend(history_curves(
            r,
            Table::SegmentHistory,
            &[("valid_agreement_miou", false)],
            label,
            c,
        ));
    }
    if loss.is_empty() {
        return Ok(false);
    }
    render!(dir, "segment_curves", (1800, 520), |root| {
        root.fill(&WHITE).map_err(fe)?;
        let (l, rest) = root.split_horizontally(600);
        let (m, r) = rest.split_horizontally(600);
        draw_lines(&l, "Segmenter loss (train)", "epoch", "loss", &loss, false)?;
        draw_lines(
            &m,
            "Foreground share: predicted (solid) vs labels (dashed), train crops",
            "epoch",
            "share of pixels",
            &share,
            true,
        )?;
        draw_lines(
            &r,
            "Agreement with the validation images' labels (mIoU)",
            "epoch",
            "mIoU",
            &agree,
            true,
        )?;
        Ok(())
    });
    Ok(true)
}

/// ROC points (false positive rate, true positive rate) and the AUC (trapezoid) of scores
/// for binary labels; ties are taken together.
pub fn roc_curve(scores: &[f64], positive: &[bool]) -> (Vec<(f64, f64)>, f64) {
    let p = positive.iter().filter(|b| **b).count() as f64;
    let n = positive.len() as f64 - p;
    if p == 0.0 || n == 0.0 {
        return (vec![], f64::NAN);
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut pts = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        let s = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == s {
            if positive[idx[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        pts.push((fp / n, tp / p));
    }
    let auc = pts
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum();
    (pts, auc)
}

/// The classifier's predictions on the split the report scores on.
fn eval_predictions(r: &RunData) -> Vec<&Prediction> {
    let split = r.eval_split();
    r.predictions
        .iter()
        .filter(|p| p.split == split.as_str())
        .collect()
}

fn roc(exp: &Experiment, dir: &Path) -> Result<bool> {
    let groups = top_groups(distinct(exp, "classify", NOT_CLASSIFY));
    let mut curves = Vec::new();
    for (i, (r, label)) in groups.iter().enumerate() {
        let preds = eval_predictions(r);
        let pos = r.positive_class().unwrap_or_default();
        let scores: Vec<f64> = preds.iter().map(|p| p.p_positive).collect();
        let positive: Vec<bool> = preds.iter().map(|p| p.class == pos).collect();
        let (pts, auc) = roc_curve(&scores, &positive);
        if !pts.is_empty() {
            curves.push((format!("{label} (AUC {auc:.3})"), color(i), false, pts));
        }
    }
    if curves.is_empty() {
        return Ok(false);
    }
    curves.push((
        String::new(),
        RGBColor(160, 160, 160),
        true,
        vec![(0.0, 0.0), (1.0, 1.0)],
    ));
    render!(dir, "roc", (720, 640), |root| {
        root.fill(&WHITE).map_err(fe)?;
        draw_lines(
            &root,
            "ROC (held-out split)",
            "false positive rate",
            "true positive rate",
            &curves,
            true,
        )?;
        Ok(())
    });
    Ok(true)
}

fn confusion(exp: &Experiment, dir: &Path) -> Result<bool> {
    let groups: Vec<_> = distinct(exp, "classify", NOT_CLASSIFY)
        .into_iter()
        .take(6)
        .collect();
    let mut mats = Vec::new();
    for (r, label) in &groups {
        let preds = eval_predictions(r);
        if preds.is_empty() {
            continue;
        }
        let mut classes: Vec<String> = preds
            .iter()
            .flat_map(|p| [p.class.clone(), p.predicted.clone()])
            .collect();
        classes.sort();
        classes.dedup();
        // negative class first, as in the tables
        if let Some(pos) = r.positive_class() {
            classes.retain(|c| c != &pos);
            classes.push(pos);
        }
        let k = classes.len();
        let mut m = vec![vec![0u32; k]; k];
        for p in &preds {
            let (Some(a), Some(b)) = (
                classes.iter().position(|c| *c == p.class),
                classes.iter().position(|c| *c == p.predicted),
            ) else {
                continue;
            };
            m[a][b] += 1;
        }
        mats.push((label.clone(), classes, m));
    }
    if mats.is_empty() {
        return Ok(false);
    }
    let n = mats.len() as u32;
    render!(dir, "confusion", (440 * n, 470), |root| {
        root.fill(&WHITE).map_err(fe)?;
        let panels = root.split_evenly((1, n as usize));
        for (area, (label, classes, m)) in panels.iter().zip(&mats) {
            let k = classes.len();
            let mut chart = ChartBuilder::on(area)
                .caption(label, font(18))
                .margin(14)
                .x_label_area_size(56)
                .y_label_area_size(96)
                .build_cartesian_2d(0f64..k as f64, 0f64..k as f64)
                .map_err(fe)?;
            let names = classes.clone();
            let names2 = classes.clone();
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(k * 2 + 1)
                .y_labels(k * 2 + 1)
                .x_label_formatter(&move |x| label_at(&names, *x, false))
                .y_label_formatter(&move |y| label_at(&names2, *y, true))
                .x_desc("predicted")
                .y_desc("true")
                .label_style(font(15))
                .axis_desc_style(font(16))
                .draw()
                .map_err(fe)?;
            for (a, row) in m.iter().enumerate() {
                let total: u32 = row.iter().sum();
                for (b, &count) in row.iter().enumerate() {
                    let frac = if total > 0 {
                        f64::from(count) / f64::from(total)
                    } else {
                        0.0
                    };
                    // true class `a` drawn top to bottom
                    let y = (k - 1 - a) as f64;
                    let shade = (255.0 - frac * 190.0) as u8;
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(b as f64, y), (b as f64 + 1.0, y + 1.0)],
                            RGBColor(shade, shade, 255).filled(),
                        )))
                        .map_err(fe)?;
                    let tc = if frac > 0.6 { WHITE } else { BLACK };
                    chart
                        .draw_series(std::iter::once(Text::new(
                            format!("{count}"),
                            (b as f64 + 0.45, y + 0.55),
                            font(22).color(&tc),
                        )))
                        .map_err(fe)?;
                }
            }
        }
        Ok(())
    });
    Ok(true)
}

/// Category name at the centre of a unit cell, empty elsewhere (for categorical axes).
fn label_at(names: &[String], v: f64, flip: bool) -> String {
    let f = v - v.floor();
    if (f - 0.5).abs() > 0.01 {
        return String::new();
    }
    let i = v.floor() as usize;
    let i = if flip {
        names.len().checked_sub(1 + i)
    } else {
        Some(i)
    };
    i.and_then(|i| names.get(i)).cloned().unwrap_or_default()
}

fn miou_threshold(exp: &Experiment, dir: &Path) -> Result<bool> {
    let groups = top_groups(distinct(exp, "cam", NOT_CAM));
    let mut curves = Vec::new();
    let mut thresholds = Vec::new();
    for (i, (r, label)) in groups.iter().enumerate() {
        let Some(t) = r.table(Table::CamCurve) else {
            continue;
        };
        let split = r.eval_split();
        let (Some(sp), Some(th), Some(mi)) = (
            strs(t, col::SPLIT),
            nums(t, "threshold"),
            nums(t, metric::MIOU),
        ) else {
            continue;
        };
        let pts: Vec<(f64, f64)> = (0..sp.len())
            .filter(|&j| sp[j] == split.as_str() && mi[j].is_finite())
            .map(|j| (th[j], mi[j]))
            .collect();
        if pts.is_empty() {
            continue;
        }
        curves.push((label.clone(), color(i), false, pts));
        // the variants computed from this CAM: their threshold and pseudo-label mIoU
        let cam_key = r.stage_keys.get("cam");
        let dots: Vec<(f64, f64)> = exp
            .variants
            .iter()
            .filter(|v| v.stage_keys.get("cam") == cam_key)
            .filter_map(|v| {
                let t: f64 = v.cfg("cam.threshold")?.parse().ok()?;
                let m = v.metric(Table::PseudoMetrics, split, metric::MIOU, Rows::All)?;
                Some((t, m))
            })
            .collect();
        thresholds.push((color(i), dots));
    }
    if curves.is_empty() {
        return Ok(false);
    }
    let configured: Vec<f64> = {
        let mut t: Vec<f64> = exp
            .variants
            .iter()
            .filter_map(|v| v.cfg("cam.threshold")?.parse().ok())
            .collect();
        t.sort_by(f64::total_cmp);
        t.dedup();
        t
    };
    // mark the default when it is configured, else every configured threshold
    let marks: Vec<f64> = if configured.iter().any(|t| (t - 0.7).abs() < 1e-9) {
        vec![0.7]
    } else {
        configured
    };
    render!(dir, "miou_threshold", (900, 620), |root| {
        root.fill(&WHITE).map_err(fe)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Pseudo-label mIoU vs CAM threshold", font(24))
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)
            .map_err(fe)?;
        chart
            .configure_mesh()
            .x_desc("CAM confidence threshold (normalised CAM)")
            .y_desc("mIoU (held-out split)")
            .label_style(font(15))
            .axis_desc_style(font(17))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(fe)?;
        for m in &marks {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(*m, 0.0), (*m, 1.02)],
                    6,
                    5,
                    BLACK.stroke_width(1),
                ))
                .map_err(fe)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("τ = {m:.2}"),
                    (*m + 0.01, 0.97),
                    font(15),
                )))
                .map_err(fe)?;
        }
        for (label, c, _, pts) in &curves {
            let c = *c;
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(fe)?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
                });
        }
        for (c, dots) in &thresholds {
            chart
                .draw_series(dots.iter().map(|p| Circle::new(*p, 5, c.filled())))
                .map_err(fe)?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
        Ok(())
    });
    Ok(true)
}

/// Horizontal grouped bars: one row per variant, one bar per series.
fn hbars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    xdesc: &str,
    names: &[String],
    series: &[(String, Vec<f64>)],
    refs: &[(String, f64)],
) -> Result<()> {
    let n = names.len();
    let k = series.len().max(1);
    let label_w = names.iter().map(|s| s.chars().count()).max().unwrap_or(8) as u32 * 8 + 16;
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(22))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(label_w.clamp(60, 420))
        .build_cartesian_2d(0f64..1.02f64, -0.5f64..(n as f64 - 0.5))
        .map_err(fe)?;
    let names2: Vec<String> = names.to_vec();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n.max(2) * 2 + 1)
        .y_label_formatter(&move |y| {
            let f = *y - y.round();
            if f.abs() > 0.01 {
                return String::new();
            }
            let i = y.round();
            if i < 0.0 {
                return String::new();
            }
            // first variant at the top
            names2
                .len()
                .checked_sub(1 + i as usize)
                .and_then(|j| names2.get(j))
                .cloned()
                .unwrap_or_default()
        })
        .x_desc(xdesc)
        .label_style(font(14))
        .axis_desc_style(font(16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(fe)?;
    let h = 0.8 / k as f64;
    for (si, (label, vals)) in series.iter().enumerate() {
        let c = color(si);
        let bars: Vec<Rectangle<(f64, f64)>> = vals
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| {
                let y = (n - 1 - i) as f64 + 0.4 - h * si as f64;
                Rectangle::new([(0.0, y - h), (*v, y)], c.filled())
            })
            .collect();
        let texts: Vec<Text<(f64, f64), String>> = vals
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| {
                let y = (n - 1 - i) as f64 + 0.4 - h * si as f64;
                Text::new(format!("{v:.3}"), (*v + 0.005, y - h * 0.15), font(12))
            })
            .collect();
        chart.draw_series(texts).map_err(fe)?;
        chart
            .draw_series(bars)
            .map_err(fe)?
            .label(label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], c.filled()));
    }
    // references (baselines) as dashed vertical lines, named in the legend
    const REF_COLORS: [RGBColor; 5] = [
        RGBColor(40, 40, 40),
        RGBColor(120, 120, 120),
        RGBColor(140, 60, 160),
        RGBColor(0, 120, 110),
        RGBColor(170, 110, 0),
    ];
    for (ri, (label, v)) in refs.iter().enumerate() {
        let c = REF_COLORS[ri % REF_COLORS.len()];
        chart
            .draw_series(DashedLineSeries::new(
                vec![(*v, -0.5), (*v, n as f64 - 0.5)],
                6,
                4,
                c.stroke_width(2),
            ))
            .map_err(fe)?
            .label(format!("{label} {v:.3}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

fn bar_height(n: usize, k: usize) -> u32 {
    (140 + n * (14 + 12 * k)).clamp(320, 2400) as u32
}

fn miou_bars(exp: &Experiment, dir: &Path) -> Result<bool> {
    let names: Vec<String> = exp.variants.iter().map(|v| short_label(&v.id)).collect();
    let get = |f: &dyn Fn(&RunData, Split) -> Option<f64>| -> Vec<f64> {
        exp.variants
            .iter()
            .map(|r| f(r, r.eval_split()).unwrap_or(f64::NAN))
            .collect()
    };
    let pseudo = get(&|r, s| r.metric(Table::PseudoMetrics, s, metric::MIOU, Rows::All));
    let seg = get(&|r, s| {
        r.metric(
            Table::SegMetrics,
            s,
            metric::MIOU,
            Rows::Source(Source::Segmenter),
        )
    });
    let mut series = Vec::new();
    if pseudo.iter().any(|v| v.is_finite()) {
        series.push(("pseudo labels".to_string(), pseudo));
    }
    if seg.iter().any(|v| v.is_finite()) {
        series.push(("DeepLab V3+".to_string(), seg));
    }
    if series.is_empty() {
        return Ok(false);
    }
    // baselines: the same for every variant on one split; show the first variant's
    let refs: Vec<(String, f64)> = exp
        .variants
        .first()
        .map(|r| {
            baseline_sources(r)
                .into_iter()
                // the gated segmenter differs per variant: it is a result, not a reference
                .filter(|&s| s != Source::GatedSegmenter)
                .filter_map(|s| {
                    let v = r.metric(
                        Table::SegMetrics,
                        r.eval_split(),
                        metric::MIOU,
                        Rows::Source(s),
                    )?;
                    Some((s.to_string(), v))
                })
                .collect()
        })
        .unwrap_or_default();
    let h = bar_height(names.len(), series.len());
    render!(dir, "miou_bars", (1000, h), |root| {
        root.fill(&WHITE).map_err(fe)?;
        hbars(
            &root,
            "mIoU per variant (held-out split)",
            "mIoU",
            &names,
            &series,
            &refs,
        )?;
        Ok(())
    });
    Ok(true)
}

fn class_iou(exp: &Experiment, dir: &Path) -> Result<bool> {
    let names: Vec<String> = exp.variants.iter().map(|v| short_label(&v.id)).collect();
    let has_seg = exp
        .variants
        .iter()
        .any(|r| r.table(Table::SegMetrics).is_some());
    let mut series = Vec::new();
    for class in ["background", "foreground"] {
        let m = format!("iou_{class}");
        let vals: Vec<f64> = exp
            .variants
            .iter()
            .map(|r| {
                let s = r.eval_split();
                if has_seg {
                    r.metric(Table::SegMetrics, s, &m, Rows::Source(Source::Segmenter))
                } else {
                    r.metric(Table::PseudoMetrics, s, &m, Rows::All)
                }
                .unwrap_or(f64::NAN)
            })
            .collect();
        if vals.iter().any(|v| v.is_finite()) {
            series.push((class.to_string(), vals));
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    let what = if has_seg {
        "segmentation"
    } else {
        "pseudo labels"
    };
    let h = bar_height(names.len(), series.len());
    render!(dir, "class_iou", (1000, h), |root| {
        root.fill(&WHITE).map_err(fe)?;
        hbars(
            &root,
            &format!("IoU per class, {what} (held-out split)"),
            "IoU",
            &names,
            &series,
            &[],
        )?;
        Ok(())
    });
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_by_hand() {
        // scores 0.9(+) 0.8(-) 0.7(+) 0.1(-): one inversion of four pairs → AUC 0.75
        let (pts, auc) = roc_curve(&[0.9, 0.8, 0.7, 0.1], &[true, false, true, false]);
        assert_eq!(
            pts,
            vec![(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]
        );
        assert!((auc - 0.75).abs() < 1e-12);
        // a tie between a positive and a negative counts one half
        let (_, auc) = roc_curve(&[0.5, 0.5], &[true, false]);
        assert!((auc - 0.5).abs() < 1e-12);
        assert!(roc_curve(&[0.5], &[true]).1.is_nan());
    }

    #[test]
    fn short_labels() {
        assert_eq!(
            short_label("cam.threshold=0.5,loss.variant=ce"),
            "threshold=0.5, loss=ce"
        );
        assert_eq!(short_label("cam.method=gradcam"), "cam=gradcam");
        assert_eq!(short_label("default"), "default");
    }

    #[test]
    fn categorical_labels_sit_at_cell_centres() {
        let n = vec!["a".to_string(), "b".to_string()];
        assert_eq!(label_at(&n, 0.5, false), "a");
        assert_eq!(label_at(&n, 1.5, false), "b");
        assert_eq!(label_at(&n, 0.5, true), "b");
        assert_eq!(label_at(&n, 1.0, false), "");
    }
}
