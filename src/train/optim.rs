//! Optimisers (SGD with momentum, AdamW) with savable state, and learning-rate schedules with
//! linear warm-up.
//!
//! Our own small implementations rather than candle-nn's, because a checkpoint must carry the
//! optimiser state (momentum buffers, Adam moments, step count) for an interrupted training to
//! resume exactly. Weight decay is not applied to 1-D parameters (biases, batch-norm scales),
//! as is common practice.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use wsss_kernels::optim::{adamw, AdamW};

use crate::config::{Optimizer as OptKind, Schedule};

/// Learning rate at a (fractional) epoch: linear warm-up from `base/10` over `warmup` epochs,
/// then the schedule over the remaining epochs. `step` decays ×0.1 at 1/3 and 2/3 of training;
/// `poly` uses power 0.9 (DeepLab's).
pub fn lr_at(kind: Schedule, base: f64, epoch: f64, epochs: u32, warmup: u32) -> f64 {
    let (w, total) = (warmup as f64, epochs.max(1) as f64);
    if epoch < w {
        return base * (0.1 + 0.9 * epoch / w);
    }
    let t = ((epoch - w) / (total - w).max(1e-9)).clamp(0.0, 1.0);
    match kind {
        Schedule::Constant => base,
        Schedule::Step => base * 0.1f64.powi((t * 3.0).floor().min(2.0) as i32),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
        Schedule::Poly => base * (1.0 - t).powf(0.9),
    }
}

