//! Boundary metrics: how well an outline is recovered, which mIoU barely sees (moving a
//! blob's outline by a few pixels changes its IoU by a few percent at most).
//!
//! - **Boundary F-score** (Csurka et al., BMVC 2013), as the DAVIS benchmark computes it
//!   (Perazzi et al., CVPR 2016; `davis2017-evaluation`'s `f_boundary`): a class's boundary
//!   map marks each pixel whose right, bottom or bottom-right neighbour differs from it
//!   (`seg2bmap`; the image border is not a boundary); a predicted boundary pixel is matched if
//!   a ground-truth boundary pixel lies within `θ` pixels (Euclidean, `θ = ⌈ratio · diagonal⌉`,
//!   DAVIS's disk dilation), and vice versa; precision, recall and `F = 2PR / (P + R)`.
//! - **Boundary IoU** (Cheng et al., CVPR 2021; `boundary-iou-api`'s `mask_to_boundary`): a
//!   mask's inner band is its pixels within `d` pixels of its contour (chessboard distance —
//!   the reference erodes `d` times with a 3×3 square — with the image border counted as
//!   contour, `d = max(1, round(ratio · diagonal))`); Boundary IoU is the IoU of the two bands.
//!
//! Both are counted per class (class `c`'s mask is `label == c`; ignore pixels belong to no
//! class) and pooled over a dataset like [`super::segmentation::Confusion`]: matched and total
//! boundary pixels, band intersections and unions summed over images, then divided — so large
//! images weigh by their outline. The per-image definitions equal the references' (tested
//! against a fixture made with them: `tests/fixtures/boundary_reference.json`).

use serde::{Deserialize, Serialize};

use crate::table::schema::metric;

/// Tolerances of the boundary metrics, as fractions of the image diagonal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoundaryTolerance {
    /// Boundary F-score match distance (DAVIS: 0.008).
    pub f: f64,
    /// Boundary IoU band width (Cheng et al.: 0.02).
    pub iou: f64,
}

impl BoundaryTolerance {
    /// Boundary F match distance in pixels for a `w × h` image: `⌈f · diagonal⌉` (DAVIS).
    pub fn f_pixels(&self, w: u32, h: u32) -> f64 {
        (self.f * diagonal(w, h)).ceil()
    }

    /// Boundary IoU band width in pixels: `max(1, round(iou · diagonal))` (Cheng et al.).
    pub fn iou_pixels(&self, w: u32, h: u32) -> u32 {
        ((self.iou * diagonal(w, h)).round() as u32).max(1)
    }
}

fn diagonal(w: u32, h: u32) -> f64 {
    (f64::from(w).powi(2) + f64::from(h).powi(2)).sqrt()
}

/// Boundary counts of one class over one or more images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCounts {
    /// Predicted boundary pixels within the tolerance of a ground-truth boundary pixel.
    pub pred_matched: u64,
    /// Predicted boundary pixels.
    pub pred: u64,
    /// Ground-truth boundary pixels within the tolerance of a predicted boundary pixel.
    pub truth_matched: u64,
    /// Ground-truth boundary pixels.
    pub truth: u64,
    /// Pixels in both inner bands (Boundary IoU).
    pub band_intersection: u64,
    /// Pixels in either inner band.
    pub band_union: u64,
}

impl ClassCounts {
    fn merge(&mut self, o: &ClassCounts) {
        self.pred_matched += o.pred_matched;
        self.pred += o.pred;
        self.truth_matched += o.truth_matched;
        self.truth += o.truth;
        self.band_intersection += o.band_intersection;
        self.band_union += o.band_union;
    }

    /// Boundary F-score; `NaN` when neither side has a boundary, 0 when only one has.
    pub fn f_score(&self) -> f64 {
        match (self.pred, self.truth) {
            (0, 0) => f64::NAN,
            (0, _) | (_, 0) => 0.0,
            (p, t) => {
                let precision = self.pred_matched as f64 / p as f64;
                let recall = self.truth_matched as f64 / t as f64;
                if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                }
            }
        }
    }

    /// Boundary IoU; `NaN` when neither mask has pixels of the class.
    pub fn boundary_iou(&self) -> f64 {
        if self.band_union == 0 {
            f64::NAN
        } else {
            self.band_intersection as f64 / self.band_union as f64
        }
    }
}

