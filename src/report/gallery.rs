//! Image galleries like the talk's slides: one row per image, one panel per step of the method
//! — image | CAM heatmap overlay | confident map | pseudo label | ground truth | prediction — with
//! a caption naming the image, its patient, class, prediction and scores.
//!
//! Panels are read from the run directory (`cams/`, `pseudo_labels/`, `predictions/`) and the
//! dataset (image, mask); a panel whose file is missing is drawn grey, so a run without a
//! segmenter still gets a gallery.

use std::path::{Path, PathBuf};

use image::{imageops, GrayImage, Rgb, RgbImage};
use plotters::prelude::*;

use super::data::{strs, RunData};
use super::figures::{fe, register_font, FONT};
use crate::cam;
use crate::data::registry::DatasetSpec;
use crate::data::scan::Sample;
use crate::error::{Error, Result};

/// One panel of a gallery row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    /// The H&E image.
    Image,
    /// The normalised CAM as a jet heatmap over the image.
    Cam,
    /// Where the CAM reaches the confidence threshold.
    Confident,
    /// The pseudo label (after refinement).
    Pseudo,
    /// The ground-truth mask under the dataset's protocol.
    Truth,
    /// The segmenter's prediction.
    Prediction,
    /// The image with the foreground outlines of the ground truth (green), the pseudo label
    /// (red) and the prediction (blue): where each boundary lies, which the boundary scores
    /// measure.
    Outlines,
}

impl Panel {
    /// Column title.
    pub fn title(self) -> &'static str {
        match self {
            Panel::Image => "image",
            Panel::Cam => "CAM",
            Panel::Confident => "confident (CAM ≥ τ)",
            Panel::Pseudo => "pseudo label",
            Panel::Truth => "ground truth",
            Panel::Prediction => "prediction",
            Panel::Outlines => "outlines",
        }
    }
}

/// Every panel, in the talk's order.
pub const ALL: &[Panel] = &[
    Panel::Image,
    Panel::Cam,
    Panel::Confident,
    Panel::Pseudo,
    Panel::Truth,
    Panel::Prediction,
    Panel::Outlines,
];

/// Outline colours: ground truth, pseudo label, prediction.
const OUTLINE: [[u8; 3]; 3] = [[40, 200, 60], [230, 30, 30], [40, 90, 255]];

/// Pixels of `l` that are foreground (1) with a 4-neighbour inside the image that is not (the
/// image border itself is not an outline).
fn outline(l: &GrayImage) -> Vec<bool> {
    let (w, h) = (l.width() as i64, l.height() as i64);
    let fg = |x: i64, y: i64| {
        let (x, y) = (x.clamp(0, w - 1), y.clamp(0, h - 1));
        l.get_pixel(x as u32, y as u32).0[0] == 1
    };
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            out.push(fg(x, y) && !(fg(x - 1, y) && fg(x + 1, y) && fg(x, y - 1) && fg(x, y + 1)));
        }
    }
    out
}

/// `base` with the outlines of `labels` (each resized to `base`'s size, nearest neighbour)
/// drawn over it in [`OUTLINE`]'s colours, later ones on top.
fn draw_outlines(base: &RgbImage, labels: &[Option<GrayImage>]) -> RgbImage {
    let (w, h) = base.dimensions();
    let mut out = base.clone();
    for (l, colour) in labels.iter().zip(OUTLINE) {
        let Some(l) = l else { continue };
        let l = imageops::resize(l, w, h, imageops::FilterType::Nearest);
        for (p, on) in out.pixels_mut().zip(outline(&l)) {
            if on {
                p.0 = colour;
            }
        }
    }
    out
}

/// One row: an image id and the caption under which it is shown.
#[derive(Debug, Clone)]
pub struct Row {
    /// Sample id.
    pub id: String,
    /// Caption text.
    pub caption: String,
}

const PANEL_H: u32 = 150;
const CAPTION_H: u32 = 24;
const HEADER_H: u32 = 46;
const GAP: u32 = 6;

/// The jet colour map at `v` in [0, 1].
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let f = |x: f32| ((1.5 - (4.0 * v - x).abs()).clamp(0.0, 1.0) * 255.0) as u8;
    [f(3.0), f(2.0), f(1.0)]
}

fn label_rgb(l: u8) -> [u8; 3] {
    match l {
        0 => [40, 40, 40],
        1 => [220, 40, 40],
        _ => [255, 255, 255],
    }
}

fn labels_to_rgb(l: &GrayImage) -> RgbImage {
    RgbImage::from_fn(l.width(), l.height(), |x, y| {
        Rgb(label_rgb(l.get_pixel(x, y).0[0]))
    })
}

/// Where a run's images and masks are: its split table joined with the dataset root.
pub struct Sources<'a> {
    run: &'a RunData,
    spec: Option<&'a DatasetSpec>,
    root: Option<PathBuf>,
}

