//! Metrics: image- and patient-level classification scores, and segmentation scores from a
//! dataset-level confusion matrix.

pub mod classification;
pub mod segmentation;