/// Boundary counts per class, over one or more images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundaryCounts {
    /// Per class.
    pub classes: Vec<ClassCounts>,
}

/// Boundary scores per class and their means over classes with a defined value.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundaryScores {
    /// Boundary F-score per class.
    pub f: Vec<f64>,
    /// Boundary IoU per class.
    pub iou: Vec<f64>,
    /// Mean boundary F-score.
    pub mean_f: f64,
    /// Mean Boundary IoU.
    pub mean_iou: f64,
}

impl BoundaryCounts {
    /// No images yet, `k` classes.
    pub fn new(k: usize) -> Self {
        Self {
            classes: vec![ClassCounts::default(); k],
        }
    }

    /// Count one `w × h` image (row-major label maps of equal length). To score several
    /// predictions against one ground truth, prepare it once with [`TruthOutlines`].
    pub fn add(&mut self, truth: &[u8], pred: &[u8], w: u32, h: u32, tol: &BoundaryTolerance) {
        let k = self.classes.len();
        self.merge(&TruthOutlines::new(truth, w, h, k, tol).counts(pred));
    }

    /// Add another set of counts (same classes).
    pub fn merge(&mut self, o: &BoundaryCounts) {
        for (a, b) in self.classes.iter_mut().zip(&o.classes) {
            a.merge(b);
        }
    }

    /// Scores per class and means.
    pub fn scores(&self) -> BoundaryScores {
        let f: Vec<f64> = self.classes.iter().map(ClassCounts::f_score).collect();
        let iou: Vec<f64> = self.classes.iter().map(ClassCounts::boundary_iou).collect();
        let mean = |v: &[f64]| {
            let d: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            if d.is_empty() {
                f64::NAN
            } else {
                d.iter().sum::<f64>() / d.len() as f64
            }
        };
        BoundaryScores {
            mean_f: mean(&f),
            mean_iou: mean(&iou),
            f,
            iou,
        }
    }
}

impl BoundaryScores {
    /// `(name, value)` pairs for a long-format table: `boundary_f`, `boundary_iou`, then per
    /// class (`background`/`foreground` for two classes, as [`super::segmentation::SegScores`]).
    pub fn pairs(&self) -> Vec<(String, f64)> {
        let name = |c: usize| match (self.f.len(), c) {
            (2, 0) => "background".to_string(),
            (2, 1) => "foreground".to_string(),
            _ => format!("class{c}"),
        };
        let mut v = vec![
            (metric::BOUNDARY_F.to_string(), self.mean_f),
            (metric::BOUNDARY_IOU.to_string(), self.mean_iou),
        ];
        for c in 0..self.f.len() {
            v.push((format!("boundary_f_{}", name(c)), self.f[c]));
            v.push((format!("boundary_iou_{}", name(c)), self.iou[c]));
        }
        v
    }
}

/// One class mask's outline quantities: its boundary map, the squared distance from every
/// pixel to that boundary, and its inner band.
struct Outline {
    boundary: Vec<bool>,
    dist2: Vec<f64>,
    band: Vec<bool>,
}

impl Outline {
    /// The outline of `mask`; `previous` (another class of the same map) lends its distance
    /// transform when the boundary maps are equal — always for two classes without ignore,
    /// since seg2bmap marks a change whichever side it is on.
    fn of(mask: &[bool], w: usize, h: usize, dpx: u32, previous: Option<&Outline>) -> Self {
        let boundary = boundary_map(mask, w, h);
        let dist2 = match previous {
            Some(o) if o.boundary == boundary => o.dist2.clone(),
            _ => distance_to_nearest(&boundary, w, h),
        };
        Self {
            band: inner_band(mask, w, h, dpx),
            boundary,
            dist2,
        }
    }

