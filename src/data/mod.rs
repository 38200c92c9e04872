//! Data: the dataset registry, scanning and checking, masks, patient-level splits and the
//! built-in synthetic generator.

pub mod loader;
pub mod mask;
pub mod patches;
pub mod registry;
pub mod scan;
pub mod split;
pub mod synth;

pub use registry::{DatasetSpec, Registry};
pub use scan::{DatasetIndex, Sample};
pub use split::{Split, SplitRow};

use crate::error::Result;

/// Make a dataset available and index it: synthetic entries are generated on first use.
pub fn open(spec: &DatasetSpec) -> Result<DatasetIndex> {
    if let Some(p) = &spec.synth {
        synth::ensure(&spec.root, &spec.classes, p)?;
    }
    scan::index(spec)
}
