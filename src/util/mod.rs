//! Small shared helpers: atomic file writes, advisory locks, hashing, the allocator's
//! settings and the CPU kernels' instruction set.
//!
//! Everything `wsss` writes goes through [`fs::atomic_write`] (temp file in the same folder,
//! then rename), so an interrupted run never leaves a half-written file under a final name.

pub mod alloc;
pub mod cpu;
pub mod fs;
pub mod hash;
pub mod interrupt;
pub mod out;
