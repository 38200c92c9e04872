//! Training: losses, optimisers and learning-rate schedules, and the classifier loop.

pub mod classify;
pub mod losses;
pub mod optim;