    /// The outlines of every class `0..k` of a label map.
    fn classes(labels: &[u8], w: usize, h: usize, k: usize, dpx: u32) -> Vec<Outline> {
        let mut out: Vec<Outline> = Vec::with_capacity(k);
        for c in 0..k {
            let m: Vec<bool> = labels.iter().map(|&v| usize::from(v) == c).collect();
            let o = Outline::of(&m, w, h, dpx, out.last());
            out.push(o);
        }
        out
    }
}

/// Boundary F and Boundary IoU counts of a predicted outline against a true one.
fn match_outlines(t: &Outline, p: &Outline, fpx: f64) -> ClassCounts {
    let tol2 = fpx * fpx;
    let matched = |b: &[bool], d: &[f64]| {
        b.iter()
            .zip(d)
            .filter(|(&on, &d2)| on && d2 <= tol2)
            .count() as u64
    };
    let (mut inter, mut union) = (0u64, 0u64);
    for (a, b) in t.band.iter().zip(&p.band) {
        inter += u64::from(*a && *b);
        union += u64::from(*a || *b);
    }
    ClassCounts {
        pred_matched: matched(&p.boundary, &t.dist2),
        pred: p.boundary.iter().filter(|&&b| b).count() as u64,
        truth_matched: matched(&t.boundary, &p.dist2),
        truth: t.boundary.iter().filter(|&&b| b).count() as u64,
        band_intersection: inter,
        band_union: union,
    }
}

/// The counts of one class in one image: `truth` and `pred` its masks, `fpx` the boundary F
/// match distance and `dpx` the Boundary IoU band width, in pixels.
pub fn class_counts(
    truth: &[bool],
    pred: &[bool],
    w: usize,
    h: usize,
    fpx: f64,
    dpx: u32,
) -> ClassCounts {
    match_outlines(
        &Outline::of(truth, w, h, dpx, None),
        &Outline::of(pred, w, h, dpx, None),
        fpx,
    )
}

/// One image's ground truth with its per-class outlines computed once, to score several
/// predictions of the image (the segmenter, its pseudo labels, the baselines).
pub struct TruthOutlines {
    w: usize,
    h: usize,
    fpx: f64,
    dpx: u32,
    classes: Vec<Outline>,
}

impl TruthOutlines {
    /// Prepare a `w × h` ground-truth label map over `k` classes.
    pub fn new(truth: &[u8], w: u32, h: u32, k: usize, tol: &BoundaryTolerance) -> Self {
        let (wu, hu) = (w as usize, h as usize);
        let dpx = tol.iou_pixels(w, h);
        Self {
            w: wu,
            h: hu,
            fpx: tol.f_pixels(w, h),
            dpx,
            classes: Outline::classes(truth, wu, hu, k, dpx),
        }
    }

    /// The counts of one prediction (same size) against this ground truth.
    pub fn counts(&self, pred: &[u8]) -> BoundaryCounts {
        let p = Outline::classes(pred, self.w, self.h, self.classes.len(), self.dpx);
        BoundaryCounts {
            classes: self
                .classes
                .iter()
                .zip(&p)
                .map(|(t, p)| match_outlines(t, p, self.fpx))
                .collect(),
        }
    }
}

/// DAVIS's `seg2bmap` at the mask's own size: a pixel is a boundary pixel if its right, bottom
/// or bottom-right neighbour differs from it (on the last row only the right neighbour counts,
/// on the last column only the bottom one, and the last pixel is never one).
pub fn boundary_map(m: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut b = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let v = m[y * w + x];
            let e = x + 1 < w && m[y * w + x + 1] != v;
            let s = y + 1 < h && m[(y + 1) * w + x] != v;
            let se = x + 1 < w && y + 1 < h && m[(y + 1) * w + x + 1] != v;
            b[y * w + x] = e || s || se;
        }
    }
    b
}

