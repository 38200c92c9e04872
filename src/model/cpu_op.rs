//! The glue between `wsss-kernels` (plain slices) and candle custom ops: reading a CPU storage
//! as a contiguous `f32` slice, and [`Op3`], which turns a three-input slice kernel into a
//! `CustomOp3` so each op states only its arithmetic and its backward.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// The `f32` elements of a contiguous CPU tensor (error if strided or another dtype).
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("CPU kernels need a contiguous input"),
    }
}

/// A CPU kernel of three `f32` inputs.
pub(crate) trait Kernel3 {
    /// Name in candle's graph.
    fn name(&self) -> &'static str;
    /// The output and its shape, from the three inputs and their layouts.
    fn run(&self, x: [&[f32]; 3], l: [&Layout; 3]) -> Result<(Vec<f32>, Shape)>;
    /// Gradients of the three inputs from the output gradient (none by default).
    fn grads(
        &self,
        _args: [&Tensor; 3],
        _res: &Tensor,
        _grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        candle_core::bail!("{}: no backward", self.name())
    }
}

/// A [`Kernel3`] as a candle custom op.
pub(crate) struct Op3<K>(pub K);

impl<K: Kernel3> CustomOp3 for Op3<K> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = [
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        ];
        let (out, shape) = self.0.run(x, [l1, l2, l3])?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [g1, g2, g3] = self.0.grads([a1, a2, a3], res, grad)?;
        Ok((g1, g2, g3))
    }
}

/// Applies a [`Kernel3`] to three tensors (made contiguous), recorded for autograd if any of
/// them is tracked and `differentiable` (backward kernels are not).
pub(crate) fn apply3<K: Kernel3 + Send + Sync + 'static>(
    k: K,
    [a, b, c]: [&Tensor; 3],
    differentiable: bool,
) -> Result<Tensor> {
    let (a, b, c) = (a.contiguous()?, b.contiguous()?, c.contiguous()?);
    if differentiable && (a.track_op() || b.track_op() || c.track_op()) {
        a.apply_op3(&b, &c, Op3(k))
    } else {
        a.apply_op3_no_bwd(&b, &c, &Op3(k))
    }
}

/// Splits a flat tensor into consecutive pieces, one per shape given (`None`: a piece that is
/// absent from `flat` and from the result), each reshaped to its shape.
pub(crate) fn split<const N: usize>(
    flat: &Tensor,
    shapes: [Option<&[usize]>; N],
) -> Result<[Option<Tensor>; N]> {
    let mut at = 0;
    let mut out: [Option<Tensor>; N] = std::array::from_fn(|_| None);
    for (slot, shape) in out.iter_mut().zip(shapes) {
        if let Some(shape) = shape {
            let n = shape.iter().product::<usize>();
            *slot = Some(flat.narrow(0, at, n)?.reshape(shape)?);
            at += n;
        }
    }
    Ok(out)
}
