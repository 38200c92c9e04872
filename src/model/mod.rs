//! Models: classifier backbones with a global-average-pool → linear head (so CAMs are exact
//! and cheap), their torchvision-compatible parameter names, initialisation and weight loading.

pub mod init;
pub mod vgg;
pub mod weights;

pub use vgg::{Vgg, VggConfig};
