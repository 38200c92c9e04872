//! The CPU kernels under wsss's models, on plain slices (no tensor library): a blocked f32
//! matrix product with caller-supplied packing ([`sgemm`]), 2-D convolution forward and
//! backward built on it with the patch matrix read straight from the image ([`conv`]), and
//! the element-wise ops around a conv (bias + ReLU, ReLU's backward, 2×2 max-pool;
//! [`elementwise`]), depthwise convolution ([`depthwise`]), batch normalisation ([`norm`]) and the AdamW update ([`optim`]).
//!
//! A crate of its own so that it is always compiled with full optimisation (the `dev` profile
//! that `cargo test` and `cargo run` use builds wsss itself at `opt-level = 1`), and so that
//! the numerics can be read and tested apart from the autograd glue (`wsss::model::conv`).

#![warn(missing_docs)]

pub mod conv;
pub mod depthwise;
pub mod elementwise;
pub mod norm;
pub mod optim;
pub mod sgemm;

/// Threads of the current rayon pool (at least 1).
pub fn threads() -> usize {
    rayon::current_num_threads().max(1)
}
