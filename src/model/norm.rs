//! Batch normalisation with candle-nn's parameters and semantics (torchvision names `weight`,
//! `bias`, `running_mean`, `running_var`; momentum 0.1; unbiased running variance), computed
//! on the CPU by the kernels of `wsss_kernels::norm` as one custom op per layer — statistics,
//! normalisation and the affine map in two passes, the backward in two — instead of candle's
//! chain of transposes, copies and broadcasts (a dozen single-threaded passes each way).
//! Other devices and dtypes use candle-nn's `BatchNorm`.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, ModuleT, Result, Shape, Tensor, Var};
use candle_nn::VarBuilder;
use wsss_kernels::norm;

use super::cpu_op::{apply3, contiguous_f32, split, Kernel3};

/// `(B, C, H·W)` of an NCHW tensor's layout.
fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    let (b, c, h, w) = l.shape().dims4()?;
    Ok((b, c, h * w))
}

/// Per-channel `[mean; biased variance]` of `x`, shape `(2, C)`.
struct Stats;

impl CustomOp1 for Stats {
    fn name(&self) -> &'static str {
        "batch-norm-stats"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, hw) = dims(l)?;
        let (mut mean, var) = norm::channel_stats(contiguous_f32(s, l)?, b, c, hw);
        mean.extend(var);
        Ok((CpuStorage::F32(mean), Shape::from((2, c))))
    }
}

/// `y = act((x − mean)·invstd·w + bias)`, arguments `(x, w, bias)`; `act` is the identity
/// or `min(max(·, 0), cap)` (ReLU6 for `cap = 6`), fused so it is one op and one output.
struct Normalize {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    batch_stats: bool,
    cap: Option<f32>,
}

impl Kernel3 for Normalize {
    fn name(&self) -> &'static str {
        "batch-norm"
    }

    fn run(&self, [x, w, bias]: [&[f32]; 3], l: [&Layout; 3]) -> Result<(Vec<f32>, Shape)> {
        let (_, c, hw) = dims(l[0])?;
        let scale: Vec<f32> = w.iter().zip(&self.invstd).map(|(w, s)| w * s).collect();
        let shift: Vec<f32> = (0..c).map(|i| bias[i] - self.mean[i] * scale[i]).collect();
        let mut y = norm::affine(x, &scale, &shift, c, hw);
        if let Some(cap) = self.cap {
            wsss_kernels::elementwise::clamp_in_place(&mut y, cap);
        }
        Ok((y, l[0].shape().clone()))
    }

    fn grads(
        &self,
        [x, w, bias]: [&Tensor; 3],
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let masked;
        let grad = match self.cap {
            Some(cap) => {
                masked = super::conv::relu_grad_from_output(grad, res, cap)?;
                &masked
            }
            None => grad,
        };
        let op = NormalizeBwd {
            mean: self.mean.clone(),
            invstd: self.invstd.clone(),
            batch_stats: self.batch_stats,
        };
        let packed = apply3(op, [grad, x, w], false)?;
        let c = [w.elem_count()];
        let [dx, dw, db] = split(&packed, [Some(x.dims()), Some(&c[..]), Some(&c[..])])?;
        Ok([
            dx.filter(|_| x.track_op()),
            dw.filter(|_| w.track_op()),
            db.filter(|_| bias.track_op()),
        ])
    }
}

/// Backward of [`Normalize`], arguments `(∂y, x, w)`; output `[∂x | ∂w | ∂bias]` flattened.
struct NormalizeBwd {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    batch_stats: bool,
}

impl Kernel3 for NormalizeBwd {
    fn name(&self) -> &'static str {
        "batch-norm-backward"
    }

    fn run(&self, [g, x, w]: [&[f32]; 3], l: [&Layout; 3]) -> Result<(Vec<f32>, Shape)> {
        let stats = (&self.mean[..], &self.invstd[..], w);
        let (mut dx, dw, db) = norm::backward(g, x, stats, dims(l[1])?, self.batch_stats);
        dx.extend(dw);
        dx.extend(db);
        let n = dx.len();
        Ok((dx, Shape::from(n)))
    }
}

/// A batch-norm layer (affine, `eps` given, momentum 0.1): candle-nn's, whose parameters and
/// running statistics it reads and updates, computed by the fused kernels on the CPU.
#[derive(Debug, Clone)]
pub struct BatchNorm(candle_nn::BatchNorm);

/// A batch-norm layer over `c` channels, its tensors from `vb` under candle-nn's (and
/// torchvision's) names.
pub fn batch_norm(c: usize, eps: f64, vb: VarBuilder) -> Result<BatchNorm> {
    let bn = candle_nn::batch_norm(c, eps, vb)?;
    if bn.weight_and_bias().is_none() {
        candle_core::bail!("batch-norm without affine parameters");
    }
    Ok(BatchNorm(bn))
}

impl BatchNorm {
    /// `min(max(bn(x), 0), 6)` as one op on the CPU (f32), batch norm then candle's `clamp`
    /// elsewhere.
    pub fn forward_relu6(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.fast(x) {
            self.fused(x, train, Some(6.0))
        } else {
            self.0.forward_t(x, train)?.clamp(0f32, 6f32)
        }
    }

    fn fast(&self, x: &Tensor) -> bool {
        x.device().is_cpu()
            && x.dtype() == DType::F32
            && x.rank() == 4
            && self.0.running_mean().dtype() == DType::F32
    }

