//! Models: classifier backbones (VGG-16, ResNet-18/50) with a global-average-pool → linear head
//! (so CAMs are exact and cheap), their torchvision-compatible parameter names, initialisation
//! and weight loading.

pub mod backbone;
pub mod conv;
pub(crate) mod cpu_op;
#[cfg(feature = "cudnn")]
pub mod cudnn;
pub mod deeplab;
pub mod depthwise;
pub mod efficientnet;
pub mod init;
pub mod norm;
pub mod ops;
pub mod precision;
pub mod pth;
pub mod resnet;
#[cfg(test)]
mod test_util;
pub mod vgg;
pub mod weights;

pub use backbone::{Backbone, BackboneSpec, Features};
pub use vgg::{Vgg, VggConfig};