/// Squared Euclidean distance from every pixel to the nearest `true` pixel (`f64::INFINITY`
/// where there is none), exactly, in O(N) (Felzenszwalb & Huttenlocher, Theory of Computing
/// 2012: the lower envelope of parabolas, one pass per axis).
pub fn distance_to_nearest(on: &[bool], w: usize, h: usize) -> Vec<f64> {
    const FAR: f64 = 1e20;
    if !on.contains(&true) {
        return vec![f64::INFINITY; on.len()];
    }
    let mut d: Vec<f64> = on.iter().map(|&b| if b { 0.0 } else { FAR }).collect();
    let n = w.max(h);
    let (mut f, mut out) = (vec![0.0; n], vec![0.0; n]);
    let (mut v, mut z) = (vec![0usize; n], vec![0.0; n + 1]);
    for x in 0..w {
        for y in 0..h {
            f[y] = d[y * w + x];
        }
        edt_1d(&f[..h], &mut out[..h], &mut v, &mut z);
        for y in 0..h {
            d[y * w + x] = out[y];
        }
    }
    for y in 0..h {
        f[..w].copy_from_slice(&d[y * w..(y + 1) * w]);
        edt_1d(&f[..w], &mut out[..w], &mut v, &mut z);
        d[y * w..(y + 1) * w].copy_from_slice(&out[..w]);
    }
    d.into_iter()
        .map(|v| if v >= FAR / 2.0 { f64::INFINITY } else { v })
        .collect()
}