/// An optimiser over named variables.
pub struct Optimizer {
    kind: OptKind,
    vars: Vec<(String, Var)>,
    /// SGD: one momentum buffer per var; AdamW: first and second moments.
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Steps taken (AdamW bias correction).
    pub steps: u64,
    lr: f64,
    /// Per-variable learning-rate multipliers (1 unless [`Optimizer::with_lr_mult`]).
    lr_mult: Vec<f64>,
    weight_decay: f64,
    momentum: f64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Optimizer {
    /// A new optimiser; state starts at zero.
    pub fn new(
        kind: OptKind,
        vars: Vec<(String, Var)>,
        lr: f64,
        weight_decay: f64,
        momentum: f64,
    ) -> Result<Self> {
        let zeros = |vars: &[(String, Var)]| -> Result<Vec<Tensor>> {
            vars.iter()
                .map(|(_, v)| v.as_tensor().zeros_like())
                .collect()
        };
        Ok(Self {
            kind,
            m: zeros(&vars)?,
            v: zeros(&vars)?,
            lr_mult: vec![1.0; vars.len()],
            vars,
            steps: 0,
            lr,
            weight_decay,
            momentum,
        })
    }

    /// Parameter groups by name: each variable's learning rate (and its decoupled weight decay,
    /// which AdamW scales by the learning rate) is the schedule's times `mult(name)` — as
    /// PyTorch's parameter groups or mmsegmentation's `paramwise_cfg` `lr_mult`.
    pub fn with_lr_mult(mut self, mult: impl Fn(&str) -> f64) -> Self {
        self.lr_mult = self.vars.iter().map(|(n, _)| mult(n)).collect();
        self
    }

    /// Set the learning rate for the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Global L2 norm of the gradients of the optimised variables (those without a gradient
    /// count as zero), as `torch.nn.utils.clip_grad_norm_` reports it. Recorded per epoch so a
    /// user can see a training blow up or die out.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        // Summed on the device, read once: one synchronisation per step, not one per variable.
        let mut total: Option<Tensor> = None;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var) {
                let s = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
                total = Some(match total {
                    Some(t) => (t + s)?,
                    None => s,
                });
            }
        }
        Ok(match total {
            Some(t) => t.to_dtype(DType::F64)?.to_scalar::<f64>()?.sqrt(),
            None => 0.0,
        })
    }

    /// One update from the gradients; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            // Detached: optimiser state must not keep autograd history alive across steps.
            let g = &g.detach();
            let p = &var.as_tensor().detach();
            let decay = self.weight_decay > 0.0 && p.rank() > 1;
            let lr = self.lr * self.lr_mult[i];
            match self.kind {
                OptKind::Sgd => {
                    let g = if decay {
                        (g + (p * self.weight_decay)?)?
                    } else {
                        g.clone()
                    };
                    let buf = ((&self.m[i] * self.momentum)? + g)?;
                    var.set(&(p - (&buf * lr)?)?)?;
                    self.m[i] = buf;
                }
                OptKind::Adamw if p.dtype() == DType::F32 && (p.device().is_cpu() || FUSED_GPU) => {
                    // One fused pass (wsss_kernels::optim on the CPU, one kernel per tensor on
                    // the GPU) instead of a dozen tensor ops, on the parameter's and the
                    // moments' own storage: nothing copied out and back, nothing allocated.
                    let h = AdamW {
                        lr: lr as f32,
                        beta1: BETA1 as f32,
                        beta2: BETA2 as f32,
                        eps: EPS as f32,
                        decay: if decay {
                            (lr * self.weight_decay) as f32
                        } else {
                            0.0
                        },
                        correction: ((1.0 - BETA1.powi(t)) as f32, (1.0 - BETA2.powi(t)) as f32),
                    };
                    #[cfg(feature = "cuda")]
                    if p.device().is_cuda() {
                        super::adamw_cuda::step(var.as_tensor(), g, &self.m[i], &self.v[i], &h)?;
                        continue;
                    }
                    let g = g.contiguous()?;
                    let (gs, gl) = g.storage_and_layout();
                    let gv = match &*gs {
                        candle_core::Storage::Cpu(c) => {
                            crate::model::cpu_op::contiguous_f32(c, gl)?
                        }
                        _ => candle_core::bail!("AdamW: gradient not on the CPU"),
                    };
                    let (m, v) = (&self.m[i], &self.v[i]);
                    in_place(m, &mut |mv| {
                        in_place(v, &mut |vv| {
                            in_place(var.as_tensor(), &mut |pv| {
                                adamw(pv, gv, mv, vv, &h);
                                Ok(())
                            })
                        })
                    })?;
                }
                OptKind::Adamw => {
                    let m = ((&self.m[i] * BETA1)? + (g * (1.0 - BETA1))?)?;
                    let v = ((&self.v[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                    let mh = (&m / (1.0 - BETA1.powi(t)))?;
                    let vh = (&v / (1.0 - BETA2.powi(t)))?;
                    let base = if decay {
                        (p * (1.0 - lr * self.weight_decay))?
                    } else {
                        p.clone()
                    };
                    let upd = (mh / (vh.sqrt()? + EPS)?)?;
                    var.set(&(base - (upd * lr)?)?)?;
                    self.m[i] = m;
                    self.v[i] = v;
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors, for a checkpoint.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            // Copies: the moments are updated in place by the next step.
            out.insert(format!("m.{name}"), self.m[i].copy()?);
            out.insert(format!("v.{name}"), self.v[i].copy()?);
        }
        out.insert(
            "steps".into(),
            Tensor::new(&[self.steps as f32], &candle_core::Device::Cpu)?,
        );
        Ok(out)
    }

    /// Restore a state saved by [`Optimizer::state`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (key, slot) in [
                (format!("m.{name}"), &mut self.m[i]),
                (format!("v.{name}"), &mut self.v[i]),
            ] {
                let t = state.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimiser state lacks `{key}`"))
                })?;
                *slot = t.to_device(var.device())?.to_dtype(var.dtype())?;
            }
        }
        if let Some(s) = state.get("steps") {
            self.steps = s.to_vec1::<f32>()?.first().copied().unwrap_or(0.0) as u64;
        }
        Ok(())
    }
}

/// Whether AdamW has a one-kernel GPU update in this build (feature `cuda`).
const FUSED_GPU: bool = cfg!(feature = "cuda");

/// A function over a mutable `f32` slice.
type SliceFn<'a> = dyn FnMut(&mut [f32]) -> Result<()> + 'a;

