//! Metrics: image- and patient-level classification scores, segmentation scores from a
//! dataset-level confusion matrix, boundary scores (boundary F, Boundary IoU) pooled the same
//! way; the baselines weak supervision is compared with.

pub mod baselines;
pub mod boundary;
pub mod classification;
pub mod segmentation;
