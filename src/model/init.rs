//! Seeded parameter initialisation.
//!
//! candle's CPU random generator cannot be seeded, so parameters are drawn here from a
//! ChaCha generator keyed by (seed, parameter name): the same seed gives the same weights,
//! whatever the creation order or thread count.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::util::hash::Hasher;

/// A `VarMap` backend that creates missing variables from a seeded generator.
pub struct Seeded {
    vm: VarMap,
    seed: u64,
}

/// A `VarBuilder` whose new variables land in `vm`, initialised from `seed`.
pub fn var_builder(vm: &VarMap, seed: u64, dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(Seeded {
            vm: vm.clone(),
            seed,
        }),
        DType::F32,
        dev.clone(),
    )
}

/// Draw `n` values for an initialiser from a generator keyed by seed and name.
/// `fan` is (fan-in, fan-out) of the parameter, for Kaiming initialisers.
pub fn sample(init: Init, n: usize, fan: (usize, usize), seed: u64, name: &str) -> Vec<f32> {
    let key = Hasher::new().field(seed.to_le_bytes()).field(name).hex();
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from_str_radix(&key[..16], 16).unwrap_or(seed));
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => (0..n).map(|_| normal(&mut rng, mean, stdev)).collect(),
        Init::Uniform { lo, up } => (0..n)
            .map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32)
            .collect(),
        Init::Kaiming { .. } => {
            let std = (2.0 / fan.0.max(1) as f64).sqrt();
            (0..n).map(|_| normal(&mut rng, 0.0, std)).collect()
        }
    }
}

/// One normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng, mean: f64, std: f64) -> f32 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random::<f64>();
    (mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

impl SimpleBackend for Seeded {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self
            .vm
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("var map poisoned".into()))?;
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch for {name}: {:?} vs {:?}", v.shape(), s);
            }
            return Ok(v.as_tensor().clone());
        }
        let dims = s.dims();
        let fan_in = dims.iter().skip(1).product::<usize>();
        let fan_out = dims.first().copied().unwrap_or(1) * dims.iter().skip(2).product::<usize>();
        let vals = sample(h, s.elem_count(), (fan_in, fan_out), self.seed, name);
        let t = Tensor::from_vec(vals, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let v = Var::from_tensor(&t)?;
        let out = v.as_tensor().clone();
        data.insert(name.to_string(), v);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self
            .vm
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("var map poisoned".into()))?;
        data.get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::Msg(format!("no variable `{name}`")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vm
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_and_right_spread() {
        let a = sample(
            Init::Randn {
                mean: 0.0,
                stdev: 0.5,
            },
            20000,
            (1, 1),
            3,
            "w",
        );
        let b = sample(
            Init::Randn {
                mean: 0.0,
                stdev: 0.5,
            },
            20000,
            (1, 1),
            3,
            "w",
        );
        let c = sample(
            Init::Randn {
                mean: 0.0,
                stdev: 0.5,
            },
            20000,
            (1, 1),
            4,
            "w",
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var.sqrt() - 0.5).abs() < 0.02,
            "{mean} {var}"
        );
    }
}
