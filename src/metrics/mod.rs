//! Metrics: image- and patient-level classification scores, and segmentation scores from a
//! dataset-level confusion matrix; the baselines weak supervision is compared with.

pub mod baselines;
pub mod classification;
pub mod segmentation;
