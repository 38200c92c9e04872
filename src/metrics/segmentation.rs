//! Segmentation metrics from a dataset-level confusion matrix (pixels summed over all images,
//! as the peer repositories do), so large and small images weigh by their pixels.
//!
//! Counting rules: a pixel whose ground truth is [`IGNORE`] is not counted; a pixel whose
//! *prediction* is [`IGNORE`] (a pseudo label's uncertain band) is not counted either, and the
//! share of such pixels is reported separately as `ignored_fraction`. Background (label 0) is a
//! class like any other: mIoU averages background and foreground IoU. A class absent from both
//! truth and prediction has an undefined IoU (`NaN`) and is left out of the mean.

use serde::Serialize;

use crate::data::mask::IGNORE;
use crate::table::schema::metric;

/// Confusion matrix `m[truth][pred]` over `k` classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    k: usize,
    m: Vec<u64>,
    /// Pixels with a valid truth whose prediction was [`IGNORE`].
    pub ignored: u64,
}

/// Scores derived from a confusion matrix.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SegScores {
    /// IoU per class (`NaN` when the class is absent from truth and prediction).
    pub iou: Vec<f64>,
    /// Dice (F1) per class.
    pub dice: Vec<f64>,
    /// Mean IoU over classes with a defined IoU.
    pub miou: f64,
    /// Frequency-weighted IoU (weights = ground-truth pixel share).
    pub fwiou: f64,
    /// Mean Dice over classes with a defined Dice.
    pub mdice: f64,
    /// Pixel accuracy.
    pub pixel_accuracy: f64,
    /// Foreground precision (class 1; `NaN` when nothing is predicted foreground).
    pub precision: f64,
    /// Foreground recall (class 1).
    pub recall: f64,
    /// Share of valid-truth pixels whose prediction was ignore.
    pub ignored_fraction: f64,
    /// Pixels counted.
    pub pixels: u64,
}

impl Confusion {
    /// An empty matrix over `k` classes.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            m: vec![0; k * k],
            ignored: 0,
        }
    }

    /// Count one image (equal lengths; labels ≥ `k` other than [`IGNORE`] are not counted).
    pub fn add(&mut self, truth: &[u8], pred: &[u8]) {
        for (&t, &p) in truth.iter().zip(pred) {
            if t == IGNORE || t as usize >= self.k {
                continue;
            }
            if p == IGNORE {
                self.ignored += 1;
                continue;
            }
            if (p as usize) < self.k {
                self.m[t as usize * self.k + p as usize] += 1;
            }
        }
    }

    /// Add a count directly.
    pub fn add_count(&mut self, truth: usize, pred: usize, n: u64) {
        self.m[truth * self.k + pred] += n;
    }

    /// Merge another matrix.
    pub fn merge(&mut self, o: &Confusion) {
        for (a, b) in self.m.iter_mut().zip(&o.m) {
            *a += b;
        }
        self.ignored += o.ignored;
    }

    /// Entry `[truth][pred]`.
    pub fn get(&self, truth: usize, pred: usize) -> u64 {
        self.m[truth * self.k + pred]
    }

    /// Derived scores.
    pub fn scores(&self) -> SegScores {
        let k = self.k;
        let total: u64 = self.m.iter().sum();
        let mut iou = vec![f64::NAN; k];
        let mut dice = vec![f64::NAN; k];
        let mut fw = 0.0;
        let mut diag = 0u64;
        for c in 0..k {
            let tp = self.get(c, c);
            let row: u64 = (0..k).map(|p| self.get(c, p)).sum();
            let col: u64 = (0..k).map(|t| self.get(t, c)).sum();
            let union = row + col - tp;
            diag += tp;
            if union > 0 {
                iou[c] = tp as f64 / union as f64;
                dice[c] = 2.0 * tp as f64 / (row + col) as f64;
                if total > 0 {
                    fw += row as f64 / total as f64 * iou[c];
                }
            }
        }
        let mean = |v: &[f64]| {
            let d: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
            if d.is_empty() {
                f64::NAN
            } else {
                d.iter().sum::<f64>() / d.len() as f64
            }
        };
        let ratio = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { f64::NAN };
        let (precision, recall) = if k > 1 {
            let tp = self.get(1, 1);
            let pred1: u64 = (0..k).map(|t| self.get(t, 1)).sum();
            let true1: u64 = (0..k).map(|p| self.get(1, p)).sum();
            (ratio(tp, pred1), ratio(tp, true1))
        } else {
            (f64::NAN, f64::NAN)
        };
        SegScores {
            miou: mean(&iou),
            mdice: mean(&dice),
            iou,
            dice,
            fwiou: if total > 0 { fw } else { f64::NAN },
            pixel_accuracy: ratio(diag, total),
            precision,
            recall,
            ignored_fraction: ratio(self.ignored, total + self.ignored),
            pixels: total,
        }
    }
}

