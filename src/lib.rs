//! # wsss — declarative experiments in weakly supervised semantic segmentation
//!
//! A TOML manifest declares a dataset and its patient split, a classifier, a CAM method and
//! threshold, a loss variant, segmentation settings and sweeps over any of them. `wsss` turns it
//! into a plan of resolved variants and runs each through a chain of cached stages into run
//! directories that are never silently overwritten.
//!
//! Data flows one way:
//! [`config`] (manifest → resolved variants) → [`runner`] (plan, stages, cache, run dirs) →
//! [`data`] (registry, scan, split, synthetic data) → [`table`] (polars tables) → [`report`]
//! (tables, figures, galleries, HTML).
//! [`launcher`] runs a manifest's variants as separate processes (on this machine, or as SLURM
//! job arrays) over the same work directory.
//! The binary (`src/main.rs`) only parses arguments and calls [`cli::dispatch`].
//! The models' CPU arithmetic (GEMM, convolution, batch norm, ReLU, max-pool, AdamW) lives in
//! the `wsss-kernels` crate (`crates/kernels`, plain slices, always built optimised), wrapped
//! as candle custom ops in [`model::conv`] and [`model::norm`].
//!
//! Exit codes are an API: [`error::EXIT_OK`] (0), [`error::EXIT_RUN_FAILED`] (1),
//! [`error::EXIT_BAD_INPUT`] (2).

#![warn(missing_docs)]

pub mod cam;
pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod launcher;
pub mod metrics;
pub mod model;
pub mod progress;
pub mod report;
pub mod runner;
pub mod table;
pub mod train;
pub mod util;

pub use error::{Error, Result};
