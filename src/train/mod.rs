//! Training: one driver (`driver::fit`: resume, seeded epochs, step plans, checkpoints,
//! selection) and the learners it runs — the classifier and the segmenter (DeepLab V3+, with
//! its sliding-window inference and collapse diagnostics, and its self-training rounds) — with
//! their losses, optimisers and learning-rate schedules.

#[cfg(feature = "cuda")]
pub mod adamw_cuda;
pub mod checkpoint;
pub mod classify;
pub mod driver;
pub mod losses;
pub mod optim;
pub mod segment;
pub mod self_training;