impl SegScores {
    /// `(name, value)` pairs for a long-format table (binary tasks name the classes
    /// `background` and `foreground`).
    pub fn pairs(&self) -> Vec<(String, f64)> {
        let name = |c: usize| match (self.iou.len(), c) {
            (2, 0) => "background".to_string(),
            (2, 1) => "foreground".to_string(),
            _ => format!("class{c}"),
        };
        let mut v = vec![
            (metric::MIOU.to_string(), self.miou),
            ("fwiou".to_string(), self.fwiou),
            ("mdice".to_string(), self.mdice),
            ("pixel_accuracy".to_string(), self.pixel_accuracy),
            ("precision".to_string(), self.precision),
            ("recall".to_string(), self.recall),
            ("ignored_fraction".to_string(), self.ignored_fraction),
        ];
        for c in 0..self.iou.len() {
            v.push((format!("iou_{}", name(c)), self.iou[c]));
            v.push((format!("dice_{}", name(c)), self.dice[c]));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Truth / prediction over 10 pixels, worked out by hand:
    /// truth 0 0 0 0 1 1 1 1 255 255, pred 0 0 1 255 1 1 0 1 1 0.
    /// Counted: (0,0)×2, (0,1)×1, (1,1)×3, (1,0)×1; ignored prediction ×1; truth-ignore ×2.
    #[test]
    fn scores_by_hand_with_ignore() {
        let mut c = Confusion::new(2);
        c.add(
            &[0, 0, 0, 0, 1, 1, 1, 1, 255, 255],
            &[0, 0, 1, 255, 1, 1, 0, 1, 1, 0],
        );
        assert_eq!(
            (c.get(0, 0), c.get(0, 1), c.get(1, 0), c.get(1, 1)),
            (2, 1, 1, 3)
        );
        let s = c.scores();
        // IoU_0 = 2/(2+1+1) = 0.5, IoU_1 = 3/(3+1+1) = 0.6.
        assert!((s.iou[0] - 0.5).abs() < 1e-12 && (s.iou[1] - 0.6).abs() < 1e-12);
        assert!((s.miou - 0.55).abs() < 1e-12);
        // Dice_0 = 4/6, Dice_1 = 6/8.
        assert!((s.dice[0] - 4.0 / 6.0).abs() < 1e-12 && (s.dice[1] - 0.75).abs() < 1e-12);
        // FwIoU = 3/7·0.5 + 4/7·0.6; accuracy = 5/7.
        assert!((s.fwiou - (3.0 / 7.0 * 0.5 + 4.0 / 7.0 * 0.6)).abs() < 1e-12);
        assert!((s.pixel_accuracy - 5.0 / 7.0).abs() < 1e-12);
        assert!((s.precision - 0.75).abs() < 1e-12 && (s.recall - 0.75).abs() < 1e-12);
        assert!((s.ignored_fraction - 1.0 / 8.0).abs() < 1e-12);
        assert_eq!(s.pixels, 7);
    }

    #[test]
    fn absent_class_is_left_out_of_the_mean() {
        // Three classes, class 2 never appears: mIoU is the mean of classes 0 and 1.
        let mut c = Confusion::new(3);
        c.add(&[0, 0, 1, 1], &[0, 0, 1, 0]);
        let s = c.scores();
        assert!(s.iou[2].is_nan());
        // IoU_0 = 2/3, IoU_1 = 1/2.
        assert!((s.miou - (2.0 / 3.0 + 0.5) / 2.0).abs() < 1e-12);
        // All-background image, perfectly predicted: foreground IoU undefined, mIoU = 1.
        let mut c = Confusion::new(2);
        c.add(&[0; 5], &[0; 5]);
        assert_eq!(c.scores().miou, 1.0);
        assert!(c.scores().precision.is_nan());
    }
}
