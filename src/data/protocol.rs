//! The label protocol (`[labels]`) as one type: what the classifier learns from (one label per
//! image, the image's label on each of its windows, or mask-derived labels per window — OEEM),
//! and what that implies downstream. Stages ask a [`Protocol`] what they need instead of each
//! branching on `labels.level`, so a new protocol is added here.

use crate::config::{LabelLevel, LabelsConfig};
use crate::data::patches;
use crate::data::registry::DatasetSpec;

/// See the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Protocol {
    level: LabelLevel,
    patch_size: u32,
}

impl Protocol {
    /// The protocol of a `[labels]` table.
    pub fn of(labels: &LabelsConfig) -> Self {
        Self {
            level: labels.level,
            patch_size: labels.patch_size,
        }
    }

    /// Whether the classifier learns from windows (patch labels, or image labels on windows).
    pub fn windows(&self) -> bool {
        self.level != LabelLevel::Image
    }

    /// Whether any image may hold foreground, whatever its class: patch labels come from masks
    /// window by window (OEEM's gland-vs-background task), so no image's pseudo label is forced
    /// to background, every image counts as positive in the CAM's histograms, and the
    /// classifier-gated baselines do not apply.
    pub fn every_image_positive(&self) -> bool {
        self.level == LabelLevel::Patch
    }

    /// Number of classifier outputs: the dataset's classes, or the two window labels.
    pub fn classifier_outputs(&self, spec: &DatasetSpec) -> usize {
        if self.level == LabelLevel::Patch {
            patches::LABELS.len()
        } else {
            spec.classes.len()
        }
    }

    /// The output whose evidence the CAM maps: the dataset's positive class, or the foreground
    /// window label.
    pub fn cam_class(&self, spec: &DatasetSpec) -> usize {
        if self.level == LabelLevel::Patch {
            patches::FOREGROUND
        } else {
            spec.positive
        }
    }

    /// The scale at which the classifier saw a whole image: `Some(train.image_size /
    /// labels.patch_size)` for classifiers trained on windows, `None` when images were resized
    /// to the input size.
    pub fn window_scale(&self, image_size: u32) -> Option<f64> {
        self.windows()
            .then(|| f64::from(image_size) / f64::from(self.patch_size.max(1)))
    }

    /// The `level` of the classifier's own rows in `classify_metrics`: `patch` (the foreground
    /// window label) or `image`.
    pub fn metrics_level(&self) -> &'static str {
        if self.level == LabelLevel::Patch {
            "patch"
        } else {
            "image"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_by_hand() {
        let l = |level| LabelsConfig {
            level,
            patch_size: 192,
            ..LabelsConfig::default()
        };
        let image = Protocol::of(&l(LabelLevel::Image));
        let windows = Protocol::of(&l(LabelLevel::ImageWindows));
        let patch = Protocol::of(&l(LabelLevel::Patch));
        assert_eq!(
            [image, windows, patch].map(|p| (p.windows(), p.every_image_positive())),
            [(false, false), (true, false), (true, true)]
        );
        assert_eq!(image.window_scale(64), None);
        assert_eq!(windows.window_scale(64), Some(64.0 / 192.0));
        assert_eq!(
            [image, windows, patch].map(|p| p.metrics_level()),
            ["image", "image", "patch"]
        );
    }
}
