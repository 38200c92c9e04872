//! One image of a dataset, as the scanner finds it: the type every stage, the masks and the
//! report share (its own module so that reading masks does not depend on scanning).

use std::path::PathBuf;

use serde::Serialize;

/// One image of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Unique id: the CSV id column (or the file stem) in the CSV layout; in the folder layout
    /// `<patient>/<class>/<file stem>`, unique by construction (scanners repeat tile names
    /// across slides).
    pub id: String,
    /// Image path.
    pub image: PathBuf,
    /// Mask path, if the dataset has masks.
    pub mask: Option<PathBuf>,
    /// Class index into the dataset's classes.
    pub class: usize,
    /// Patient id.
    pub patient: String,
    /// Image file size in bytes (part of the fingerprint).
    pub image_bytes: u64,
    /// Mask file size in bytes (0 without a mask).
    pub mask_bytes: u64,
}
