//! One definition of every stage table that more than one place reads: its file stem, the
//! columns of the long metric tables, the metric names readers look up, and the sources of
//! `seg_metrics`. The stage that writes a table and every reader (the report, `compare`, the
//! tests) use these names, so a new metric or source is added here once.
//!
//! Long tables (`classify_metrics`, `cam_quality`, `pseudo_metrics`, `seg_metrics`) hold one
//! row per ([`col::SPLIT`], [`col::METRIC`]) — plus [`col::SOURCE`] in `seg_metrics`, plus
//! [`col::LEVEL`] in `classify_metrics` — with the number in [`col::VALUE`].

use std::fmt;

/// A stage table, stored as `<stem>.parquet` and `<stem>.csv` in its stage's output and the
/// run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// The data stage's patient split (one row per image).
    Split,
    /// The classifier's training history (one row per epoch).
    History,
    /// The classifier's per-image predictions.
    Predictions,
    /// Classification scores per split (long).
    ClassifyMetrics,
    /// CAM mIoU against the threshold, per split.
    CamCurve,
    /// Threshold-free CAM scores per split (long).
    CamQuality,
    /// Per-image pseudo-label quality.
    PseudoImages,
    /// Pseudo-label scores per split (long).
    PseudoMetrics,
    /// The segmenter's training history (one row per epoch).
    SegmentHistory,
    /// Per-image segmentation quality.
    SegImages,
    /// Segmentation scores per split and source (long).
    SegMetrics,
}

impl Table {
    /// Every stage table, in pipeline order.
    pub const ALL: [Table; 11] = [
        Table::Split,
        Table::History,
        Table::Predictions,
        Table::ClassifyMetrics,
        Table::CamCurve,
        Table::CamQuality,
        Table::PseudoImages,
        Table::PseudoMetrics,
        Table::SegmentHistory,
        Table::SegImages,
        Table::SegMetrics,
    ];

    /// File stem.
    pub fn stem(self) -> &'static str {
        match self {
            Table::Split => "split",
            Table::History => "history",
            Table::Predictions => "predictions",
            Table::ClassifyMetrics => "classify_metrics",
            Table::CamCurve => "cam_curve",
            Table::CamQuality => "cam_quality",
            Table::PseudoImages => "pseudo_images",
            Table::PseudoMetrics => "pseudo_metrics",
            Table::SegmentHistory => "segment_history",
            Table::SegImages => "seg_images",
            Table::SegMetrics => "seg_metrics",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.stem())
    }
}

/// Column names shared by writers and readers.
pub mod col {
    /// Sample id.
    pub const ID: &str = "id";
    /// Patient id.
    pub const PATIENT: &str = "patient";
    /// Class name.
    pub const CLASS: &str = "class";
    /// Split name ([`crate::data::Split::as_str`]).
    pub const SPLIT: &str = "split";
    /// Metric name (long tables; see [`super::metric`]).
    pub const METRIC: &str = "metric";
    /// Metric value (long tables).
    pub const VALUE: &str = "value";
    /// What was scored in `seg_metrics` ([`super::Source`]).
    pub const SOURCE: &str = "source";
    /// Whether a `classify_metrics` row scores images or windows.
    pub const LEVEL: &str = "level";
}

/// Metric names (values of [`col::METRIC`]) that readers look up. The segmentation scores'
/// full set is written by [`crate::metrics::segmentation::Scores::pairs`] and
/// [`crate::metrics::boundary::BoundaryScores::pairs`].
pub mod metric {
    /// Mean IoU over the classes.
    pub const MIOU: &str = "miou";
    /// Dice of the foreground class.
    pub const DICE_FOREGROUND: &str = "dice_foreground";
    /// Boundary F-score, mean over the classes.
    pub const BOUNDARY_F: &str = "boundary_f";
    /// Boundary IoU, mean over the classes.
    pub const BOUNDARY_IOU: &str = "boundary_iou";
    /// Classification accuracy.
    pub const ACCURACY: &str = "accuracy";
    /// F1 of the positive class.
    pub const F1: &str = "f1";
    /// ROC AUC of the positive class.
    pub const AUC: &str = "auc";
    /// Area under the CAM's mIoU–threshold curve.
    pub const MIOU_AUC: &str = "miou_auc";
    /// Threshold of the CAM's best mIoU.
    pub const BEST_THRESHOLD: &str = "best_threshold";
}

/// What a `seg_metrics` row scores: the segmenter, the pseudo labels it learnt from, or a
/// baseline on the same images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// The DeepLab V3+ prediction.
    Segmenter,
    /// The pseudo labels.
    Pseudo,
    /// Every pixel background.
    AllBackground,
    /// Every pixel foreground.
    AllForeground,
    /// Otsu's threshold on the haematoxylin channel.
    Otsu,
    /// The segmenter, all background where the classifier calls the image negative.
    GatedSegmenter,
    /// Otsu, all background where the classifier calls the image negative.
    GatedOtsu,
}

impl Source {
    /// Every source, in the order `seg_metrics` lists them.
    pub const ALL: [Source; 7] = [
        Source::Segmenter,
        Source::Pseudo,
        Source::AllBackground,
        Source::AllForeground,
        Source::Otsu,
        Source::GatedSegmenter,
        Source::GatedOtsu,
    ];

    /// Name as written in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Segmenter => "segmenter",
            Source::Pseudo => "pseudo",
            Source::AllBackground => "all_background",
            Source::AllForeground => "all_foreground",
            Source::Otsu => "otsu",
            Source::GatedSegmenter => "gated_segmenter",
            Source::GatedOtsu => "gated_otsu",
        }
    }

    /// Whether this is a baseline (neither the segmenter nor the pseudo labels).
    pub fn is_baseline(self) -> bool {
        !matches!(self, Source::Segmenter | Source::Pseudo)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct() {
        let stems: std::collections::BTreeSet<_> = Table::ALL.iter().map(|t| t.stem()).collect();
        assert_eq!(stems.len(), Table::ALL.len());
        let sources: std::collections::BTreeSet<_> =
            Source::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(sources.len(), Source::ALL.len());
    }
}
