//! Binary classification metrics: accuracy, balanced accuracy, precision, recall, F1, ROC AUC
//! and the confusion matrix, at image level and at patient level.
//!
//! Convention: class 1 is the positive class (the registry's `positive_class`). Undefined
//! ratios (0/0, e.g. precision with no positive prediction) are reported as 0, and AUC with a
//! single class present as NaN, so that a table shows the gap instead of a made-up number.

use std::collections::BTreeMap;

use serde::Serialize;

/// Confusion matrix of a binary problem: `m[true][pred]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// True negatives.
    pub tn: u64,
    /// False positives.
    pub fp: u64,
    /// False negatives.
    pub fn_: u64,
    /// True positives.
    pub tp: u64,
}

impl Confusion {
    /// Count labels against predictions.
    pub fn from_labels(truth: &[usize], pred: &[usize]) -> Self {
        let mut c = Confusion::default();
        for (&t, &p) in truth.iter().zip(pred) {
            match (t > 0, p > 0) {
                (false, false) => c.tn += 1,
                (false, true) => c.fp += 1,
                (true, false) => c.fn_ += 1,
                (true, true) => c.tp += 1,
            }
        }
        c
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// All scalar metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Number of items.
    pub n: usize,
    /// (TP + TN) / N.
    pub accuracy: f64,
    /// Mean of sensitivity and specificity.
    pub balanced_accuracy: f64,
    /// TP / (TP + FP).
    pub precision: f64,
    /// TP / (TP + FN) (sensitivity).
    pub recall: f64,
    /// TN / (TN + FP).
    pub specificity: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Area under the ROC curve of the positive-class probability.
    pub auc: f64,
    /// The confusion matrix.
    pub confusion: Confusion,
}

impl Metrics {
    /// Metrics from true labels and positive-class probabilities (prediction = p ≥ 0.5).
    pub fn compute(truth: &[usize], p_pos: &[f64]) -> Self {
        let pred: Vec<usize> = p_pos.iter().map(|&p| usize::from(p >= 0.5)).collect();
        let c = Confusion::from_labels(truth, &pred);
        let precision = ratio(c.tp, c.tp + c.fp);
        let recall = ratio(c.tp, c.tp + c.fn_);
        let specificity = ratio(c.tn, c.tn + c.fp);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Metrics {
            n: truth.len(),
            accuracy: ratio(c.tp + c.tn, truth.len() as u64),
            balanced_accuracy: (recall + specificity) / 2.0,
            precision,
            recall,
            specificity,
            f1,
            auc: roc_auc(truth, p_pos),
            confusion: c,
        }
    }

    /// `(name, value)` pairs for long-format tables.
    pub fn pairs(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("accuracy", self.accuracy),
            ("balanced_accuracy", self.balanced_accuracy),
            ("precision", self.precision),
            ("recall", self.recall),
            ("specificity", self.specificity),
            ("f1", self.f1),
            ("auc", self.auc),
            ("tn", self.confusion.tn as f64),
            ("fp", self.confusion.fp as f64),
            ("fn", self.confusion.fn_ as f64),
            ("tp", self.confusion.tp as f64),
        ]
    }
}

/// ROC AUC by the Mann–Whitney statistic (ties count one half). NaN if a class is absent.
pub fn roc_auc(truth: &[usize], score: &[f64]) -> f64 {
    let mut idx: Vec<usize> = (0..truth.len()).collect();
    idx.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
    let mut ranks = vec![0.0; truth.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && score[idx[j + 1]] == score[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[idx[k]] = r;
        }
        i = j + 1;
    }
    let n_pos = truth.iter().filter(|&&t| t > 0).count() as f64;
    let n_neg = truth.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    let sum_pos: f64 = truth
        .iter()
        .zip(&ranks)
        .filter(|(t, _)| **t > 0)
        .map(|(_, r)| r)
        .sum();
    (sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// Patient-level inputs: each patient's label (majority of its images, ties → positive) and
/// the mean positive probability of its images.
pub fn by_patient(
    patients: &[String],
    truth: &[usize],
    p_pos: &[f64],
) -> (Vec<String>, Vec<usize>, Vec<f64>) {
    let mut acc: BTreeMap<&str, (usize, usize, f64)> = BTreeMap::new();
    for ((p, &t), &s) in patients.iter().zip(truth).zip(p_pos) {
        let e = acc.entry(p).or_insert((0, 0, 0.0));
        e.0 += usize::from(t > 0);
        e.1 += 1;
        e.2 += s;
    }
    let mut ids = Vec::new();
    let mut t = Vec::new();
    let mut s = Vec::new();
    for (p, (pos, n, sum)) in acc {
        ids.push(p.to_string());
        t.push(usize::from(2 * pos >= n));
        s.push(sum / n as f64);
    }
    (ids, t, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn metrics_by_hand() {
        // truth: 1 1 1 0 0 ; p: .9 .4 .6 .2 .7 → pred 1 0 1 0 1 → TP 2, FN 1, TN 1, FP 1
        let m = Metrics::compute(&[1, 1, 1, 0, 0], &[0.9, 0.4, 0.6, 0.2, 0.7]);
        assert_eq!(
            m.confusion,
            Confusion {
                tn: 1,
                fp: 1,
                fn_: 1,
                tp: 2
            }
        );
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.specificity - 0.5).abs() < 1e-12);
        assert!((m.balanced_accuracy - (2.0 / 3.0 + 0.5) / 2.0).abs() < 1e-12);
        assert!((m.f1 - 2.0 / 3.0).abs() < 1e-12);
        // Pairs (pos, neg) ordered correctly: .9>.2 .9>.7 .4>.2 .6>.2 .6<.7 .4<.7 → 4 of 6.
        assert!((m.auc - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn auc_edge_cases() {
        assert_eq!(roc_auc(&[0, 1], &[0.3, 0.3]), 0.5);
        assert!(roc_auc(&[1, 1], &[0.3, 0.4]).is_nan());
        assert_eq!(Metrics::compute(&[0, 0], &[0.1, 0.2]).precision, 0.0);
    }

    #[test]
    fn patient_aggregation() {
        let p: Vec<String> = ["a", "a", "b", "b", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (ids, t, s) = by_patient(&p, &[1, 0, 0, 0, 1], &[0.8, 0.6, 0.1, 0.2, 0.3]);
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(t, [1, 0]);
        assert!((s[0] - 0.7).abs() < 1e-12 && (s[1] - 0.2).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn auc_matches_pair_counting(v in proptest::collection::vec((0usize..2, 0u8..6), 2..40)) {
            let truth: Vec<usize> = v.iter().map(|x| x.0).collect();
            let score: Vec<f64> = v.iter().map(|x| x.1 as f64).collect();
            let (mut num, mut den) = (0.0, 0.0);
            for i in 0..v.len() { for j in 0..v.len() {
                if truth[i] == 1 && truth[j] == 0 {
                    den += 1.0;
                    num += if score[i] > score[j] { 1.0 } else if score[i] == score[j] { 0.5 } else { 0.0 };
                }
            }}
            let auc = roc_auc(&truth, &score);
            if den == 0.0 { prop_assert!(auc.is_nan()); } else { prop_assert!((auc - num / den).abs() < 1e-12); }
        }
    }
}