impl<'a> Sources<'a> {
    /// For a run, with the registry entry of its dataset if known (needed for ground truth).
    pub fn new(run: &'a RunData, spec: Option<&'a DatasetSpec>) -> Self {
        let root = spec
            .map(|s| s.root.clone())
            .or_else(|| run.dataset_root.clone());
        Sources { run, spec, root }
    }

    fn sample(&self, id: &str) -> Option<Sample> {
        // A window of a patch-level classifier (`<image>@<x>,<y>`) shows its image.
        let id = id.split_once('@').map_or(id, |(image, _)| image);
        let t = self.run.table(crate::table::Table::Split)?;
        let ids = strs(t, "id")?;
        let i = ids.iter().position(|x| x == id)?;
        let root = self.root.as_ref()?;
        let image = root.join(strs(t, "image")?.get(i)?);
        let mask = strs(t, "mask")
            .and_then(|m| m.get(i).cloned())
            .filter(|m| !m.is_empty())
            .map(|m| root.join(m));
        let class_name = strs(t, "class")?.get(i)?.clone();
        let class = self
            .spec
            .and_then(|s| s.classes.iter().position(|c| *c == class_name))
            .unwrap_or(0);
        Some(Sample {
            id: id.into(),
            image,
            mask,
            class,
            patient: strs(t, "patient")?.get(i)?.clone(),
            image_bytes: 0,
            mask_bytes: 0,
        })
    }

    fn panel(&self, id: &str, p: Panel, threshold: f64) -> Option<RgbImage> {
        let id = id.split_once('@').map_or(id, |(image, _)| image);
        let rd = &self.run.run_dir;
        let smp = self.sample(id);
        let img = || -> Option<RgbImage> {
            // As everywhere: the image as viewers show it (EXIF orientation applied).
            Some(
                crate::data::decode::open(&smp.as_ref()?.image, "image")
                    .ok()?
                    .into_rgb8(),
            )
        };
        let cam_map = || -> Option<GrayImage> {
            Some(
                image::open(cam::sample_file(&rd.join("cams"), id, "png"))
                    .ok()?
                    .into_luma8(),
            )
        };
        match p {
            Panel::Image => img(),
            Panel::Cam => {
                let c = cam_map()?;
                let base = img()
                    .map(|i| crate::data::resize::bilinear(&i, c.width(), c.height()))
                    .unwrap_or_else(|| RgbImage::new(c.width(), c.height()));
                Some(RgbImage::from_fn(c.width(), c.height(), |x, y| {
                    let h = jet(f32::from(c.get_pixel(x, y).0[0]) / 255.0);
                    let b = base.get_pixel(x, y).0;
                    Rgb([0, 1, 2].map(|k| ((u16::from(h[k]) + u16::from(b[k])) / 2) as u8))
                }))
            }
            Panel::Confident => {
                let c = cam_map()?;
                Some(RgbImage::from_fn(c.width(), c.height(), |x, y| {
                    Rgb(if cam::at_least(c.get_pixel(x, y).0[0], threshold) {
                        [255, 255, 255]
                    } else {
                        [0, 0, 0]
                    })
                }))
            }
            Panel::Pseudo => {
                let l = cam::read_labels(&cam::sample_file(&rd.join("pseudo_labels"), id, "png"))
                    .ok()?;
                Some(labels_to_rgb(&l))
            }
            Panel::Prediction => {
                let l =
                    cam::read_labels(&cam::sample_file(&rd.join("predictions"), id, "png")).ok()?;
                Some(labels_to_rgb(&l))
            }
            Panel::Truth => {
                let spec = self.spec?;
                let gt = crate::data::mask::ground_truth(spec, smp.as_ref()?).ok()??;
                Some(labels_to_rgb(&gt))
            }
            Panel::Outlines => {
                // Drawn at the panel's size so the lines stay one pixel wide on the page.
                let i = img()?;
                let pw = (PANEL_H as f32 * i.width() as f32 / i.height().max(1) as f32)
                    .round()
                    .max(1.0) as u32;
                let base = crate::data::resize::bilinear(&i, pw, PANEL_H);
                let truth = self
                    .spec
                    .and_then(|spec| crate::data::mask::ground_truth(spec, smp.as_ref()?).ok()?);
                let read =
                    |dir: &str| cam::read_labels(&cam::sample_file(&rd.join(dir), id, "png")).ok();
                Some(draw_outlines(
                    &base,
                    &[truth, read("pseudo_labels"), read("predictions")],
                ))
            }
        }
    }
}

