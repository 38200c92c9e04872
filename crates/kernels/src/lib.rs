//! The CPU kernels under wsss's models, on plain slices (no tensor library): a blocked f32
//! matrix product with caller-supplied packing ([`sgemm`]), 2-D convolution forward and
//! backward built on it with the patch matrix read straight from the image ([`conv`]), and
//! the element-wise ops around a conv (bias + ReLU, ReLU's backward, 2×2 max-pool;
//! [`elementwise`]), depthwise convolution ([`depthwise`]), batch normalisation ([`norm`]),
//! bilinear resizing and its adjoint ([`resize`]), 3×3 convolutions by Winograd's F(2×2, 3×3)
//! ([`winograd`], chosen per layer shape by [`conv`]) and the AdamW update ([`optim`]). The GEMM's
//! register tile is chosen at run time ([`sgemm::isa`]: AVX-512, AVX2 or portable).
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
pub mod resize;
pub mod sgemm;
pub mod winograd;

/// Threads of the current rayon pool (at least 1).
pub fn threads() -> usize {
    rayon::current_num_threads().max(1)
}
