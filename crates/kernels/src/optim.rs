//! Optimiser updates over flat parameter slices, one multi-threaded pass per parameter tensor.

use rayon::prelude::*;

/// One AdamW step's constants.
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay β₁.
    pub beta1: f32,
    /// Second-moment decay β₂.
    pub beta2: f32,
    /// Denominator guard ε.
    pub eps: f32,
    /// Decoupled weight decay `lr · λ` for this tensor (0 for none).
    pub decay: f32,
    /// Bias corrections `1 − β₁ᵗ` and `1 − β₂ᵗ`.
    pub correction: (f32, f32),
}

/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `p ← p(1 − lr·λ) − lr · (m/c₁) / (√(v/c₂) + ε)`, in place.
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamW) {
    const CHUNK: usize = 1 << 15;
    let (c1, c2) = h.correction;
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = h.beta1 * *m + (1.0 - h.beta1) * g;
                *v = h.beta2 * *v + (1.0 - h.beta2) * g * g;
                let upd = (*m / c1) / ((*v / c2).sqrt() + h.eps);
                *p = *p * (1.0 - h.decay) - h.lr * upd;
            }
        });
}