/// Draw a gallery of `rows` × `panels` into `path` (PNG). Returns false when no row had an
/// image to show.
pub fn write(
    src: &Sources,
    rows: &[Row],
    panels: &[Panel],
    title: &str,
    path: &Path,
) -> Result<bool> {
    if rows.is_empty() {
        return Ok(false);
    }
    register_font();
    let threshold: f64 = src
        .run
        .cfg("cam.threshold")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0.7);
    // panel width from the first image's aspect ratio
    let aspect = rows
        .iter()
        .find_map(|r| src.panel(&r.id, Panel::Image, threshold))
        .map(|i| i.width() as f32 / i.height().max(1) as f32)
        .unwrap_or(1.0)
        .clamp(0.5, 2.5);
    let pw = (PANEL_H as f32 * aspect).round() as u32;
    // wide enough for the longest caption (about 7.5 px per character at 14 px)
    let text_w = rows
        .iter()
        .map(|r| r.caption.chars().count())
        .chain(std::iter::once(title.chars().count()))
        .max()
        .unwrap_or(0) as u32
        * 15
        / 2;
    let width = (GAP + panels.len() as u32 * (pw + GAP)).max(text_w + 2 * GAP);
    let row_h = CAPTION_H + PANEL_H + GAP;
    let height = HEADER_H + rows.len() as u32 * row_h + GAP;
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut any = false;
    for (ri, row) in rows.iter().enumerate() {
        let y = HEADER_H + ri as u32 * row_h + CAPTION_H;
        for (pi, p) in panels.iter().enumerate() {
            let x = GAP + pi as u32 * (pw + GAP);
            // Pictures are resampled smoothly, label maps by nearest neighbour.
            let smooth = matches!(p, Panel::Image | Panel::Cam | Panel::Outlines);
            let tile = match src.panel(&row.id, *p, threshold) {
                Some(img) => {
                    any |= *p == Panel::Image;
                    if smooth {
                        crate::data::resize::bilinear(&img, pw, PANEL_H)
                    } else {
                        imageops::resize(&img, pw, PANEL_H, imageops::FilterType::Nearest)
                    }
                }
                None => RgbImage::from_pixel(pw, PANEL_H, Rgb([205, 205, 205])),
            };
            imageops::replace(&mut canvas, &tile, i64::from(x), i64::from(y));
        }
    }
    if !any {
        return Ok(false);
    }
    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let head = (FONT, 17).into_font().style(FontStyle::Bold).color(&BLACK);
        root.draw(&Text::new(
            title.to_string(),
            (GAP as i32, 5),
            (FONT, 14).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(fe)?;
        for (pi, p) in panels.iter().enumerate() {
            let x = (GAP + pi as u32 * (pw + GAP)) as i32;
            root.draw(&Text::new(p.title(), (x, 22), head.clone()))
                .map_err(fe)?;
        }
        let cap = (FONT, 14).into_font().color(&BLACK);
        for (ri, row) in rows.iter().enumerate() {
            let y = (HEADER_H + ri as u32 * row_h + 4) as i32;
            root.draw(&Text::new(
                row.caption.clone(),
                (GAP as i32, y),
                cap.clone(),
            ))
            .map_err(fe)?;
        }
        root.present().map_err(fe)?;
    }
    let img = RgbImage::from_raw(width, height, buf)
        .ok_or_else(|| Error::Figure("gallery size mismatch".into()))?;
    crate::util::fs::write_png(path, &image::DynamicImage::ImageRgb8(img))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlines_by_hand() {
        // A 4×3 foreground block inside a 6×5 map: its 10 border pixels are the outline, the
        // 2 inner ones and all background are not.
        let l = GrayImage::from_fn(6, 5, |x, y| {
            image::Luma([u8::from((1..5).contains(&x) && (1..4).contains(&y))])
        });
        let o = outline(&l);
        assert_eq!(o.iter().filter(|&&b| b).count(), 10);
        assert!(!o[2 * 6 + 2] && !o[2 * 6 + 3] && o[6 + 1] && !o[0]);
        let base = RgbImage::new(6, 5);
        let drawn = draw_outlines(&base, &[Some(l.clone()), None, None]);
        assert_eq!(drawn.get_pixel(1, 1).0, OUTLINE[0]);
        assert_eq!(drawn.get_pixel(2, 2).0, [0, 0, 0]);
        // Foreground touching the image border: only its inner edge is drawn.
        let edge = GrayImage::from_fn(4, 3, |x, _| image::Luma([u8::from(x < 2)]));
        let o = outline(&edge);
        assert_eq!(
            o,
            [false, true, false, false, false, true, false, false, false, true, false, false]
        );
    }

    #[test]
    fn jet_ends_and_middle() {
        assert_eq!(jet(0.0), [0, 0, 127]);
        assert_eq!(jet(1.0), [127, 0, 0]);
        assert_eq!(jet(0.5), [127, 255, 127]);
    }
}
