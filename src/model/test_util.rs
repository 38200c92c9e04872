//! Helpers of the model's unit tests: seeded random tensors and the relative error the
//! kernel-versus-candle comparisons use.

use candle_core::{Device, Tensor};
use rand::Rng;

/// A tensor of `shape` with entries uniform in `[−1, 1)`.
pub(crate) fn rand_t(rng: &mut rand_chacha::ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product::<usize>();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `max |a − b| / max |b|` (the denominator at least 10⁻⁶).
pub(crate) fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let m = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d.to_scalar::<f32>().unwrap() / m.max(1e-6)
}
