//! Training: losses, optimisers and learning-rate schedules, the classifier loop and the
//! segmenter (DeepLab V3+) loop with its sliding-window inference.

pub mod checkpoint;
pub mod classify;
pub mod driver;
pub mod losses;
pub mod optim;
pub mod segment;
