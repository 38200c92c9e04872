//! Data: the dataset registry, scanning and checking, masks, patient-level splits and the
//! built-in synthetic generator.

pub mod decode;
pub mod hed;
pub mod loader;
pub mod mask;
pub mod patches;
pub mod protocol;
pub mod registry;
pub mod resize;
pub mod sample;
pub mod scan;
pub mod split;
pub mod stain;
pub mod synth;

pub use registry::{DatasetSpec, Registry};
pub use scan::{DatasetIndex, Sample};
pub use split::{Split, SplitRow};

use crate::error::Result;

/// Make a dataset available, index it and decode every file: synthetic entries are generated
/// on first use; every problem of every file is reported at once ([`scan::check`]). Every
/// command that needs a dataset's contents goes through here, so they all give one verdict.
pub fn open(spec: &DatasetSpec) -> Result<DatasetIndex> {
    let (idx, errs) = open_all(spec)?;
    if errs.is_empty() {
        Ok(idx)
    } else {
        Err(crate::error::Error::Dataset(errs))
    }
}

/// [`open`], returning the index as far as it could be listed beside the problems found
/// ([`scan::check_all`]).
pub fn open_all(spec: &DatasetSpec) -> Result<(DatasetIndex, Vec<String>)> {
    if let Some(p) = &spec.synth {
        synth::ensure(&spec.root, &spec.classes, p)?;
    }
    let bar = crate::progress::bar(0, "checking images");
    let r = scan::check_all(spec, &bar);
    bar.finish_and_clear();
    r
}