/// One-dimensional squared distance transform of the sampled function `f` into `d`.
fn edt_1d(f: &[f64], d: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    let n = f.len();
    if n == 0 {
        return;
    }
    let mut k = 0usize;
    v[0] = 0;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    let inter = |q: usize, p: usize| {
        let (q, p) = (q as f64, p as f64);
        ((f[q as usize] + q * q) - (f[p as usize] + p * p)) / (2.0 * q - 2.0 * p)
    };
    for q in 1..n {
        let mut s = inter(q, v[k]);
        while s <= z[k] {
            k -= 1;
            s = inter(q, v[k]);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    k = 0;
    for (q, out) in d.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let dq = q as f64 - v[k] as f64;
        *out = dq * dq + f[v[k]];
    }
}

/// Boundary IoU's inner band: mask pixels within chessboard distance `d` of a pixel outside
/// the mask, the ring just outside the image counting as outside (`boundary-iou-api` pads with
/// one row/column of zeros, then erodes `d` times with a 3×3 square).
pub fn inner_band(m: &[bool], w: usize, h: usize, d: u32) -> Vec<bool> {
    // Two-pass chessboard distance to the nearest outside pixel (exact for the 8-neighbour
    // metric), started from the distance to the padding ring.
    let mut dist: Vec<u32> = (0..w * h)
        .map(|i| {
            if !m[i] {
                0
            } else {
                let (x, y) = (i % w, i / w);
                (x + 1).min(w - x).min(y + 1).min(h - y) as u32
            }
        })
        .collect();
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if dist[i] == 0 {
                continue;
            }
            let mut best = dist[i];
            for (dx, dy) in [(-1i64, -1i64), (0, -1), (1, -1), (-1, 0)] {
                let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                if nx >= 0 && ny >= 0 && (nx as usize) < w {
                    best = best.min(dist[ny as usize * w + nx as usize] + 1);
                }
            }
            dist[i] = best;
        }
    }
    for y in (0..h).rev() {
        for x in (0..w).rev() {
            let i = y * w + x;
            if dist[i] == 0 {
                continue;
            }
            let mut best = dist[i];
            for (dx, dy) in [(1i64, 1i64), (0, 1), (-1, 1), (1, 0)] {
                let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                if nx >= 0 && (nx as usize) < w && (ny as usize) < h {
                    best = best.min(dist[ny as usize * w + nx as usize] + 1);
                }
            }
            dist[i] = best;
        }
    }
    dist.iter().map(|&v| v >= 1 && v <= d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let h = rows.len();
        let w = rows[0].len();
        (
            rows.iter()
                .flat_map(|r| r.bytes().map(|b| b == b'#'))
                .collect(),
            w,
            h,
        )
    }

    /// A 10×10 square at columns `x0..x0 + 10`, rows 2..12 of a 20×16 image.
    fn sq(x0: usize) -> Vec<bool> {
        (0..20 * 16)
            .map(|i| {
                let (x, y) = (i % 20, i / 20);
                (x0..x0 + 10).contains(&x) && (2..12).contains(&y)
            })
            .collect()
    }

    #[test]
    fn boundary_map_by_hand() {
        let (m, w, h) = mask(&["....", ".##.", ".##.", "...."]);
        let b = boundary_map(&m, w, h);
        let got: Vec<String> = b
            .chunks(w)
            .map(|r| r.iter().map(|&v| if v { '1' } else { '0' }).collect())
            .collect();
        // (0,0) sees (1,1) diagonally; row 0 sees row 1's square; the square's right and
        // bottom edges see the outside.
        assert_eq!(got, ["1110", "1010", "1110", "0000"]);
    }

    #[test]
    fn distance_transform_equals_brute_force() {
        let (m, w, h) = mask(&["#.....", "......", "....#.", "......", ".#...."]);
        let d = distance_to_nearest(&m, w, h);
        for y in 0..h {
            for x in 0..w {
                let brute = (0..w * h)
                    .filter(|&i| m[i])
                    .map(|i| {
                        let (px, py) = ((i % w) as f64, (i / w) as f64);
                        (px - x as f64).powi(2) + (py - y as f64).powi(2)
                    })
                    .fold(f64::INFINITY, f64::min);
                assert_eq!(d[y * w + x], brute, "({x},{y})");
            }
        }
        assert!(distance_to_nearest(&[false; 6], 3, 2)
            .iter()
            .all(|v| v.is_infinite()));
    }

    #[test]
    fn inner_band_by_hand() {
        // A 5×5 square filling a 7×7 image's centre: band of width 1 is its outer ring (16
        // pixels); width 2 adds the next ring (8 more); the centre pixel is 3 away.
        let (m, w, h) = mask(&[
            ".......", ".#####.", ".#####.", ".#####.", ".#####.", ".#####.", ".......",
        ]);
        let count = |d| inner_band(&m, w, h, d).iter().filter(|&&b| b).count();
        assert_eq!((count(1), count(2), count(3)), (16, 24, 25));
        // A full image: the border counts as contour (the reference's zero padding).
        let full = vec![true; 16];
        assert_eq!(
            inner_band(&full, 4, 4, 1).iter().filter(|&&b| b).count(),
            12
        );
    }

    /// A 10×10 square against the same square shifted right by 2 pixels. By hand, each
    /// boundary map has 40 pixels (seg2bmap marks the square's right column and bottom row,
    /// 19, and the outside column to its left, the row above it and that corner, 21); the
    /// matches at each tolerance are checked against the definition computed by brute force,
    /// and at θ = 2 (the shift) every pixel matches.
    #[test]
    fn f_score_matches_its_definition_by_brute_force() {
        let (w, h) = (20usize, 16usize);
        let (t, p) = (sq(3), sq(5));
        for tol in [0.0, 1.0, 2.0, 3.0] {
            let c = class_counts(&t, &p, w, h, tol, 1);
            let (bt, bp) = (boundary_map(&t, w, h), boundary_map(&p, w, h));
            let near = |i: usize, other: &[bool]| {
                (0..w * h).any(|j| {
                    other[j] && {
                        let dx = (i % w) as f64 - (j % w) as f64;
                        let dy = (i / w) as f64 - (j / w) as f64;
                        dx * dx + dy * dy <= tol * tol
                    }
                })
            };
            let pm = (0..w * h).filter(|&i| bp[i] && near(i, &bt)).count() as u64;
            let tm = (0..w * h).filter(|&i| bt[i] && near(i, &bp)).count() as u64;
            assert_eq!((c.pred_matched, c.truth_matched), (pm, tm), "θ = {tol}");
            assert_eq!(c.pred, 40);
            assert_eq!(c.truth, 40);
        }
        // θ = 2 matches every pixel (the shift is 2): F = 1
        assert_eq!(class_counts(&t, &p, w, h, 2.0, 1).f_score(), 1.0);
    }

    /// Boundary IoU by hand: two 10×10 squares 2 pixels apart horizontally, band width 1.
    /// Each band is the square's outer ring: 36 pixels. They share the top and bottom rows
    /// over the 8 overlapping columns (16 pixels) and the shifted square's left column meets
    /// the first one's interior... the left column of square B (x = 5, rows 2..11) lies in
    /// A's interior except its ends, so it is not in A's band; A's right column (x = 12) is in
    /// B's interior likewise. Intersection = 2 rows × 8 columns = 16; union = 36 + 36 − 16 =
    /// 56; Boundary IoU = 16/56 = 0.285714.
    #[test]
    fn boundary_iou_by_hand() {
        let (w, h) = (20usize, 16usize);
        let c = class_counts(&sq(3), &sq(5), w, h, 1.0, 1);
        assert_eq!((c.band_intersection, c.band_union), (16, 56));
        assert!((c.boundary_iou() - 16.0 / 56.0).abs() < 1e-12);
    }

    /// Prepared ground truth (shared distance transforms) counts what the plain per-class
    /// definition counts, with and without ignore pixels in either map.
    #[test]
    fn prepared_truth_counts_what_the_definition_counts() {
        let (w, h) = (20u32, 16u32);
        let to_labels = |m: &[bool]| m.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>();
        let truth = to_labels(&sq(3));
        let mut pred = to_labels(&sq(6));
        let mut truth_ig = truth.clone();
        for i in (0..pred.len()).step_by(7) {
            pred[i] = 255;
        }
        for i in (0..truth_ig.len()).step_by(11) {
            truth_ig[i] = 255;
        }
        let tol = BoundaryTolerance { f: 0.05, iou: 0.05 };
        for t in [&truth, &truth_ig] {
            for p in [&truth, &pred] {
                let got = TruthOutlines::new(t, w, h, 2, &tol).counts(p);
                for c in 0..2u8 {
                    let tm: Vec<bool> = t.iter().map(|&v| v == c).collect();
                    let pm: Vec<bool> = p.iter().map(|&v| v == c).collect();
                    let want =
                        class_counts(&tm, &pm, 20, 16, tol.f_pixels(w, h), tol.iou_pixels(w, h));
                    assert_eq!(got.classes[c as usize], want, "class {c}");
                }
            }
        }
    }

    #[test]
    fn pooled_scores_and_edge_cases() {
        let tol = BoundaryTolerance {
            f: 0.008,
            iou: 0.02,
        };
        // identical predictions score 1 on both classes
        let truth: Vec<u8> = (0..64).map(|i| u8::from((i % 8) < 4)).collect();
        let mut b = BoundaryCounts::new(2);
        b.add(&truth, &truth, 8, 8, &tol);
        let s = b.scores();
        assert_eq!((s.mean_f, s.mean_iou), (1.0, 1.0));
        // all background predicted where the truth has an outline: F 0 for both classes,
        // Boundary IoU 0 for the foreground
        let mut b = BoundaryCounts::new(2);
        b.add(&truth, &[0u8; 64], 8, 8, &tol);
        let s = b.scores();
        assert_eq!(s.f, vec![0.0, 0.0]);
        assert_eq!(s.iou[1], 0.0);
        // neither has foreground: the foreground is undefined, not perfect
        let mut b = BoundaryCounts::new(2);
        b.add(&[0u8; 64], &[0u8; 64], 8, 8, &tol);
        let s = b.scores();
        assert!(s.f[1].is_nan() && s.iou[1].is_nan());
        assert_eq!(s.iou[0], 1.0);
        // tolerances in pixels: DAVIS rounds up, Boundary IoU rounds and keeps at least 1
        assert_eq!(tol.f_pixels(775, 522), 8.0); // 0.008 · 934.4 = 7.48 → 8
        assert_eq!(tol.iou_pixels(775, 522), 19); // 0.02 · 934.4 = 18.7 → 19
        assert_eq!(tol.iou_pixels(20, 20), 1);
    }
}