    fn fused(&self, x: &Tensor, train: bool, cap: Option<f32>) -> Result<Tensor> {
        let Some((weight, bias)) = self.0.weight_and_bias() else {
            candle_core::bail!("batch-norm without affine parameters");
        };
        // candle-nn holds its running statistics as variables, so these share their storage:
        // what is set here is what checkpoints save.
        let running_mean = Var::from_tensor(self.0.running_mean())?;
        let running_var = Var::from_tensor(self.0.running_var())?;
        let x = x.contiguous()?;
        let (b, _, h, w) = x.dims4()?;
        let (mean, var) = if train {
            let s = x.apply_op1_no_bwd(&Stats)?.to_vec2::<f32>()?;
            let (mean, var) = (s[0].clone(), s[1].clone());
            let n = (b * h * w) as f64;
            let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
            let m = self.0.momentum() as f32;
            let blend = |run: &Var, batch: &[f32], k: f64| -> Result<()> {
                let old = run.as_tensor().to_vec1::<f32>()?;
                let new: Vec<f32> = old
                    .iter()
                    .zip(batch)
                    .map(|(o, v)| o * (1.0 - m) + v * (k as f32) * m)
                    .collect();
                run.set(&Tensor::from_vec(new, old.len(), x.device())?)
            };
            blend(&running_mean, &mean, 1.0)?;
            blend(&running_var, &var, unbias)?;
            (mean, var)
        } else {
            (
                running_mean.as_tensor().to_vec1::<f32>()?,
                running_var.as_tensor().to_vec1::<f32>()?,
            )
        };
        let invstd = var
            .iter()
            .map(|v| 1.0 / (*v as f64 + self.0.eps()).sqrt() as f32)
            .collect();
        let op = Normalize {
            mean,
            invstd,
            batch_stats: train,
            cap,
        };
        apply3(op, [&x, weight, bias], true)
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.fast(x) {
            self.fused(x, train, None)
        } else {
            self.0.forward_t(x, train)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::rel_err;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// Output, running statistics and the gradients of input, weight and bias equal
    /// candle-nn's batch norm, in training and in evaluation, over random shapes.
    #[test]
    fn matches_candle_nn() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for (case, (b, c, h, w)) in [(2, 3, 4, 5), (1, 4, 3, 3), (4, 2, 1, 1), (3, 5, 7, 2)]
            .into_iter()
            .enumerate()
        {
            let n = b * c * h * w;
            let rand = |rng: &mut rand_chacha::ChaCha8Rng, n: usize, lo: f32, hi: f32| {
                (0..n)
                    .map(|_| rng.random_range(lo..hi))
                    .collect::<Vec<f32>>()
            };
            let xv = rand(&mut rng, n, -2.0, 3.0);
            let (wv, bv) = (rand(&mut rng, c, 0.5, 1.5), rand(&mut rng, c, -0.5, 0.5));
            let (mv, vv) = (rand(&mut rng, c, -0.2, 0.2), rand(&mut rng, c, 0.5, 2.0));
            let probe =
                Tensor::from_vec(rand(&mut rng, n, -1.0, 1.0), (b, c, h, w), &Device::Cpu).unwrap();
            for train in [true, false] {
                let make = || {
                    let mut vm = candle_nn::VarMap::new();
                    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
                    let bn = batch_norm(c, 1e-5, vb).unwrap();
                    let dev = &Device::Cpu;
                    for (name, v) in [
                        ("weight", &wv),
                        ("bias", &bv),
                        ("running_mean", &mv),
                        ("running_var", &vv),
                    ] {
                        vm.set_one(name, Tensor::from_vec(v.clone(), c, dev).unwrap())
                            .unwrap();
                    }
                    (vm, bn)
                };
                let (vm1, ours) = make();
                let (vm2, theirs) = make();
                let x1 = Var::from_vec(xv.clone(), (b, c, h, w), &Device::Cpu).unwrap();
                let x2 = Var::from_vec(xv.clone(), (b, c, h, w), &Device::Cpu).unwrap();
                let y1 = ours.forward_t(x1.as_tensor(), train).unwrap();
                let y2 = theirs.0.forward_t(x2.as_tensor(), train).unwrap();
                assert!(
                    rel_err(&y1, &y2) < 1e-4,
                    "case {case} train {train}: output"
                );
                let g1 = (&y1 * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let g2 = (&y2 * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                assert!(
                    rel_err(g1.get(&x1).unwrap(), g2.get(&x2).unwrap()) < 1e-3,
                    "case {case} train {train}: input gradient"
                );
                for name in ["weight", "bias"] {
                    let t1 = vm1.data().lock().unwrap()[name].as_tensor().clone();
                    let t2 = vm2.data().lock().unwrap()[name].as_tensor().clone();
                    assert!(
                        rel_err(g1.get(&t1).unwrap(), g2.get(&t2).unwrap()) < 1e-4,
                        "case {case} train {train}: {name} gradient"
                    );
                }
                // Batch norm fused with ReLU6 equals batch norm then candle's clamp.
                let x3 = Var::from_vec(xv.clone(), (b, c, h, w), &Device::Cpu).unwrap();
                let (_, fused) = make();
                let y3 = fused.forward_relu6(x3.as_tensor(), train).unwrap();
                let ref3 = y2.clamp(0f32, 6f32).unwrap();
                assert!(
                    rel_err(&y3, &ref3) < 1e-4,
                    "case {case} train {train}: bn+relu6"
                );
                let g3 = (&y3 * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let g4 = (&ref3 * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                assert!(
                    rel_err(g3.get(&x3).unwrap(), g4.get(&x2).unwrap()) < 1e-3,
                    "case {case} train {train}: bn+relu6 input gradient"
                );
                for name in ["running_mean", "running_var"] {
                    let t1 = vm1.data().lock().unwrap()[name].as_tensor().clone();
                    let t2 = vm2.data().lock().unwrap()[name].as_tensor().clone();
                    assert!(
                        rel_err(&t1, &t2) < 1e-5,
                        "case {case} train {train}: {name}"
                    );
                }
            }
        }
    }
}
