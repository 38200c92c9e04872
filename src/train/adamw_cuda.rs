//! AdamW as one CUDA kernel per parameter tensor (feature `cuda`), in place on the parameter's
//! and the moments' own device memory — the GPU side of the CPU's fused pass
//! (`wsss_kernels::optim::adamw`), with the same formula in the same order:
//! `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `p ← p(1 − lr·λ) − lr · (m/c₁) / (√(v/c₂) + ε)`.
//!
//! Why: the tensor-op AdamW is a dozen kernels and as many temporaries per parameter tensor
//! (PyTorch's `fused=True` AdamW is one). The kernel is compiled once per process by NVRTC
//! (the CUDA runtime compiler candle already loads) and cached per device by candle.

use std::sync::OnceLock;

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CpuStorage, CudaDevice, CudaStorage, Layout, Result, Storage, Tensor};
use wsss_kernels::optim::AdamW;

const SOURCE: &str = r#"
extern "C" __global__ void wsss_adamw_f32(
    float *p, const float *g, float *m, float *v, const unsigned long long n,
    const float lr, const float beta1, const float beta2, const float eps, const float decay,
    const float c1, const float c2)
{
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float upd = (mi / c1) / (sqrtf(vi / c2) + eps);
    p[i] = p[i] * (1.0f - decay) - lr * upd;
}
"#;

/// The kernel's PTX, compiled on first use (NVRTC), or the compiler's message.
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE)
            .map(|p| p.to_src())
            .map_err(|e| format!("AdamW kernel: NVRTC failed: {e}"))
    })
    .as_ref()
    .map(|s| s.as_str())
    .map_err(|e| candle_core::Error::Msg(e.clone()))
}

/// The element range of a contiguous layout in its storage.
fn range(l: &Layout) -> Result<(usize, usize)> {
    l.contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("AdamW (CUDA): tensor not contiguous".into()))
}

/// A function over a CUDA tensor's storage, mutably, with its layout.
type StorageFn<'a> = dyn FnMut(&mut CudaStorage, &Layout) -> Result<()> + 'a;

/// Runs `f` on `t`'s own device storage (candle's in-place op): nothing copied.
fn in_place(t: &Tensor, f: &mut StorageFn<'_>) -> Result<()> {
    struct Op<'a, 'b>(std::cell::RefCell<&'a mut StorageFn<'b>>);
    impl candle_core::InplaceOp1 for Op<'_, '_> {
        fn name(&self) -> &'static str {
            "adamw-cuda"
        }
        fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
            candle_core::bail!("AdamW (CUDA): called with a CPU tensor (the CPU has its own pass)")
        }
        fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> Result<()> {
            (self.0.borrow_mut())(s, l)
        }
    }
    t.inplace_op1(&Op(std::cell::RefCell::new(f)))
}

/// One AdamW step of `p` with gradient `g` and moments `m`, `v` (all f32, contiguous, one CUDA
/// device, same shape), in place: the three are each handed over mutably (nested in-place
/// ops), the innermost launching the kernel.
pub fn step(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: &AdamW) -> Result<()> {
    let g = g.contiguous()?;
    in_place(m, &mut |ms, ml| {
        in_place(v, &mut |vs, vl| {
            in_place(p, &mut |ps, pl| launch(ps, pl, ms, ml, vs, vl, &g, h))
        })
    })
}

/// Launches the kernel on the storages of `p`, `m`, `v` and the gradient `g`.
#[allow(clippy::too_many_arguments)]
fn launch(
    ps: &mut CudaStorage,
    pl: &Layout,
    ms: &mut CudaStorage,
    ml: &Layout,
    vs: &mut CudaStorage,
    vl: &Layout,
    g: &Tensor,
    h: &AdamW,
) -> Result<()> {
    let dev: CudaDevice = ps.device.clone();
    let (pa, pb) = range(pl)?;
    let (ma, mb) = range(ml)?;
    let (va, vb) = range(vl)?;
    let (gs, gl) = g.storage_and_layout();
    let (ga, gb) = range(gl)?;
    let Storage::Cuda(gs) = &*gs else {
        candle_core::bail!("AdamW (CUDA): gradient not on the GPU");
    };
    let n = pb - pa;
    if n == 0 {
        return Ok(());
    }
    if [mb - ma, vb - va, gb - ga] != [n; 3] {
        candle_core::bail!("AdamW (CUDA): parameter, gradient and moments differ in size");
    }
    let g = gs.as_cuda_slice::<f32>()?.slice(ga..gb);
    let mut m = ms.as_cuda_slice_mut::<f32>()?.slice_mut(ma..mb);
    let mut v = vs.as_cuda_slice_mut::<f32>()?.slice_mut(va..vb);
    let mut p = ps.as_cuda_slice_mut::<f32>()?.slice_mut(pa..pb);
    let func = dev.get_or_load_custom_func("wsss_adamw_f32", "wsss_adamw", ptx()?)?;
    let (c1, c2) = h.correction;
    let n64 = n as u64;
    let mut b = func.builder();
    b.arg(&mut p);
    b.arg(&g);
    b.arg(&mut m);
    b.arg(&mut v);
    b.arg(&n64);
    b.arg(&h.lr);
    b.arg(&h.beta1);
    b.arg(&h.beta2);
    b.arg(&h.eps);
    b.arg(&h.decay);
    b.arg(&c1);
    b.arg(&c2);
    // SAFETY: the kernel reads and writes n elements of each buffer, all of length n.
    unsafe { b.launch(LaunchConfig::for_num_elems(n as u32)) }.w()?;
    Ok(())
}