/// Runs `f` on the `f32` elements of a contiguous CPU tensor's own storage, in place (candle's
/// in-place custom op: the storage is locked for writing while `f` runs).
fn in_place(t: &Tensor, f: &mut SliceFn<'_>) -> Result<()> {
    struct Op<'a, 'b>(std::cell::RefCell<&'a mut SliceFn<'b>>);
    impl candle_core::InplaceOp1 for Op<'_, '_> {
        fn name(&self) -> &'static str {
            "in-place-f32"
        }
        fn cpu_fwd(&self, s: &mut candle_core::CpuStorage, l: &candle_core::Layout) -> Result<()> {
            let (a, b) = l
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("in place: not contiguous".into()))?;
            match s {
                candle_core::CpuStorage::F32(v) => (self.0.borrow_mut())(&mut v[a..b]),
                _ => candle_core::bail!("in place: not f32"),
            }
        }
    }
    t.inplace_op1(&Op(std::cell::RefCell::new(f)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedules_by_hand() {
        assert_eq!(lr_at(Schedule::Constant, 0.1, 5.0, 10, 0), 0.1);
        assert!((lr_at(Schedule::Cosine, 1.0, 5.0, 10, 0) - 0.5).abs() < 1e-12);
        assert!(lr_at(Schedule::Cosine, 1.0, 10.0, 10, 0).abs() < 1e-12);
        assert!((lr_at(Schedule::Step, 1.0, 4.0, 9, 0) - 0.1).abs() < 1e-12);
        assert!((lr_at(Schedule::Step, 1.0, 7.0, 9, 0) - 0.01).abs() < 1e-12);
        assert!((lr_at(Schedule::Poly, 1.0, 5.0, 10, 0) - 0.5f64.powf(0.9)).abs() < 1e-12);
        // Warm-up: from base/10 to base, then the schedule over the remaining epochs.
        assert!((lr_at(Schedule::Cosine, 1.0, 0.0, 10, 2) - 0.1).abs() < 1e-12);
        assert!((lr_at(Schedule::Cosine, 1.0, 1.0, 10, 2) - 0.55).abs() < 1e-12);
        assert!((lr_at(Schedule::Cosine, 1.0, 6.0, 10, 2) - 0.5).abs() < 1e-12);
    }

    fn quad_step(kind: OptKind, steps: usize) -> Vec<f32> {
        // f(p) = Σ p², gradient 2p, from p = (1, −2).
        let p = Var::new(&[[1.0f32, -2.0]], &Device::Cpu).unwrap();
        let mut o = Optimizer::new(kind, vec![("p".into(), p.clone())], 0.1, 0.0, 0.9).unwrap();
        for _ in 0..steps {
            let g = p
                .as_tensor()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            o.step(&g).unwrap();
        }
        p.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn sgd_momentum_by_hand() {
        // step 1: buf = g = (2, −4); p = (1, −2) − 0.1·buf = (0.8, −1.6)
        // step 2: g = (1.6, −3.2); buf = 0.9·(2, −4) + g = (3.4, −6.8); p = (0.46, −0.92)
        let p = quad_step(OptKind::Sgd, 2);
        assert!(
            (p[0] - 0.46).abs() < 1e-6 && (p[1] + 0.92).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn adamw_first_step_is_lr_times_sign() {
        let p = quad_step(OptKind::Adamw, 1);
        assert!(
            (p[0] - 0.9).abs() < 1e-5 && (p[1] + 1.9).abs() < 1e-5,
            "{p:?}"
        );
    }

    /// Three AdamW steps with weight decay on the quadratic, against the update rule computed
    /// in f64 by hand; the decay applies to the 2-D parameter only.
    #[test]
    fn adamw_steps_follow_the_formula() {
        let p2 = Var::new(&[[1.0f32, -2.0], [0.5, 3.0]], &Device::Cpu).unwrap();
        let p1 = Var::new(&[0.25f32, -1.0], &Device::Cpu).unwrap();
        let vars = vec![("w".into(), p2.clone()), ("b".into(), p1.clone())];
        let (lr, wd) = (0.05, 0.1);
        let mut o = Optimizer::new(OptKind::Adamw, vars, lr, wd, 0.9).unwrap();
        let mut want: Vec<(Vec<f64>, bool)> =
            vec![(vec![1.0, -2.0, 0.5, 3.0], true), (vec![0.25, -1.0], false)];
        let mut moments: Vec<(Vec<f64>, Vec<f64>)> = want
            .iter()
            .map(|(p, _)| (vec![0.0; p.len()], vec![0.0; p.len()]))
            .collect();
        for t in 1..=3 {
            let loss = (p2.as_tensor().sqr().unwrap().sum_all().unwrap()
                + p1.as_tensor().sqr().unwrap().sum_all().unwrap())
            .unwrap();
            o.step(&loss.backward().unwrap()).unwrap();
            for ((p, decay), (m, v)) in want.iter_mut().zip(moments.iter_mut()) {
                for j in 0..p.len() {
                    let g = 2.0 * p[j];
                    m[j] = BETA1 * m[j] + (1.0 - BETA1) * g;
                    v[j] = BETA2 * v[j] + (1.0 - BETA2) * g * g;
                    let upd = (m[j] / (1.0 - BETA1.powi(t)))
                        / ((v[j] / (1.0 - BETA2.powi(t))).sqrt() + EPS);
                    let keep = if *decay { 1.0 - lr * wd } else { 1.0 };
                    p[j] = p[j] * keep - lr * upd;
                }
            }
        }
        let got2: Vec<f32> = p2.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let got1: Vec<f32> = p1.as_tensor().to_vec1().unwrap();
        for (got, (want, _)) in [got2, got1].iter().zip(&want) {
            for (g, w) in got.iter().zip(want) {
                assert!((*g as f64 - w).abs() < 1e-5, "{got:?} vs {want:?}");
            }
        }
    }

    /// Parameter groups: a variable at multiplier 0.1 moves a tenth as far. By hand, one step
    /// from p = (1, −2) on Σ p²: AdamW's first step is lr·sign(g) (0.1 and 0.01 here, decay
    /// 0.1 scaled by each lr: keep 1 − 0.01 and 1 − 0.001); SGD's is lr·g (g = (2, −4)).
    #[test]
    fn lr_multipliers_by_hand() {
        for (kind, want) in [
            (
                OptKind::Adamw,
                [
                    [0.99 * 1.0 - 0.1, 0.99 * -2.0 + 0.1],
                    [0.999 - 0.01, 0.999 * -2.0 + 0.01],
                ],
            ),
            (OptKind::Sgd, [[0.8, -1.6], [0.98, -1.96]]),
        ] {
            let head = Var::new(&[[1.0f32, -2.0]], &Device::Cpu).unwrap();
            let enc = Var::new(&[[1.0f32, -2.0]], &Device::Cpu).unwrap();
            let vars = vec![
                ("head.w".into(), head.clone()),
                ("encoder.w".into(), enc.clone()),
            ];
            let wd = if kind == OptKind::Adamw { 0.1 } else { 0.0 };
            let mut o = Optimizer::new(kind, vars, 0.1, wd, 0.9)
                .unwrap()
                .with_lr_mult(|n| if n.starts_with("encoder.") { 0.1 } else { 1.0 });
            let loss = (head.as_tensor().sqr().unwrap().sum_all().unwrap()
                + enc.as_tensor().sqr().unwrap().sum_all().unwrap())
            .unwrap();
            o.step(&loss.backward().unwrap()).unwrap();
            for (v, w) in [&head, &enc].iter().zip(want) {
                let got: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                for (g, w) in got.iter().zip(w) {
                    assert!((*g as f64 - w).abs() < 1e-5, "{kind:?}: {got:?} vs {w}");
                }
            }
        }
    }

    #[test]
    fn state_roundtrip_resumes_identically() {
        let p = Var::new(&[[1.0f32, -2.0]], &Device::Cpu).unwrap();
        let mut a = Optimizer::new(
            OptKind::Adamw,
            vec![("p".into(), p.clone())],
            0.1,
            0.01,
            0.9,
        )
        .unwrap();
        let g = p
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        a.step(&g).unwrap();
        let st = a.state().unwrap();
        let q = Var::from_tensor(p.as_tensor()).unwrap();
        let mut b = Optimizer::new(
            OptKind::Adamw,
            vec![("p".into(), q.clone())],
            0.1,
            0.01,
            0.9,
        )
        .unwrap();
        b.load_state(&st).unwrap();
        assert_eq!(b.steps, 1);
        let g1 = p
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        a.step(&g1).unwrap();
        let g2 = q
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        b.step(&g2).unwrap();
        assert_eq!(
            p.as_tensor().to_vec2::<f32>().unwrap(),
            q.as_tensor().to_vec2::<f32>().unwrap()
        );
    }
}
